"""Ingestion throughput: messages/s of `ingest_files` against pyarrow alone.

Writes N synthetic ROS 2 MCAP logs shaped like the fleet's (100 Hz joint states,
50 Hz odometry, 20 Hz commands, instructions, episode markers), then in the same
process measures:
  * ingest: `ingest_files` (MCAP read, CDR decode, alignment, canonical rows);
  * baseline: writing the same message values to Parquet with pyarrow alone
    (one table per topic, no MCAP, no CDR, no alignment) - the floor any
    ingestion from already-decoded data would pay.

    python benchmarks/ingest_benchmark.py --files 4 --seconds 30
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mcap_ros2.writer import Writer

from foundations.ingest import ingest_files, load_mapping
from foundations.ingest.align import Lineage, build_episodes, prepare_log
from foundations.ingest.mcap_source import read_mcap

SEP = "=" * 80
HEADER = ["MSG: std_msgs/Header", "builtin_interfaces/Time stamp", "string frame_id",
          SEP, "MSG: builtin_interfaces/Time", "int32 sec", "uint32 nanosec"]
MSGDEFS = {
    "sensor_msgs/msg/JointState": "\n".join(
        ["std_msgs/Header header", "string[] name", "float64[] position", "float64[] velocity", "float64[] effort", SEP, *HEADER]),
    "nav_msgs/msg/Odometry": "\n".join([
        "std_msgs/Header header", "string child_frame_id", "geometry_msgs/PoseWithCovariance pose",
        "geometry_msgs/TwistWithCovariance twist", SEP, *HEADER,
        SEP, "MSG: geometry_msgs/PoseWithCovariance", "Pose pose", "float64[36] covariance",
        SEP, "MSG: geometry_msgs/Pose", "Point position", "Quaternion orientation",
        SEP, "MSG: geometry_msgs/Point", "float64 x", "float64 y", "float64 z",
        SEP, "MSG: geometry_msgs/Quaternion", "float64 x 0", "float64 y 0", "float64 z 0", "float64 w 1",
        SEP, "MSG: geometry_msgs/TwistWithCovariance", "Twist twist", "float64[36] covariance",
        SEP, "MSG: geometry_msgs/Twist", "Vector3 linear", "Vector3 angular",
        SEP, "MSG: geometry_msgs/Vector3", "float64 x", "float64 y", "float64 z"]),
    "std_msgs/msg/Float64MultiArray": "\n".join([
        "MultiArrayLayout layout", "float64[] data", SEP, "MSG: std_msgs/MultiArrayLayout",
        "MultiArrayDimension[] dim", "uint32 data_offset", SEP, "MSG: std_msgs/MultiArrayDimension",
        "string label", "uint32 size", "uint32 stride"]),
    "std_msgs/msg/String": "string data",
}
JOINTS = [f"{part}_{i}" for i in range(1, 5) for part in ("hip", "ankle")]  # the names the mapping selects


def write_log(path: Path, seconds: float, rng: np.random.Generator) -> dict[str, list]:
    """One log of a single episode; returns per-topic message values for the pyarrow baseline."""
    t0 = 1_700_000_000 * 10**9
    t_end = t0 + int(seconds * 1e9)
    rows: dict[str, list] = {"/joint_states": [], "/odom": [], "/cmd_joint": [], "/instruction": [], "/events": []}
    events = []
    with open(path, "wb") as fh:
        w = Writer(fh)
        schema = {name: w.register_msgdef(name, text) for name, text in MSGDEFS.items()}
        for t in range(t0 - 10**7, t_end, 10**7):
            q, dq = rng.normal(size=8).tolist(), rng.normal(size=8).tolist()
            stamp = {"sec": t // 10**9, "nanosec": t % 10**9}
            events.append((t, "/joint_states", "sensor_msgs/msg/JointState",
                           {"header": {"stamp": stamp, "frame_id": "base"}, "name": JOINTS, "position": q, "velocity": dq, "effort": [0.0] * 8}))
            rows["/joint_states"].append((t, q, dq))
        for t in range(t0 - 2 * 10**7, t_end, 2 * 10**7):
            p, yaw, v = rng.normal(size=3).tolist(), float(rng.uniform(-math.pi, math.pi)), rng.normal(size=6).tolist()
            stamp = {"sec": t // 10**9, "nanosec": t % 10**9}
            pose = {"position": dict(zip("xyz", p)), "orientation": {"w": math.cos(yaw / 2), "x": 0.0, "y": 0.0, "z": math.sin(yaw / 2)}}
            twist = {"linear": dict(zip("xyz", v[:3])), "angular": dict(zip("xyz", v[3:]))}
            events.append((t, "/odom", "nav_msgs/msg/Odometry", {
                "header": {"stamp": stamp, "frame_id": "odom"}, "child_frame_id": "base",
                "pose": {"pose": pose, "covariance": [0.0] * 36}, "twist": {"twist": twist, "covariance": [0.0] * 36}}))
            rows["/odom"].append((t, p, [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)], v))
        for t in range(t0, t_end, 5 * 10**7):
            a = np.clip(rng.normal(size=8), -1, 1).tolist()
            events.append((t, "/cmd_joint", "std_msgs/msg/Float64MultiArray", {"layout": {"dim": [], "data_offset": 0}, "data": a}))
            rows["/cmd_joint"].append((t, a))
        for t in range(t0, t_end, 10**9):
            events.append((t, "/instruction", "std_msgs/msg/String", {"data": "walk forward"}))
            rows["/instruction"].append((t, "walk forward"))
        last = t0 + ((t_end - 1 - t0) // (5 * 10**7)) * 5 * 10**7
        for t, text in ((t0, "episode_start"), (last, "episode_end")):
            events.append((t, "/events", "std_msgs/msg/String", {"data": text}))
            rows["/events"].append((t, text))
        events.sort(key=lambda e: e[0])
        for t, topic, type_name, msg in events:
            w.write_message(topic, schema[type_name], msg, log_time=t, publish_time=t)
        w.add_metadata("robot", {"robot_id": "ant-bench"})
        w.finish()
    return rows


def pyarrow_baseline(all_rows: list[dict[str, list]], out: Path) -> tuple[float, int]:
    """Seconds to write the same message values as Parquet with pyarrow alone, and the message count."""
    # Warm up pyarrow's Parquet writer so one-off initialisation is not billed to the baseline.
    pq.write_table(pa.table({"x": [1.0]}), out / "warmup.parquet")
    start = time.perf_counter()
    n = 0
    for i, rows in enumerate(all_rows):
        for topic, values in rows.items():
            cols = list(zip(*values))
            arrays = [pa.array(cols[0], pa.int64())] + [pa.array(c) for c in cols[1:]]
            table = pa.Table.from_arrays(arrays, names=["log_time"] + [f"f{j}" for j in range(1, len(cols))])
            pq.write_table(table, out / f"{i}{topic.replace('/', '_')}.parquet", compression="zstd")
            n += table.num_rows
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="log length per file")
    parser.add_argument("--workers", type=int, default=1, help="processes for ingest_files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mapping = load_mapping("ant_fleet_ros2")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        paths = [root / f"ant-{i:03d}.mcap" for i in range(args.files)]
        all_rows = [write_log(p, args.seconds, rng) for p in paths]
        size_mb = sum(p.stat().st_size for p in paths) / 1e6

        start = time.perf_counter()
        result = ingest_files(paths, mapping, progress=False, workers=args.workers)
        ingest_s = time.perf_counter() - start
        assert result.quarantine.height == 0, result.quarantine.to_dicts()

        # Where ingest time goes, on the first file: decode vs alignment.
        t = time.perf_counter()
        log = read_mcap(paths[0], mapping)
        decode_s = time.perf_counter() - t
        t = time.perf_counter()
        prepare_log(log, mapping)
        build_episodes(log, mapping, Lineage(mapping.name, paths[0].name, "0" * 64, "bench-robot"))
        align_s = time.perf_counter() - t

        (root / "baseline").mkdir()
        base_s, base_n = pyarrow_baseline(all_rows, root / "baseline")
        t = time.perf_counter()
        result.episodes.write_parquet(root / "episodes.parquet", compression="zstd")
        write_s = time.perf_counter() - t

    assert base_n == result.messages, (base_n, result.messages)
    ingest_rate, base_rate = result.messages / ingest_s, base_n / base_s
    print(f"files: {args.files} x {args.seconds:g} s ({size_mb:.1f} MB MCAP), messages: {result.messages}, "
          f"canonical rows: {result.episodes.height}, workers: {args.workers}")
    print(f"ingest_files:        {ingest_s:7.2f} s  {ingest_rate:10.0f} messages/s")
    print(f"pyarrow alone:       {base_s:7.2f} s  {base_rate:10.0f} messages/s  (same message values to Parquet)")
    print(f"ratio ingest/pyarrow: {ingest_rate / base_rate:.3f}  (pyarrow is {base_rate / ingest_rate:.1f}x faster)")
    print(f"first file split: decode {decode_s:.2f} s ({log.messages / decode_s:.0f} msg/s), align {align_s:.3f} s; "
          f"writing the canonical rows to Parquet: {write_s:.3f} s")


if __name__ == "__main__":
    main()
