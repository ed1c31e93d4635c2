"""Export throughput and size: `robocurate export` to LeRobot v3 and Minari against `download` of the same version.

Publishes a synthetic version (N episodes of T steps at 20 Hz: a 27-d state, an 8-d action, a reward and
a 64x64 PNG camera whose frames look like a camera's, a lit scene with a moving object, not noise), then
in the same process measures:
  * baseline: `download` (copy every file of the version, checking its sha256);
  * lerobot: `export(..., "lerobot")` (Parquet rows with the encoded frames as they are, stats, metadata);
  * minari: `export(..., "minari")` (every frame decoded to uint8 arrays, written through Minari's HDF5
    storage, then gzip-compressed).

    python benchmarks/export_benchmark.py --episodes 40 --steps 200
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from foundations.catalog import list_configs
from foundations.export import export
from foundations.publish import download, publish
from foundations.recipes import parse_recipe
from foundations.schema import POLARS_SCHEMA


def _frames(n: int, rng: np.random.Generator) -> list[bytes]:
    y, x = np.mgrid[0:64, 0:64]
    scene = np.stack([x * 3, y * 3, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    out = []
    for i in range(n):
        frame = scene.copy()
        cx, cy = 8 + (i * 3) % 48, 8 + (i * 5) % 48
        frame[cy - 6:cy + 6, cx - 6:cx + 6] = (230, 40, 40)
        frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)  # sensor noise
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _table(episodes: int, steps: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = episodes * steps
    ep = np.repeat(np.arange(episodes), steps)
    step = np.tile(np.arange(steps), episodes)
    return pl.DataFrame({
        "episode_id": [f"{i:016x}-000" for i in ep], "step": step.astype(np.int32), "timestamp": step / 20.0,
        "observation.state": list(rng.normal(size=(n, 27)).astype(np.float32)),
        "action": list(rng.uniform(-1, 1, (n, 8)).astype(np.float32)),
        "reward": rng.normal(size=n).astype(np.float32),
        "is_first": step == 0, "is_last": step == steps - 1, "is_terminal": np.zeros(n, bool),
        "language_instruction": "do the task", "robot_id": "r1", "source": "bench",
        "source_file": [f"log_{i}.mcap" for i in ep], "source_sha256": [f"{i:064x}" for i in ep],
    }).cast(POLARS_SCHEMA).with_columns(pl.Series("observation.images.front", _frames(n, rng), pl.Binary))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = _table(args.episodes, args.steps)
        recipe = parse_recipe({"name": "bench", "sources": [list_configs("sources")[0]], "splits": {"train": 1.0}})
        sources = table.select("source_file", "source_sha256").unique()
        result = publish(recipe, table, sources=sources, validation={}, quality_stats={}, code_version="bench",
                         root=tmp / "hub")
        timings = {}
        t0 = time.perf_counter()
        download("bench", "latest", tmp / "download", root=tmp / "hub")
        timings["download (baseline)"] = (time.perf_counter() - t0, tmp / "download")
        for fmt in ("lerobot", "minari"):
            t0 = time.perf_counter()
            out = export("bench", "latest", fmt, tmp / fmt, root=tmp / "hub")
            timings[f"export {fmt}"] = (time.perf_counter() - t0, out.path)
        base = timings["download (baseline)"][0]
        print(f"{result.n_steps} steps, {result.n_episodes} episodes, 64x64 PNG camera; published "
              f"{_size(result.path) / 1e6:.1f} MB")
        for what, (seconds, path) in timings.items():
            print(f"  {what:<20} {seconds:6.2f} s  {result.n_steps / seconds:8.0f} steps/s  "
                  f"{seconds / base:5.1f}x the download  {_size(path) / 1e6:7.1f} MB on disk")


if __name__ == "__main__":
    main()
