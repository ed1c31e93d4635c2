"""`robocurate`: simulate a fleet, land logs, ingest them, see what happened to each file, download or export versions.

Errors are one line on stderr and a non-zero exit (set ROBOCURATE_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robocurate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="simulate a fleet of robots and write ROS 2 MCAP logs")
    sim.add_argument("--embodiment", default=None,
                     help="which simulated robot (default: the first); an unknown name lists the known ones")
    sim.add_argument("--episodes", type=int, default=60)
    sim.add_argument("--out", type=Path, required=True, help="folder for the .mcap files and ground_truth.jsonl")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--fault-rate", type=float, default=0.15, help="share of files with a planted fault")
    sim.add_argument("--layout", help="record as another site would (a layout preset of the embodiment, "
                     "e.g. second_site: other topics, types, rates, a folder per robot)")

    land = sub.add_parser("land", help="copy log files or folders (with sub-folders) into a new landing batch")
    land.add_argument("paths", type=Path, nargs="+")
    land.add_argument("--source", required=True, help="the source (datasets/sources/<source>.yaml) that reads them")
    land.add_argument("--batch", help="batch name (default: batch-<UTC time>)")

    ingest = sub.add_parser("ingest", help="ingest, validate, score and label every pending batch of every source")
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")

    status = sub.add_parser("status", help="every landed file: its outcome, episodes and reasons")
    status.add_argument("--json", action="store_true", help="print one JSON object per file (a JSON list)")

    demo = sub.add_parser("demo", help="simulate every fleet (first run only) and run every asset")
    demo.add_argument("--episodes", type=int, default=60, help="episodes per simulated fleet")
    demo.add_argument("--seed", type=int, default=0)

    dl = sub.add_parser("download", help="snapshot of a published dataset version")
    dl.add_argument("name")
    dl.add_argument("--version", default="latest", help="1.2.0, v1.2.0 or latest")
    dl.add_argument("--to", type=Path, required=True)

    exp = sub.add_parser("export", help="a published dataset version as a LeRobot v3 folder or a Minari dataset",
                         description="LeRobot: --to is the dataset folder, loaded with LeRobotDataset(repo_id, "
                         "root=DIR). Minari: --to is a datasets root; the dataset goes to "
                         "DIR/robocurate/<name>-v<N> and loads with minari.load_dataset('robocurate/<name>-v<N>') "
                         "when MINARI_DATASETS_PATH=DIR (N: the version's position among the published ones).")
    exp.add_argument("name")
    exp.add_argument("--version", default="latest", help="1.2.0, v1.2.0 or latest")
    exp.add_argument("--format", required=True, help="lerobot or minari")
    exp.add_argument("--to", type=Path, required=True, metavar="DIR",
                     help="LeRobot: a new or empty folder; Minari: a datasets root")
    exp.add_argument("--reward", help="the published column rewards come from (default: the first of combined_reward, "
                     "reward, referee_reward, progress_reward with a value on every step)")

    versions = sub.add_parser("versions", help="list the published versions of a dataset")
    versions.add_argument("name")

    sub.add_parser("dev", help="open the Dagster UI on the embedded instance")

    serve = sub.add_parser("serve", help="run Dagster as deployed: webserver, daemon and (production) Celery workers")
    serve.add_argument("--profile", choices=["embedded", "production"], default="embedded",
                       help="embedded: SQLite, steps in local processes (= dev); production: PostgreSQL, "
                       "Celery workers on RabbitMQ (deploy/dagster.yaml)")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--workers", type=int, default=2, help="Celery workers (production)")
    serve.add_argument("--smoke", type=int, metavar="EPISODES",
                       help="production: push a small simulated fleet through the workers, print the run ids, stop")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"robocurate {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line, never a traceback, unless asked for
        if os.environ.get("ROBOCURATE_DEBUG"):
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"robocurate {args.command}: {text}", file=sys.stderr)
        return 2


def _simulate(args) -> int:
    from simulator.embodiments import EMBODIMENTS, get_embodiment

    embodiment = get_embodiment(args.embodiment or EMBODIMENTS[0])
    options = {"layout": args.layout} if args.layout else {}
    truth = embodiment.simulate_fleet(args.episodes, args.out, seed=args.seed, fault_rate=args.fault_rate, **options)
    print(f"wrote {args.episodes} {embodiment.name} episodes to {args.out} (ground truth: {truth}); "
          f"land them with: robocurate land {args.out} --source {embodiment.source}")
    return 0


def _land(args) -> int:
    from foundations import landing

    key = landing.land(args.paths, args.source, args.batch)
    n = len(list(p for p in landing.batch_dir(key).rglob("*") if p.is_file()))
    print(f"landed {n} files as batch {key} in {landing.batch_dir(key)}; `robocurate ingest` ingests it")
    return 0


def _ingest(args) -> int:
    from pipelines.runner import ingest_pending
    from pipelines.status import file_status, summary

    keys = ingest_pending(progress=not args.json)
    table = summary(file_status())
    if args.json:
        print(json.dumps({"batches_ingested": keys, "files": table.to_dicts()}, indent=1))
    else:
        print(f"ingested {len(keys)} batch(es): {', '.join(keys) or 'none pending'}")
        for row in table.iter_rows(named=True):
            print(f"  {row['source']:<24} {row['outcome']:<12} {row['files']:>5} files")
    return 0


def _status(args) -> int:
    from pipelines.status import file_status

    table = file_status()
    if args.json:
        print(json.dumps(table.to_dicts(), indent=1, default=str))
        return 0
    if table.is_empty():
        print("no landed files; add some with `robocurate land PATH --source NAME`")
    for row in table.iter_rows(named=True):
        print(f"{row['source']}/{row['landing_batch']}/{row['file']}  {row['outcome']}  sha256 {(row['sha256'] or '?')[:12]}")
        for ep in row["episodes"]:
            score = f"  score {ep['quality_score']:.2f}" if ep["quality_score"] is not None else ""
            trim = (f"  (trimmed {ep['trimmed_start_steps']} steps at the start, {ep['trimmed_end_steps']} at the end)"
                    if ep["trimmed_start_steps"] or ep["trimmed_end_steps"] else "")
            labels = f"  labels {', '.join(ep['labels'])}" if ep.get("labels") else ""
            absent = f"  without {', '.join(ep['absent_streams'])}" if ep.get("absent_streams") else ""
            print(f"    episode {ep['episode_id']}  {ep['steps']} steps  {ep['outcome']}{score}{labels}{trim}{absent}")
            for reason in ep["reasons"]:
                print(f"      - {reason}")
        for reason in row["reasons"]:
            print(f"    - {reason}")
        if row["duplicate_of"]:
            print(f"    - same content as {row['duplicate_of']}")
    return 0


def _demo(args) -> int:
    from pipelines.demo import run_demo

    return run_demo(episodes=args.episodes, seed=args.seed)


def _download(args) -> int:
    from foundations.publish import download

    path = download(args.name, args.version, args.to)
    print(f"{args.name} {args.version} -> {path}")
    return 0


def _export(args) -> int:
    from foundations.export import export

    result = export(args.name, args.version, args.format, args.to, reward=args.reward)
    print(f"{result.name} {result.version} -> {result.format} at {result.path}: {result.episodes} episodes, "
          f"{result.frames} {'frames' if result.format == 'lerobot' else 'transitions'}; "
          f"reward from {result.reward or 'no column (none has a value on every step)'}")
    for col, why in result.left_out.items():
        print(f"  left out {col}: {why}")
    print(f"  load it: {result.load}")
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
    return subprocess.call([str(bin_dir / "dagster"), "dev", "-m", "pipelines.definitions",
                            "-p", str(getattr(args, "port", 3000))])


def _serve(args) -> int:
    if args.profile == "embedded":
        if args.smoke is not None:
            raise ValueError("--smoke runs the production profile: add --profile production")
        return _dev(args)
    from pipelines import production

    if args.smoke is not None:
        return production.smoke(episodes=args.smoke)
    return production.serve(port=args.port, workers=args.workers)


COMMANDS = {
    "simulate": _simulate,
    "land": _land,
    "ingest": _ingest,
    "status": _status,
    "demo": _demo,
    "download": _download,
    "export": _export,
    "versions": _versions,
    "dev": _dev,
    "serve": _serve,
}

if __name__ == "__main__":
    sys.exit(main())
