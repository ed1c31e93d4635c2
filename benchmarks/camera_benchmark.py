"""Camera frames: per-step encoded frames (what robocurate stores) against one encoded video per episode
(what LeRobot stores), and what the camera costs the simulated fleets and ingestion.

In the same process, on frames the simulated Ant fleet really renders (64x64 JPEG at 4 Hz, aligned to
20 Hz control steps as ingestion aligns them):
  * size: the per-step frame column written to Parquet (zstd, as published) against an MP4 per episode
    (H.264 via PyAV/libx264, and AV1 via libsvtav1 as LeRobot encodes, both at the control rate);
  * encode: building each (the frames are stored as logged, so their cost is the Parquet write);
  * decode: every step of an episode, in order, and 20 random steps (a training sampler's access);
  * the fleet: simulating and ingesting episodes with the camera against the same without it (the camera's
    one-off renderer set-up, about a second per process, included).

    python benchmarks/camera_benchmark.py --episodes 4
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import polars as pl
from PIL import Image

from foundations.ingest import ingest_files, load_mapping
from simulator.fleet import simulate_fleet

FPS = 20  # the control rate: one frame per step


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def encode_video(frames: list[np.ndarray], path: Path, codec: str) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, FPS)
        if codec == "libsvtav1":
            stream.options = {"crf": "30", "preset": "12", "g": "2"}  # LeRobot's defaults: keyframe every 2 frames
        else:
            stream.options = {"crf": "23", "g": "2"}
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def decode_video(path: Path, wanted: list[int] | None = None) -> list[np.ndarray]:
    """All frames in order, or the `wanted` ones by seeking to each (as a random-access sampler must)."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if wanted is None:
            return [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        for index in wanted:
            container.seek(int(index / FPS / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts * stream.time_base * FPS >= index - 0.5:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
    return out


def decode_frames(frames: list[bytes]) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(b))) for b in frames]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=4)
    args = parser.parse_args()
    mapping = load_mapping("ant_fleet_ros2")
    camera = next(iter(mapping.image_features))
    no_camera = mapping.without_images()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        simulate_fleet(1, root / "warm", seed=4, fault_rate=0.0, camera=False)  # imports and MuJoCo set-up, once
        _, sim_cam = _timed(lambda: simulate_fleet(args.episodes, root / "cam", seed=5, fault_rate=0.0))
        _, sim_plain = _timed(lambda: simulate_fleet(args.episodes, root / "plain", seed=5, fault_rate=0.0, camera=False))
        files = sorted((root / "cam").glob("*.mcap"))
        result, ingest_cam = _timed(lambda: ingest_files(files, mapping, progress=False))
        _, ingest_plain = _timed(lambda: ingest_files(files, no_camera, progress=False))
        size_cam = sum(f.stat().st_size for f in files)
        size_plain = sum(f.stat().st_size for f in (root / "plain").glob("*.mcap"))

        rows = {"frames (parquet)": [0.0, 0.0, 0.0, 0.0], "h264 mp4": [0.0] * 4, "av1 mp4": [0.0] * 4}
        episodes = result.episodes.partition_by("episode_id", maintain_order=True)
        rng = np.random.default_rng(0)
        n_steps = 0
        error = {"h264 mp4": 0.0, "av1 mp4": 0.0}
        for k, ep in enumerate(episodes):
            frames = ep[camera].to_list()
            n_steps += len(frames)
            wanted = sorted(rng.choice(len(frames), size=min(20, len(frames)), replace=False).tolist())
            pq_path = root / f"ep{k}.parquet"
            _, t_enc = _timed(lambda: ep.select(camera).write_parquet(pq_path, compression="zstd"))
            pixels, t_dec = _timed(lambda: decode_frames(frames))
            _, t_rand = _timed(lambda: decode_frames([frames[i] for i in wanted]))
            for key, v in zip(range(4), (pq_path.stat().st_size, t_enc, t_dec, t_rand)):
                rows["frames (parquet)"][key] += v
            for name, codec in (("h264 mp4", "libx264"), ("av1 mp4", "libsvtav1")):
                path = root / f"ep{k}-{codec}.mp4"
                _, t_enc = _timed(lambda: encode_video(pixels, path, codec))
                decoded, t_dec = _timed(lambda: decode_video(path))
                _, t_rand = _timed(lambda: decode_video(path, wanted))
                error[name] = max(error[name], float(np.mean([np.abs(a.astype(int) - b).mean()
                                                              for a, b in zip(decoded, pixels)])))
                for key, v in zip(range(4), (path.stat().st_size, t_enc, t_dec, t_rand)):
                    rows[name][key] += v

    print(f"camera storage, {len(episodes)} simulated Ant episodes, {n_steps} steps of 64x64 frames "
          f"(4 Hz camera aligned to {FPS} Hz steps):")
    base = rows["frames (parquet)"]
    print(f"{'layout':18} {'bytes/step':>10} {'size x':>7} {'encode ms/ep':>13} {'decode all ms/step':>19} "
          f"{'x':>6} {'random ms/frame':>16} {'x':>6}")
    for name, (size, enc, dec, rand) in rows.items():
        print(f"{name:18} {size / n_steps:10.0f} {size / base[0]:7.2f} {enc / len(episodes) * 1e3:13.1f} "
              f"{dec / n_steps * 1e3:19.3f} {dec / base[2]:6.2f} {rand / (20 * len(episodes)) * 1e3:16.3f} "
              f"{rand / base[3]:6.2f}")
    print("video mean absolute pixel error against the logged frames: "
          + ", ".join(f"{k} {v:.2f} grey levels" for k, v in error.items()) + " (frames: 0, stored as logged)")
    print(f"simulate {args.episodes} episodes: {sim_cam:.1f} s with the camera, {sim_plain:.1f} s without "
          f"(x{sim_cam / sim_plain:.2f}); MCAP bytes x{size_cam / size_plain:.2f}")
    print(f"ingest the same files: {ingest_cam:.2f} s with the camera feature, {ingest_plain:.2f} s without "
          f"(x{ingest_cam / ingest_plain:.2f})")


if __name__ == "__main__":
    main()
