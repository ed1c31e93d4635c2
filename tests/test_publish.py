"""Recipes, selection and publishing of versioned Hugging Face datasets, on small synthetic tables."""
from __future__ import annotations

import io
import re
import json
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from foundations import publish as publish_mod
from foundations.content_hash import table_content_hash
from foundations.publish import download, list_versions, publish, push_to_hub, resolve_version
from foundations.recipes import (
    RecipeError, assign_splits, excluded_records, list_recipes, load_recipe, parse_recipe, select_episodes,
)
from foundations.schema import POLARS_SCHEMA, POSE, QUARANTINE_SCHEMA

STATE_DIM, ACTION_DIM = 27, 8
SPLIT_COL = "split"


def make_episodes(n_episodes: int = 6, steps: int = 25, *, seed: int = 0, images: bool = False) -> pl.DataFrame:
    """A canonical table: n_episodes from two source files, 20 Hz, with pose (and optional camera)."""
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    ep_index = np.repeat(np.arange(n_episodes), steps)
    step = np.tile(np.arange(steps), n_episodes)
    sha = np.where(ep_index % 2 == 0, "a" * 64, "b" * 64)
    data = {
        "episode_id": [f"{s[:16]}-{i:03d}" for s, i in zip(sha, ep_index)],
        "step": step.astype(np.int32),
        "timestamp": step / 20.0,
        "observation.state": list(rng.normal(size=(n, STATE_DIM)).astype(np.float32)),
        "action": list(rng.uniform(-1, 1, size=(n, ACTION_DIM)).astype(np.float32)),
        "reward": [None] * n,
        "is_first": step == 0,
        "is_last": step == steps - 1,
        "is_terminal": np.zeros(n, dtype=bool),
        "language_instruction": np.where(ep_index % 3 == 0, "turn left", "walk forward"),
        "robot_id": np.where(ep_index % 2 == 0, "ant-01", "ant-02"),
        "source": "ant_fleet_ros2",
        "source_file": np.where(ep_index % 2 == 0, "fleet_a.mcap", "fleet_b.mcap"),
        "source_sha256": sha,
    }
    df = pl.DataFrame(data).with_columns(
        pl.col("observation.state").cast(pl.List(pl.Float32)),
        pl.col("action").cast(pl.List(pl.Float32)),
        pl.col("reward").cast(pl.Float32),
    ).cast(POLARS_SCHEMA)
    df = df.with_columns(pl.Series(POSE, list(rng.normal(size=(n, 3)).astype(np.float32))).cast(pl.List(pl.Float32)))
    if images:
        frames = []
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 6), (i % 256, 0, 0)).save(buf, format="PNG")
            frames.append(buf.getvalue())
        df = df.with_columns(pl.Series("observation.images.front", frames, dtype=pl.Binary))
    return df


def make_scores(episodes: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    ids = episodes.get_column("episode_id").unique().sort()
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, ids.len())
    return pl.DataFrame({"episode_id": ids, "smoothness": q * 0.5, "progress": q * 2.0, "quality_score": q})


def sources_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "source_file": ["fleet_a.mcap", "fleet_b.mcap", "broken.mcap"],
        "source_sha256": ["a" * 64, "b" * 64, "c" * 64],
    })


def write_recipe(tmp_path: Path, name: str = "mini", *, stem: str | None = None, **overrides) -> Path:
    raw = {
        "name": name,
        "description": "Synthetic test recipe.",
        "sources": ["ant_fleet_ros2"],
        "filters": {"min_quality_score": 0.0, "min_steps": 10},
        "splits": {"train": 0.7, "test": 0.3},
        "publish": {"shard_rows": 40},
    }
    raw.update(overrides)
    path = tmp_path / f"{stem or name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOCURATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def do_publish(recipe, table, scores=None, **kw):
    selected, _ = select_episodes(recipe, table, make_scores(table) if scores is None else scores)
    return publish(recipe, selected, sources=sources_frame(), validation={"passed": True, "checks": 5},
                   quality_stats={"auroc": np.float64(0.91)}, code_version="test-commit", **kw)


# ---------------------------------------------------------------- recipes

