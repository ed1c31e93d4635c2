"""Exports a learner loads with their own tools: a published version with a camera, written as a LeRobot v3
folder and as a Minari dataset, loaded with `lerobot`'s LeRobotDataset and `minari.load_dataset`, and
compared row by row (state, action, reward, flags, instruction, frames) with the published version."""
from __future__ import annotations

import importlib.util
import io
import json
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


def lerobot_dataset_class():
    """LeRobot's LeRobotDataset.

    PyPI's torchvision wheels are CUDA builds: their C++ ops cannot load beside the CPU torch 2.13.0 the
    project pins, and torchvision then fails at import while registering shape functions for its `nms`
    ops ("operator torchvision::nms does not exist"). Declaring those two op schemas (no kernels: nothing
    here runs them) lets torchvision import its pure-Python parts, the only ones LeRobotDataset uses.
    """
    import torch

    spec = importlib.util.find_spec("torchvision")  # None: not installed, and the import below says so
    ops = sorted(Path(spec.origin).parent.glob("_C*.so")) if spec is not None and spec.origin else []
    try:
        torch.ops.load_library(ops[0])
    except (OSError, IndexError):
        if not hasattr(lerobot_dataset_class, "lib"):
            lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lerobot_dataset_class.lib = lib  # the declarations live as long as their Library
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def test_lerobot_export_loads_with_lerobot_and_matches_the_published_rows(tmp_path, hub):
    result = _publish(tmp_path, hub, _table())
    published = _published_rows(result)
    out = export("mini", "latest", "lerobot", tmp_path / "lerobot", root=hub)
    assert (out.episodes, out.frames, out.reward, out.left_out) == (6, 150, "reward", {})

    info = json.loads((out.path / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["video_path"] is None
    assert info["features"][CAMERA] == {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]}

    ds = lerobot_dataset_class()("robocurate/mini", root=out.path)
    assert len(ds) == published.height and ds.num_episodes == 6 and ds.meta.camera_keys == [CAMERA]
    episodes = ds.meta.episodes
    by_key = {(r["episode_id"], r["step"]): r for r in published.iter_rows(named=True)}
    for i in range(len(ds)):
        item = ds[i]
        meta = episodes[int(item["episode_index"])]
        row = by_key[(meta["episode_id"], int(item["frame_index"]))]  # the published episodes start at step 0
        np.testing.assert_array_equal(item["observation.state"].numpy(), np.asarray(row["observation.state"], np.float32))
        np.testing.assert_array_equal(item["action"].numpy(), np.asarray(row["action"], np.float32))
        np.testing.assert_array_equal(item["observation.pose"].numpy(), np.asarray(row["observation.pose"], np.float32))
        assert item["next.reward"].item() == pytest.approx(row["reward"])
        assert (item["is_first"].item(), item["is_last"].item(), item["is_terminal"].item(), item["next.done"].item()) \
            == (row["is_first"], row["is_last"], row["is_terminal"], row["is_last"])
        assert item["task"] == row["language_instruction"]
        assert item["timestamp"].item() == pytest.approx(row["timestamp"], abs=1e-6)
        # LeRobot hands frames over as float CHW in [0, 1]
        frame = (item[CAMERA].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(frame, _pixels(row[CAMERA]))
    # every split is one range of episodes, holding exactly that split's episodes
    for split, span in info["splits"].items():
        lo, hi = map(int, span.split(":"))
        assert {episodes[e]["split"] for e in range(lo, hi)} == {split}
        assert hi - lo == result.splits[split]["episodes"]
    # LeRobot's own episode bounds: a window past the last frame is padded, never read from the next episode
    windowed = lerobot_dataset_class()("robocurate/mini", root=out.path, delta_timestamps={"action": [0.0, 0.05]})
    last = episodes[0]["dataset_to_index"] - 1
    assert windowed[last]["action_is_pad"].tolist() == [False, True]
    import torch

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)))  # as a training loop reads it
    assert batch[CAMERA].shape == (16, 3, H, W) and batch["action"].shape == (16, 8) and len(batch["task"]) == 16
    stats = ds.meta.stats
    np.testing.assert_allclose(stats["action"]["mean"], np.stack(published.get_column("action").to_list()).mean(0),
                               rtol=1e-5, atol=1e-6)
    assert stats[CAMERA]["mean"].shape == (3, 1, 1)


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


def test_lerobot_episodes_spread_over_data_files_load_whole(tmp_path, hub, monkeypatch):
    from foundations.export import lerobot as lerobot_export

    result = _publish(tmp_path, hub, _table())
    monkeypatch.setattr(lerobot_export, "DATA_FILE_MB", 0.02)  # about two episodes per file
    out = export("mini", "latest", "lerobot", tmp_path / "lerobot", root=hub)
    files = sorted((out.path / "data" / "chunk-000").glob("file-*.parquet"))
    assert len(files) >= 3
    ds = lerobot_dataset_class()("robocurate/mini", root=out.path)
    assert len(ds) == result.n_steps
    for e in range(ds.num_episodes):
        meta = ds.meta.episodes[e]
        first, last = ds[meta["dataset_from_index"]], ds[meta["dataset_to_index"] - 1]
        assert (first["episode_index"].item(), first["frame_index"].item(), first["is_first"].item()) == (e, 0, True)
        assert (last["episode_index"].item(), last["frame_index"].item(), last["is_last"].item()) == (e, 24, True)
        assert (out.path / ds.meta.get_data_file_path(e)).exists()
