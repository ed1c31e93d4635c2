"""A published version as a Minari dataset, which `minari.load_dataset(dataset_id)` loads.

The dataset is written through Minari's own storage (HDF5; frames as uint8 arrays, lossless:
Minari's JPEG encoding is off, and the arrays are then gzip-compressed inside the file) at `<root>/<namespace>/<name>-v<N>/data/`, where `<root>`
is what Minari reads from `MINARI_DATASETS_PATH`. N is the version's position among the dataset's
published versions (v1.0.0 is 1, the next version 2, ...): Minari numbers versions with one integer.

A Minari episode of T steps holds T+1 observations. A published episode of T rows has T
observations, so it becomes T-1 transitions: observation t, action t, reward t and observation t+1
for t < T-1; the last row's observation is the final observation, and its action and reward, which
lead to no recorded observation, are not part of any transition. The last transition terminates
when the last row is terminal (RLDS `is_terminal`) and is truncated when it is `is_last` without
being terminal. Observations form a Dict: each `observation.<name>` vector under `<name>`, the
cameras under `images` (uint8 height x width x channels), the instruction under `instruction`
(a Text space). Per-step `timestamp` and `step` go in the infos; each episode's robocurate
episode_id, split, lineage and scores in its metadata.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from foundations.export.published import Published
from foundations.feature_stats import IMAGE_PREFIX

NAMESPACE = "robocurate"
WRITE_EPISODES = 64  # episodes decoded and handed to Minari's storage at a time


def dataset_id(name: str, ordinal: int) -> str:
    """`robocurate/<name>-v<N>`; Minari allows letters, digits, '-' and '_' in a name."""
    return f"{NAMESPACE}/{re.sub(r'[^-_A-Za-z0-9]', '_', name)}-v{ordinal}"


def write_minari(pub: Published, data_path: Path, ordinal: int) -> dict[str, Any]:
    """Write the dataset's `data/` folder at `data_path` (absent); returns what was exported and left out."""
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage

    vectors, images, left_out = pub.columns()
    observations = [c for c in vectors if c != "action"]
    if "action" not in vectors:
        raise ValueError(f"{pub.name} v{pub.version} has no action vector of one length on every step "
                         f"({left_out.get('action', 'no action column')}); Minari needs one")
    lengths = pub.episodes.get_column("length")
    short = pub.episodes.filter(lengths < 2).get_column("episode_id").to_list()
    if short:
        left_out["episodes"] = (f"{len(short)} episode(s) of a single step have no transition: "
                                f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}")
    instructions = pub.instructions
    obs_space = gym.spaces.Dict({
        **{_key(c): _box(pub, c) for c in observations},
        **({"images": gym.spaces.Dict({c[len(IMAGE_PREFIX):]: gym.spaces.Box(0, 255, tuple(pub.spec(c)["shape"]), np.uint8)
                                       for c in images})} if images else {}),
        "instruction": gym.spaces.Text(max_length=max(1, int(instructions.str.len_chars().max() or 0)), min_length=0,
                                       charset="".join(sorted(set("".join(instructions.unique().to_list())))) or " "),
    })
    action_space = _box(pub, "action")

    data_path.mkdir(parents=True)
    storage = MinariStorage.new(data_path, observation_space=obs_space, action_space=action_space,
                                data_format="hdf5", jpeg_encoding=False)
    steps = pub.steps.with_columns(instructions.alias("_instruction"))
    kept = pub.episodes.filter(lengths >= 2)
    parts = steps.partition_by("episode_index", as_dict=True)
    rows = list(kept.iter_rows(named=True))
    transitions = 0
    for start in range(0, len(rows), WRITE_EPISODES):  # in batches: decoded frames of every episode at once need not fit
        batch = [_episode(pub, parts[(row["episode_index"],)], observations, images, start + i)
                 for i, row in enumerate(rows[start:start + WRITE_EPISODES])]
        storage.update_episodes(batch)
        transitions += sum(len(b.rewards) for b in batch)
    storage.update_episode_metadata([_attrs(row) for row in rows], range(len(rows)))
    if images:
        _compress_frames(data_path / "main_data.hdf5")
    storage.update_metadata({
        "dataset_size": storage.get_size(),
        "dataset_id": dataset_id(pub.name, ordinal),
        "minari_version": _minari_version(),
        "description": _description(pub, left_out),
        "robocurate": json.dumps({"name": pub.name, "version": pub.version, "content_hash": pub.record["content_hash"],
                                  "reward": pub.reward, "left_out": left_out}),
    })
    return {"episodes": len(rows), "frames": transitions, "left_out": left_out,
            "reward": pub.reward}


def _key(col: str) -> str:
    return col[len("observation."):] if col.startswith("observation.") else col