def test_repo_recipe_loads_by_name_and_path():
    assert "ant_skills" in list_recipes()
    recipe = load_recipe("ant_skills")
    assert recipe.sources == ("ant_fleet_ros2",)
    assert abs(sum(recipe.splits.values()) - 1) < 1e-9
    assert load_recipe(recipe.path) == recipe


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"filter": {"min_steps": 3}}, "filter"),
        ({"splits": {"train": 0.8, "test": 0.1}}, "splits"),
        ({"splits": {"train/x": 1.0}}, "train/x"),
        ({"filters": {"min_steps": -1}}, "filters.min_steps"),
        ({"filters": {"min_quality_score": "high"}}, "filters.min_quality_score"),
        ({"filters": {"min_qualty": 0.2}}, "min_qualty"),
        ({"sources": ["no_such_fleet"]}, "no_such_fleet"),
        ({"sources": []}, "sources"),
        ({"name": "other", "stem": "mini"}, "name"),
        ({"name": "Bad Name", "stem": "Bad Name"}, "name"),
        ({"publish": {"shard_rows": 0}}, "publish.shard_rows"),
        ({"publish": {"hub_repo": "no-owner"}}, "publish.hub_repo"),
    ],
)
def test_recipe_errors_name_the_key(tmp_path, overrides, key):
    path = write_recipe(tmp_path, **overrides)
    with pytest.raises(RecipeError, match=re.escape(key)):
        load_recipe(path)


def test_recipe_not_found_and_not_a_mapping(tmp_path):
    with pytest.raises(RecipeError, match="does not exist.*known"):
        load_recipe("no_such_recipe")
    with pytest.raises(RecipeError, match="mapping"):
        parse_recipe(["a", "list"])
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_select_filters_join_scores_and_report_exclusions(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, filters={"min_quality_score": 0.3, "min_steps": 10,
                                                        "instructions": ["walk forward", "turn left"]}))
    table = make_episodes(8, 12)
    short = make_episodes(1, 5, seed=3).with_columns(pl.lit("short-000").alias("episode_id"))
    table = pl.concat([table, short])
    scores = make_scores(table)
    ids = scores.get_column("episode_id").to_list()
    scores = scores.with_columns(
        pl.when(pl.col("episode_id") == ids[0]).then(float("nan"))       # NaN must not pass the filter
        .when(pl.col("episode_id") == ids[1]).then(0.1)                  # below threshold
        .otherwise(0.9).alias("quality_score")
    ).filter(pl.col("episode_id") != ids[2])                              # no score at all

    selected, decisions = select_episodes(recipe, table, scores)
    assert decisions.height == 9 and decisions.get_column("episode_id").is_sorted()
    assert decisions.filter(pl.col("selected")).get_column("check").is_null().all()
    assert decisions.filter(~pl.col("selected")).get_column(SPLIT_COL).is_null().all()
    assert decisions.filter(pl.col("episode_id") == "short-000")["n_steps"][0] == 5

    excluded = excluded_records(decisions)
    assert excluded.schema == pl.Schema(QUARANTINE_SCHEMA)
    reasons = dict(zip(excluded.get_column("episode_id"), excluded.get_column("check")))
    assert reasons[ids[0]] == "missing_quality_score"
    assert reasons[ids[1]] == "min_quality_score"
    assert reasons[ids[2]] == "missing_quality_score"
    assert reasons["short-000"] == "min_steps"
    assert "5 steps, fewer than the recipe's min_steps 10" in excluded.filter(pl.col("episode_id") == "short-000")["reason"][0]
    assert "0.1 is below" in excluded.filter(pl.col("episode_id") == ids[1])["reason"][0]
    assert (excluded.get_column("stage") == "recipe").all()

    kept = set(selected.get_column("episode_id"))
    assert kept == set(table.get_column("episode_id")) - set(reasons)
    assert selected.height == 12 * len(kept)
    assert {"smoothness", "progress", "quality_score", "split"} <= set(selected.columns)
    assert (selected.get_column("quality_score") == 0.9).all()
    assert selected.equals(selected.sort("episode_id", "step"))
    per_episode = selected.group_by("episode_id").agg(pl.col("split").n_unique())
    assert (per_episode.get_column("split") == 1).all()

    other = load_recipe(write_recipe(tmp_path, name="mini2", filters={"instructions": ["turn left"]}))
    sel2, dec2 = select_episodes(other, table, scores)
    assert set(sel2.get_column("language_instruction")) == {"turn left"}
    assert set(excluded_records(dec2).get_column("check")) == {"instruction"}
    assert "instruction 'walk forward' is not among" in excluded_records(dec2)["reason"][0]
    # a split never depends on which other episodes were selected
    both = sel2.join(selected, on=["episode_id", "step"], how="inner")
    assert both.height > 0 and (both.get_column("split") == both.get_column("split_right")).all()


