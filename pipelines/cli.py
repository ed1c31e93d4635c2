"""`robocurate`: simulate a fleet, land logs, run the pipeline, download dataset versions."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robocurate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a fleet of Ant robots and write ROS 2 MCAP logs")
    sim.add_argument("--episodes", type=int, default=60)
    sim.add_argument("--out", type=Path, required=True, help="folder for the .mcap files and ground_truth.jsonl")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault-rate", type=float, default=0.15, help="share of files with a planted fault")

    land = sub.add_parser("land", help="copy log files into a new landing batch (the sensor picks it up)")
    land.add_argument("files", type=Path, nargs="+")
    land.add_argument("--batch", help="batch name (default: batch-<UTC time>)")

    demo = sub.add_parser("demo", help="simulate a fleet (first run only) and run every asset")
    demo.add_argument("--episodes", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)

    dl = sub.add_parser("download", help="snapshot of a published dataset version")
    dl.add_argument("name")
    dl.add_argument("--version", default="latest", help="1.2.0, v1.2.0 or latest")
    dl.add_argument("--to", type=Path, required=True)

    versions = sub.add_parser("versions", help="list the published versions of a dataset")
    versions.add_argument("name")

    sub.add_parser("dev", help="open the Dagster UI on the embedded instance")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        print(f"robocurate {args.command}: {err}", file=sys.stderr)
        return 2


def _simulate(args) -> int:
    from simulator.fleet import simulate_fleet

    truth = simulate_fleet(args.episodes, args.out, seed=args.seed, fault_rate=args.fault_rate)
    print(f"wrote {args.episodes} episodes to {args.out} (ground truth: {truth})")
    return 0


def _land(args) -> int:
    from foundations import landing

    batch = landing.land_files(args.files, args.batch)
    print(f"landed {len(args.files)} files as batch {batch} in {landing.landing_dir(batch)}")
    return 0


def _demo(args) -> int:
    from pipelines.demo import run_demo

    return run_demo(episodes=args.episodes, seed=args.seed)


def _download(args) -> int:
    from foundations.publish import download

    path = download(args.name, args.version, args.to)
    print(f"{args.name} {args.version} -> {path}")
    return 0


def _versions(args) -> int:
    from foundations.publish import list_versions

    rows = list_versions(args.name)
    if not rows:
        print(f"no published versions of {args.name}")
    for row in rows:
        print(f"{row['version']:>8}  {row['content_hash'][:12]}  {row['created_at']}  {row['path']}")
    return 0


def _dev(args) -> int:
    from pipelines.runner import dagster_home

    home = dagster_home()
    print(f"DAGSTER_HOME={home}; data root {os.environ.get('ROBOCURATE_HOME', '.robocurate')}")
    bin_dir = Path(sys.executable).parent
    return subprocess.call([str(bin_dir / "dagster"), "dev", "-m", "pipelines.definitions"])


COMMANDS = {
    "simulate": _simulate,
    "land": _land,
    "demo": _demo,
    "download": _download,
    "versions": _versions,
    "dev": _dev,
}

if __name__ == "__main__":
    sys.exit(main())