def _box(pub: Published, col: str) -> Any:
    import gymnasium as gym

    # Unbounded: a log holds what the robot did, not the limits it had (those live in its robot profile).
    shape = tuple(pub.spec(col)["shape"])
    return gym.spaces.Box(-np.inf, np.inf, shape, np.float32)


def _stack(episode: pl.DataFrame, col: str) -> np.ndarray:
    flat = episode.get_column(col).explode().to_numpy().astype(np.float32, copy=False)
    return flat.reshape(episode.height, -1)


def _episode(pub: Published, episode: pl.DataFrame, observations: list[str], images: list[str], index: int) -> Any:
    from minari.data_collector import EpisodeBuffer

    n = episode.height - 1  # transitions
    obs: dict[str, Any] = {_key(c): _stack(episode, c) for c in observations}
    if images:
        # decoded once per frame: Minari keeps arrays, and an HDF5 reader has no PNG/JPEG decoder
        obs["images"] = {c[len(IMAGE_PREFIX):]: np.stack([_frame(b, pub.spec(c)["shape"], c, episode)
                                                          for b in episode.get_column(c).to_list()])
                         for c in images}
    obs["instruction"] = episode.get_column("_instruction").to_list()
    rewards = (episode.get_column(pub.reward).cast(pl.Float64).to_numpy()[:n] if pub.reward is not None
               else np.zeros(n))
    last = episode.row(episode.height - 1, named=True)
    terminations = np.zeros(n, dtype=bool)
    truncations = np.zeros(n, dtype=bool)
    terminations[-1] = bool(last["is_terminal"])
    truncations[-1] = bool(last["is_last"]) and not bool(last["is_terminal"])
    return EpisodeBuffer(
        id=index, observations=obs, actions=_stack(episode, "action")[:n], rewards=rewards,
        terminations=terminations, truncations=truncations,
        infos={"timestamp": episode.get_column("timestamp").to_numpy(),
               "step": episode.get_column("step").cast(pl.Int64).to_numpy()},
    )


def _compress_frames(path: Path) -> None:
    """Rewrite Minari's HDF5 file with the camera arrays gzip-compressed, everything else copied as it is.

    Minari's HDF5 storage writes frames as raw uint8 arrays (its alternative, JPEG, is lossy): tens of
    times the published PNG/JPEG bytes. HDF5 decompresses transparently, so minari reads the same arrays.
    The file is rebuilt rather than edited because HDF5 does not give back the space of a replaced array.
    Level 1: on camera-like frames it compresses about as well as level 4, a third faster.
    """
    import h5py

    def clone(src: Any, dst: Any) -> None:
        dst.attrs.update(src.attrs)
        for key, obj in src.items():
            if isinstance(obj, h5py.Group):
                clone(obj, dst.create_group(key, track_order=True))
            elif "/observations/images/" in obj.name:
                dst.create_dataset(key, data=obj[()], chunks=True, compression="gzip", compression_opts=1)
            else:
                src.copy(obj, dst, name=key)

    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w", track_order=True) as dst:
        clone(src, dst)
    tmp.replace(path)


def _frame(encoded: bytes, shape: list[int], camera: str, episode: pl.DataFrame) -> np.ndarray:
    """One decoded frame of the declared [height, width, channels]; ValueError naming the episode otherwise."""
    from PIL import Image

    where = f"{camera} of episode {episode.get_column('episode_id')[0]}"
    with Image.open(io.BytesIO(encoded)) as img:
        pixels = np.asarray(img.convert({1: "L", 3: "RGB", 4: "RGBA"}.get(shape[-1], "RGB")))
    if pixels.size != int(np.prod(shape)):
        raise ValueError(f"{where} has a {pixels.shape[1]}x{pixels.shape[0]} frame, not the declared "
                         f"{shape[1]}x{shape[0]}")
    return pixels.reshape(shape)


def _attrs(row: dict[str, Any]) -> dict[str, Any]:
    """Episode metadata HDF5 attributes can hold: no nulls, no nested values."""
    return {k: v for k, v in row.items()
            if k not in ("episode_index", "length") and isinstance(v, (str, int, float, bool))}


def _minari_version() -> str:
    from importlib.metadata import version

    return version("minari")


def _description(pub: Published, left_out: dict[str, str]) -> str:
    reward = (f"rewards from the column {pub.reward!r}" if pub.reward else
              "rewards are zero: no reward column of the version has a value on every step")
    left = "; ".join(f"{c}: {why}" for c, why in left_out.items())
    return (f"{pub.name} v{pub.version} (content hash {pub.record['content_hash']}), exported by robocurate. "
            f"{reward}. Each episode of T logged steps is T-1 transitions; the last step is the final observation, "
            f"its action and reward are not in any transition."
            + (f" Left out: {left}." if left else ""))