def _walk(episode_id: str, instruction: str, xs: list[float], yaws: list[float] | None = None) -> pl.DataFrame:
    """A hand-built Ant episode whose base pose moves through `xs` (metres) and `yaws` (radians)."""
    n = len(xs)
    yaws = yaws if yaws is not None else [0.0] * n
    return pl.DataFrame({
        "episode_id": [episode_id] * n, "step": list(range(n)), "source": ["ant_fleet_ros2"] * n,
        "language_instruction": [instruction] * n, "reward": [None] * n,
        POSE: [[x, 0.0, w] for x, w in zip(xs, yaws)],
    }, schema_overrides={"step": pl.Int32, "reward": pl.Float32, POSE: pl.List(pl.Float32)})


def test_progress_reward_is_the_measured_progress_per_step():
    from foundations.profile import load_profile
    from foundations.progress import step_progress
    from foundations.recipes import with_rewards

    nan = float("nan")
    episodes = pl.concat([
        _walk("fwd", "walk forward", [0.0, 0.1, 0.3, 0.25, 0.65]),     # 2 m target: rewards 0.05, 0.1, -0.025, 0.2
        _walk("left", "turn left", [0.0] * 4, [3.0, -3.0, -2.5, -2.5]),  # crosses the +-pi seam; 3 rad target
        _walk("gap", "walk forward", [0.0, 0.2, nan, 0.6, 0.8]),       # odometry lost at step 2
        _walk("odd", "dance", [0.0, 0.5, 1.0]),                       # no skill measures it
    ])
    referee = pl.DataFrame({"episode_id": ["fwd"] * 5, "step": list(range(5)), "referee_reward": [0.5] * 5},
                           schema_overrides={"step": pl.Int32})
    out = with_rewards(episodes, referee, load_recipe("ant_skills_curated"))
    assert out.height == episodes.height and out.select("episode_id", "step").equals(episodes.select("episode_id", "step"))
    got = {e: g["progress_reward"].to_list() for (e,), g in out.group_by("episode_id", maintain_order=True)}
    assert got["fwd"] == pytest.approx([0.0, 0.05, 0.1, -0.025, 0.2], abs=1e-6)
    seam = 2 * np.pi - 6.0  # 3.0 -> -3.0 is a 0.28 rad left turn, not -6 rad
    assert got["left"] == pytest.approx([0.0, seam / 3, 0.5 / 3, 0.0], abs=1e-6)
    # Null where the measure is missing at the step or its predecessor (and, for an angle, after): never invented.
    assert got["gap"][:2] == pytest.approx([0.0, 0.1], abs=1e-6) and got["gap"][2:4] == [None, None]
    assert got["gap"][4] == pytest.approx(0.1, abs=1e-6)
    assert got["odd"] == [None] * 3
    # An episode's rewards add up to its measured progress over the target (unclipped).
    final = step_progress(episodes, load_profile("ant")).group_by("episode_id").agg(pl.col("progress_raw", "target").last())
    fwd = final.filter(pl.col("episode_id") == "fwd").row(0, named=True)
    assert sum(got["fwd"]) == pytest.approx(fwd["progress_raw"] / fwd["target"], abs=1e-6)
    assert out["progress_reward"].dtype == pl.Float32
    # The referee's column and the combined one are untouched by it.
    assert out.filter(pl.col("episode_id") == "fwd")["combined_reward"].to_list() == pytest.approx([0.5] * 5)
    assert out.filter(pl.col("episode_id") != "fwd")["referee_reward"].null_count() == 12


def test_splits_are_stable_and_independent_of_other_episodes():
    ids = pl.Series([f"ep-{i:04d}" for i in range(2000)])
    splits = {"train": 0.8, "test": 0.2}
    full = dict(zip(ids, assign_splits(ids, splits)))
    subset = ids.sample(300, seed=1, shuffle=True)
    assert dict(zip(subset, assign_splits(subset, splits))) == {i: full[i] for i in subset}
    share = sum(v == "train" for v in full.values()) / len(full)
    assert 0.75 < share < 0.85


def test_select_refuses_unusable_scores():
    recipe = load_recipe("ant_skills")
    table = make_episodes(2, 25)
    scores = make_scores(table)
    with pytest.raises(ValueError, match="duplicated episode_id"):
        select_episodes(recipe, table, pl.concat([scores, scores]))
    with pytest.raises(ValueError, match="quality_score"):
        select_episodes(recipe, table, scores.drop("quality_score"))
    with pytest.raises(ValueError, match="clash"):
        select_episodes(recipe, table, scores.with_columns(pl.lit("x").alias("robot_id")))


