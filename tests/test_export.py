"""Exports a learner loads with their own tools: a published version with a camera, written as a LeRobot v3
folder and as a Minari dataset, loaded with `lerobot`'s LeRobotDataset and `minari.load_dataset`, and
compared row by row (state, action, reward, flags, instruction, frames) with the published version."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from foundations.export import export
from foundations.recipes import load_recipe
from pipelines.cli import main
from test_publish import do_publish, make_episodes, write_recipe

CAMERA = "observation.images.wrist"
H, W = 10, 12


def _png(rng: np.random.Generator) -> bytes:
    """A frame of random pixels: any lossy step or channel mix-up on the way changes it."""
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _table(*, rewards: bool = True) -> pl.DataFrame:
    table = make_episodes(6, 25, seed=3)
    rng = np.random.default_rng(7)
    table = table.with_columns(pl.Series(CAMERA, [_png(rng) for _ in range(table.height)], pl.Binary))
    if rewards:
        table = table.with_columns(pl.Series("reward", rng.normal(size=table.height), pl.Float32))
    # the first episode ends in a fall (terminal); the others are cut by the operator (truncated)
    first = table.get_column("episode_id").min()
    return table.with_columns((pl.col("is_last") & (pl.col("episode_id") == first)).alias("is_terminal"))


@pytest.fixture
def hub(tmp_path) -> Path:
    return tmp_path / "hub"


def _publish(tmp_path: Path, hub: Path, table: pl.DataFrame):
    recipe = load_recipe(write_recipe(tmp_path))
    return do_publish(recipe, table, root=hub)


def _published_rows(result) -> pl.DataFrame:
    rows = pl.read_parquet(sorted((result.path / "data").glob("*.parquet")))
    return rows.with_columns(pl.col(CAMERA).struct.field("bytes").alias(CAMERA)).sort("episode_id", "step")


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def load_with_lerobot(root: Path, tmp_path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """What LeRobotDataset hands a learner, from its own process (see tests/lerobot_loader.py for why)."""
    out = tmp_path / "lerobot-loaded"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("lerobot_loader.py")), str(root), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out / "items.npz") as items:
        return dict(items), json.loads((out / "loaded.json").read_text())


def test_lerobot_export_loads_with_lerobot_and_matches_the_published_rows(tmp_path, hub, monkeypatch):
    from foundations.export import lerobot as lerobot_export

    result = _publish(tmp_path, hub, _table())
    published = _published_rows(result)
    monkeypatch.setattr(lerobot_export, "DATA_FILE_MB", 0.02)  # about two episodes per data file
    out = export("mini", "latest", "lerobot", tmp_path / "lerobot", root=hub)
    assert (out.episodes, out.frames, out.reward, out.left_out) == (6, 150, "reward", {})
    assert len(list((out.path / "data" / "chunk-000").glob("file-*.parquet"))) >= 3

    info = json.loads((out.path / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["video_path"] is None
    assert info["features"][CAMERA] == {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}

    items, loaded = load_with_lerobot(out.path, tmp_path)
    assert (loaded["len"], loaded["num_episodes"], loaded["camera_keys"]) == (published.height, 6, [CAMERA])
    episodes = loaded["episodes"]
    by_key = {(r["episode_id"], r["step"]): r for r in published.iter_rows(named=True)}
    for i in range(loaded["len"]):
        meta = episodes[int(items["episode_index"][i])]
        row = by_key[(meta["episode_id"], int(items["frame_index"][i]))]  # the published episodes start at step 0
        for key in ("observation.state", "action", "observation.pose"):
            np.testing.assert_array_equal(items[key][i], np.asarray(row[key], np.float32))
        assert items["next.reward"][i] == pytest.approx(row["reward"])
        assert [bool(items[k][i]) for k in ("is_first", "is_last", "is_terminal", "next.done")] \
            == [row["is_first"], row["is_last"], row["is_terminal"], row["is_last"]]
        assert loaded["task"][i] == row["language_instruction"]
        assert items["timestamp"][i] == pytest.approx(row["timestamp"], abs=1e-6)
        # LeRobot hands frames over as float CHW in [0, 1]
        frame = (items[CAMERA][i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(frame, _pixels(row[CAMERA]))
    assert {e["episode_id"] for e in episodes} == set(published.get_column("episode_id"))
    assert all((out.path / f).exists() for f in loaded["data_files"])
    # every split is one range of episodes, holding exactly that split's episodes
    for split, span in info["splits"].items():
        lo, hi = map(int, span.split(":"))
        assert {episodes[e]["split"] for e in range(lo, hi)} == {split}
        assert hi - lo == result.splits[split]["episodes"]
    # LeRobot's own episode bounds: a window past an episode's last frame is padded, never read from the next one
    assert loaded["last_frame_pad"] == [[False, True]] * 6
    # as a training loop reads it
    assert (loaded["batch"][CAMERA], loaded["batch"]["action"], loaded["batch"]["task"]) == ([16, 3, H, W], [16, 8], 16)
    np.testing.assert_allclose(loaded["stats"]["action"]["mean"], np.stack(published.get_column("action").to_list()).mean(0),
                               rtol=1e-5, atol=1e-6)
    assert np.asarray(loaded["stats"][CAMERA]["mean"]).shape == (3, 1, 1)


def test_minari_export_loads_with_minari_and_matches_the_published_rows(tmp_path, hub, monkeypatch):
    import minari

    result = _publish(tmp_path, hub, _table())
    published = _published_rows(result)
    out = export("mini", "1.0.0", "minari", tmp_path / "minari", root=hub)
    assert out.path == tmp_path / "minari" / "robocurate" / "mini-v1"
    assert (out.episodes, out.frames, out.reward) == (6, 6 * 24, "reward")

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ds = minari.load_dataset("robocurate/mini-v1")
    assert ds.total_episodes == 6 and ds.total_steps == 6 * 24
    assert ds.observation_space["images"][CAMERA.split(".")[-1]].shape == (H, W, 3)
    assert "robocurate/mini-v1" in minari.list_local_datasets()
    metadata = list(ds.storage.get_episode_metadata(range(6)))
    splits = dict(pl.read_parquet(result.path / "meta" / "episodes.parquet").select("episode_id", "split").iter_rows())
    seen = set()
    for episode, meta in zip(ds.iterate_episodes(), metadata):
        rows = published.filter(pl.col("episode_id") == meta["episode_id"])
        seen.add(meta["episode_id"])
        assert meta["split"] == splits[meta["episode_id"]]
        assert len(episode) == rows.height - 1  # T logged steps: T observations, T-1 transitions
        np.testing.assert_array_equal(episode.observations["state"], np.stack(rows.get_column("observation.state").to_list()))
        np.testing.assert_array_equal(episode.actions, np.stack(rows.get_column("action").to_list())[:-1])
        np.testing.assert_allclose(episode.rewards, rows.get_column("reward").to_numpy()[:-1], rtol=1e-6)
        last = rows.row(rows.height - 1, named=True)
        assert episode.terminations.tolist() == [False] * (rows.height - 2) + [last["is_terminal"]]
        assert episode.truncations.tolist() == [False] * (rows.height - 2) + [not last["is_terminal"]]
        frames = episode.observations["images"][CAMERA.split(".")[-1]]
        np.testing.assert_array_equal(frames, np.stack([_pixels(b) for b in rows.get_column(CAMERA).to_list()]))
        assert set(episode.observations["instruction"]) == {last["language_instruction"]}
        np.testing.assert_allclose(episode.infos["timestamp"], rows.get_column("timestamp").to_numpy())
    assert seen == set(published.get_column("episode_id").unique())
    import h5py

    with h5py.File(out.path / "data" / "main_data.hdf5") as f:  # frames compressed, not raw arrays
        assert f[f"episode_0/observations/images/{CAMERA.split('.')[-1]}"].compression == "gzip"
    assert sum(e.terminations.any() for e in ds.iterate_episodes()) == 1


def test_without_a_complete_reward_column_no_reward_is_invented(tmp_path, hub, monkeypatch):
    import minari

    _publish(tmp_path, hub, _table(rewards=False))
    lerobot = export("mini", "latest", "lerobot", tmp_path / "lerobot", root=hub)
    info = json.loads((lerobot.path / "meta" / "info.json").read_text())
    assert lerobot.reward is None and "next.reward" not in info["features"]
    assert "no reward column" in info["robocurate"]["reward"]
    assert len(list((lerobot.path / "data").rglob("*.parquet"))) == 1  # small: one data file
    out = export("mini", "latest", "minari", tmp_path / "minari", root=hub)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ds = minari.load_dataset("robocurate/mini-v1")
    assert out.reward is None and all(not e.rewards.any() for e in ds.iterate_episodes())
    assert "rewards are zero" in ds.storage.metadata["description"]
    with pytest.raises(ValueError, match="150 of 150 steps have no 'reward' value"):
        export("mini", "latest", "lerobot", tmp_path / "other", reward="reward", root=hub)


def test_cli_exports_and_refuses_bad_input_in_one_line(tmp_path, hub, monkeypatch, capsys, data_root):
    _publish(tmp_path, data_root / "hub", _table())
    assert main(["export", "mini", "--format", "lerobot", "--to", str(tmp_path / "lr")]) == 0
    out = capsys.readouterr().out
    assert "6 episodes, 150 frames; reward from reward" in out and "LeRobotDataset(" in out
    for argv, message in [
        (["export", "mini", "--format", "rlds", "--to", str(tmp_path / "x")], "unknown export format 'rlds'"),
        (["export", "nothing", "--format", "lerobot", "--to", str(tmp_path / "x")], "no published versions"),
        (["export", "mini", "--version", "2.0.0", "--format", "minari", "--to", str(tmp_path / "x")], "no version '2.0.0'"),
        (["export", "mini", "--format", "lerobot", "--to", str(tmp_path / "lr")], "is not empty"),
        (["export", "mini", "--format", "minari", "--reward", "progress_bar", "--to", str(tmp_path / "x")], "progress_bar"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("robocurate export: ") and message in err[0], err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.hdf5"))


def test_card_says_what_the_layout_is_and_how_to_export(tmp_path, hub):
    result = _publish(tmp_path, hub, _table())
    card = (result.path / "README.md").read_text()
    assert "LeRobot-style" not in card
    assert "robocurate export mini --version 1.0.0 --format lerobot" in card
    assert "--format minari" in card


def test_what_an_export_cannot_hold_is_left_out_and_named(tmp_path, hub):
    table = _table()
    lone = table.filter(pl.col("step") == 0).head(1).with_columns(
        pl.lit("cccccccccccccccc-000").alias("episode_id"), pl.lit(True).alias("is_last"))
    table = pl.concat([table, lone])
    side = [None if i % 10 == 0 else b for i, b in enumerate(table.get_column(CAMERA).to_list())]
    table = table.with_columns(  # a vector whose length varies from step to step; a camera that dropped frames
        pl.Series("observation.contacts", [[0.0] * (i % 3) for i in range(table.height)], pl.List(pl.Float32)),
        pl.Series("observation.images.side", side, pl.Binary))
    recipe = load_recipe(write_recipe(tmp_path, filters={"min_quality_score": 0.0, "min_steps": 1}))
    do_publish(recipe, table, root=hub)
    lerobot = export("mini", "latest", "lerobot", tmp_path / "lerobot", root=hub)
    assert lerobot.left_out == {"observation.contacts": "its length varies from step to step",
                                "observation.images.side": "some steps have no frame"}
    assert lerobot.episodes == 7
    minari = export("mini", "latest", "minari", tmp_path / "minari", root=hub)
    assert minari.episodes == 6 and "1 episode(s) of a single step" in minari.left_out["episodes"]
    assert "cccccccccccccccc-000" in minari.left_out["episodes"]
    assert minari.left_out["observation.images.side"] == "some steps have no frame"
