"""Load a LeRobot dataset folder with lerobot's LeRobotDataset and dump what a learner sees, for tests/test_export.py.

Run in its own process: `python tests/lerobot_loader.py ROOT OUT_DIR`. lerobot 0.4.4 (the newest for
Python 3.11) pins torch < 2.11 and imports torchvision, whose PyPI wheels are CUDA builds: beside the
project's CPU torch 2.13.0 their C++ ops cannot load, and `import torchvision` then fails ("operator
torchvision::nms does not exist"). transformers imports torchvision whenever it is installed, so the
Makefile keeps lerobot and torchvision out of site-packages, in `<venv>/lerobot-loader`, which only
this process puts on its path; here the two op schemas are declared (no kernels: nothing runs them) so
that torchvision imports its pure-Python parts, the only ones LeRobotDataset uses.

Writes OUT_DIR/items.npz (every item's tensors stacked, by key), OUT_DIR/loaded.json (tasks, episodes
metadata, stats, a DataLoader batch's shapes, the padding of a delta-timestamp window at each episode's end).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LOADER = Path(sys.prefix) / "lerobot-loader"


def lerobot_dataset_class():
    import importlib.util

    import torch

    if LOADER.is_dir():
        sys.path.insert(0, str(LOADER))
    spec = importlib.util.find_spec("torchvision")
    ops = sorted(Path(spec.origin).parent.glob("_C*.so")) if spec is not None and spec.origin else []
    try:
        torch.ops.load_library(ops[0])
    except (OSError, IndexError):
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lerobot_dataset_class.lib = lib  # the declarations live as long as their Library
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def main(root: Path, out: Path) -> None:
    import numpy as np
    import torch

    LeRobotDataset = lerobot_dataset_class()
    ds = LeRobotDataset("robocurate/export", root=root)
    items = [ds[i] for i in range(len(ds))]
    arrays = {k: np.stack([item[k].numpy() for item in items]) for k, v in items[0].items() if torch.is_tensor(v)}
    np.savez(out / "items.npz", **arrays)
    episodes = [ds.meta.episodes[e] for e in range(ds.num_episodes)]
    windowed = LeRobotDataset("robocurate/export", root=root, delta_timestamps={"action": [0.0, 1.0 / ds.fps]})
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True)))
    loaded = {
        "len": len(ds), "num_episodes": ds.num_episodes, "fps": ds.fps, "camera_keys": ds.meta.camera_keys,
        "task": [item["task"] for item in items],
        "episodes": episodes,
        "data_files": [str(ds.meta.get_data_file_path(e)) for e in range(ds.num_episodes)],
        "last_frame_pad": [windowed[ep["dataset_to_index"] - 1]["action_is_pad"].tolist() for ep in episodes],
        "batch": {k: list(v.shape) if torch.is_tensor(v) else len(v) for k, v in batch.items()},
        "stats": {k: {s: np.asarray(v).tolist() for s, v in st.items()} for k, st in ds.meta.stats.items()},
    }
    (out / "loaded.json").write_text(json.dumps(loaded, default=str), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