# ---------------------------------------------------------------- content hash

def test_content_hash_ignores_layout_but_not_values():
    table = make_episodes(3, 10).to_arrow()
    chunked = pa.concat_tables([table.slice(0, 7), table.slice(7)])
    regular = table.cast(pa.schema([
        pa.field(f.name, pa.string() if f.type == pa.large_string() else
                 pa.list_(f.type.value_type) if pa.types.is_large_list(f.type) else f.type)
        for f in table.schema
    ]))
    reference = table_content_hash(table)
    assert table_content_hash(chunked) == reference
    assert table_content_hash(regular) == reference
    state = table.column("observation.state").to_pylist()
    state[4][2] += 1e-3
    changed = table.set_column(table.schema.get_field_index("observation.state"), "observation.state",
                               pa.array(state, type=table.schema.field("observation.state").type))
    assert table_content_hash(changed) != reference
    assert table_content_hash(table.select(sorted(table.column_names))) == reference


# ---------------------------------------------------------------- publishing

def test_publish_versions_are_content_addressed_and_immutable(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    table = make_episodes(6, 25)

    first = do_publish(recipe, table)
    assert (first.version, first.created) == ("1.0.0", True)
    assert first.path.parent == home / "hub" / "mini"
    assert first.path.name == f"v1.0.0-{first.content_hash[:8]}"
    assert first.n_steps == 150 and first.n_episodes == 6
    assert sum(s["steps"] for s in first.splits.values()) == 150

    again = do_publish(recipe, table.sample(fraction=1.0, shuffle=True, seed=4))  # same content, other order
    assert (again.version, again.created, again.path) == ("1.0.0", False, first.path)
    assert len(list_versions("mini")) == 1

    scores = make_scores(table).with_columns(pl.col("progress") + 1.0)
    second = do_publish(recipe, table, scores=scores)
    assert (second.version, second.created) == ("1.1.0", True)
    assert second.content_hash != first.content_hash
    assert first.path.is_dir()  # older versions stay
    record = json.loads((second.path / "version.json").read_text())
    assert record["parent_version"] == "1.0.0" and record["code_version"] == "test-commit"

    dropped = do_publish(recipe, table, scores=make_scores(table).drop("smoothness"))
    assert dropped.version == "2.0.0"  # a removed column breaks readers: major bump

    assert [v["version"] for v in list_versions("mini")] == ["1.0.0", "1.1.0", "2.0.0"]
    assert resolve_version("mini", "latest")["version"] == "2.0.0"
    assert resolve_version("mini", "v1.1.0")["path"] == str(second.path)
    assert resolve_version("mini", "1.0.0")["content_hash"] == first.content_hash
    with pytest.raises(LookupError, match="no version"):
        resolve_version("mini", "1.7.0")
    with pytest.raises(LookupError, match="no published versions"):
        resolve_version("nothing", "latest")
    with pytest.raises(ValueError, match="not a version"):
        resolve_version("mini", "newest")


def test_published_version_loads_with_datasets(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    table = make_episodes(6, 25, images=True)
    result = do_publish(recipe, table)

    shards = sorted(p.name for p in (result.path / "data").iterdir())
    train_shards = [s for s in shards if s.startswith("train-")]
    n_train = result.splits["train"]["steps"]
    assert len(train_shards) == -(-n_train // 40)  # shard_rows 40
    assert train_shards[0] == f"train-00000-of-{len(train_shards):05d}.parquet"

    ds = datasets.load_dataset(str(result.path), cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == set(result.splits)
    for split, counts in result.splits.items():
        assert ds[split].num_rows == counts["steps"]
    train = ds["train"]
    assert isinstance(train.features["observation.images.front"], datasets.Image)
    assert {"observation.state", "action", POSE, "quality_score", "smoothness", "is_terminal"} <= set(train.column_names)
    row = train[0]
    assert row["observation.images.front"].size == (8, 6)
    source = table.filter((pl.col("episode_id") == row["episode_id"]) & (pl.col("step") == row["step"]))
    np.testing.assert_array_equal(np.asarray(row["observation.state"], np.float32),
                                  source.get_column("observation.state")[0].to_numpy())

    info = json.loads((result.path / "meta" / "info.json").read_text())
    assert info["features"]["observation.images.front"] == {"dtype": "image", "shape": [6, 8, 3],
                                                             "names": ["height", "width", "channel"]}
    assert info["features"]["observation.state"]["shape"] == [STATE_DIM]
    assert len(info["features"]["observation.state"]["names"]) == STATE_DIM
    assert info["features"]["action"]["names"][0].endswith("cmd_joint.data[0]")
    states = np.stack(table.get_column("observation.state").to_list())
    stats = info["stats"]["observation.state"]
    np.testing.assert_allclose(stats["mean"], states.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["q99"], np.quantile(states.astype(np.float64), 0.99, axis=0), rtol=1e-5)
    assert stats["count"] == 150
    assert info["stats"]["reward"]["count"] == 0 and info["stats"]["reward"]["mean"] == [None]
    assert info["fps"] == pytest.approx(20.0)

    episodes = pl.read_parquet(result.path / "meta" / "episodes.parquet")
    assert episodes.height == 6
    assert {"split", "n_steps", "quality_score", "smoothness", "progress"} <= set(episodes.columns)
    assert "timestamp" not in episodes.columns


def test_dataset_card_header_and_lineage(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    result = do_publish(recipe, make_episodes(6, 25))
    text = (result.path / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "apache-2.0"
    assert header["task_categories"] == ["robotics"]
    assert header["tags"] == ["robocurate"]
    files = {d["split"]: d["path"] for d in header["configs"][0]["data_files"]}
    assert files == {s: f"data/{s}-*.parquet" for s in result.splits}
    names = [f["name"] for f in header["dataset_info"]["features"]]
    assert "observation.state" in names and "quality_score" in names
    hashes = {s["sha256"] for s in header["robocurate"]["sources"]}
    assert hashes == {"a" * 64, "b" * 64, "c" * 64}  # the file that gave no episode is recorded too
    assert header["robocurate"]["content_hash"] == result.content_hash
    body = text.split("---\n", 2)[2]
    assert "c" * 64 in body and "test-commit" in body and "min_quality_score" in body
    assert "auroc: 0.91" in body and "passed: true" in body


def test_download_snapshot(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    result = do_publish(recipe, make_episodes(4, 25))
    target = download("mini", "latest", tmp_path / "copy")
    assert sorted(p.relative_to(target) for p in target.rglob("*")) == \
        sorted(p.relative_to(result.path) for p in result.path.rglob("*"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        download("mini", "1.0.0", target)
    (target / "stray.txt").write_text("x")
    again = download("mini", "v1.0.0", target, overwrite=True)
    assert not (again / "stray.txt").exists() and (again / "version.json").exists()


def test_crash_inside_build_leaves_no_version(tmp_path, home, monkeypatch):
    recipe = load_recipe(write_recipe(tmp_path))
    table = make_episodes(4, 25)

    def disk_full(**_):
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(publish_mod, "render_card", disk_full)  # fails after the shards are written
        with pytest.raises(OSError, match="No space left"):
            do_publish(recipe, table)
    folder = home / "hub" / "mini"
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []  # not even a hidden build folder
    assert list_versions("mini") == []

    assert do_publish(recipe, table).version == "1.0.0"


def test_publish_refuses_bad_tables(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    table = make_episodes(2, 25)
    kwargs = dict(sources=sources_frame(), validation={}, quality_stats={}, code_version="x")
    with pytest.raises(ValueError, match="no rows"):
        publish(recipe, table.head(0), **kwargs)
    with pytest.raises(ValueError, match="repeat an"):
        publish(recipe, pl.concat([table, table.head(1)]), **kwargs)
    with pytest.raises(ValueError, match="not in the recipe's splits"):
        publish(recipe, table.with_columns(pl.lit("holdout").alias("split")), **kwargs)
    with pytest.raises(ValueError, match="source_sha256"):
        publish(recipe, table, **{**kwargs, "sources": pl.DataFrame({"source_file": ["x"]})})
    # without a split column the recipe assigns splits itself
    result = publish(recipe, table, **kwargs)
    assert result.created and result.n_steps == 50


def test_push_to_hub_checks_arguments_before_any_network(tmp_path, home):
    recipe = load_recipe(write_recipe(tmp_path))
    result = do_publish(recipe, make_episodes(2, 25))
    with pytest.raises(ValueError, match="not a published version"):
        push_to_hub(tmp_path, "owner/name", token="hf_secret")
    with pytest.raises(ValueError, match="repo id"):
        push_to_hub(result.path, "bad repo id!", token="hf_secret")
    with pytest.raises(RuntimeError, match="HF_TOKEN"):
        push_to_hub(result.path, "owner/name", token=None)
