"""Immutable, versioned policy checkpoints.

Layout: `<data root>/checkpoints/<name>/v<semver>-<hash8>/` holding
  model.d3               d3rlpy's `save` output (config + weights; a pickle),
  adapters.safetensors   LoRA experts, routers and the other trained encoder weights,
  manifest.json          dataset name/version, recipe, algorithm and configs, code
                         version, backbone hash, metrics, learning curve, hashes.
`hash8` is the start of the sha256 of model.d3, so identical weights map to the
same folder and saving them again is a no-op. `.d3` files are pickles: they are
only unpickled after their hash matches a manifest written by this module.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import d3rlpy
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from foundations.code_version import code_version
from foundations.storage import AtomicDir, area, sha256_file
from training.backbone import resolve_model_dir, weights_sha256
from training.lora_moe import LoRAMoEEncoderFactory, adapter_state_dict, instruction_ids, make_observations
from training.offline_rl import TrainResult

FORMAT = "robocurate-checkpoint/1"
MANIFEST = "manifest.json"
MODEL = "model.d3"
ADAPTERS = "adapters.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
_FOLDER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)-[0-9a-f]{8}$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt d3rlpy algorithm and its manifest."""

    path: Path
    algo: Any
    manifest: dict[str, Any]

    @property
    def instructions(self) -> list[str]:
        return list(self.manifest["observation"]["instructions"])

    def act(self, states: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Greedy actions for states (N, D) under instruction texts (N of them, or 1 for all)."""
        ids = instruction_ids(list(texts), self.instructions)
        return self.algo.predict(make_observations(states, ids))

    def policy(self, instruction: str) -> Callable[[np.ndarray], np.ndarray]:
        """A closed-loop controller `state (D,) -> action (A,)` for one instruction (e.g. for sim rollouts)."""
        ids = instruction_ids([instruction], self.instructions)

        def act(state: np.ndarray) -> np.ndarray:
            return self.algo.predict(make_observations(np.asarray(state).reshape(1, -1), ids))[0]

        return act


def _encoder_factories(algo: Any) -> list[LoRAMoEEncoderFactory]:
    return [v for v in vars(algo.config).values() if isinstance(v, LoRAMoEEncoderFactory)]


def save_checkpoint(
    result: TrainResult,
    name: str,
    *,
    version: str = "0.1.0",
    dataset_name: Optional[str] = None,
    dataset_version: Optional[str] = None,
    recipe: Optional[dict[str, Any]] = None,
    metrics: Optional[dict[str, Any]] = None,
) -> Path:
    """Write `result`'s policy as `<checkpoints>/<name>/v<version>-<hash8>/` and return that folder.

    `metrics` (for example closed-loop scores) are stored beside the training
    metrics. Saving identical weights under the same version returns the folder
    that exists already.
    """
    if not _NAME.match(name):
        raise ValueError(f"checkpoint name {name!r} must be letters, digits, '_', '.' or '-'")
    if not _SEMVER.match(version):
        raise ValueError(f"version {version!r} must be semantic, like 1.4.0")
    algo = result.algo
    if algo.impl is None:
        raise ValueError("the algorithm was never built or trained; nothing to save")
    parent = area("checkpoints") / name
    parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".staging-", dir=parent) as staging:
        staged_model = Path(staging) / MODEL
        algo.save(str(staged_model))
        model_sha = sha256_file(staged_model)
        final = parent / f"v{version}-{model_sha[:8]}"
        if final.exists():
            existing = json.loads((final / MANIFEST).read_text())
            if existing.get("model_sha256") == model_sha:
                return final
            raise FileExistsError(f"{final} exists with different weights; choose another version")

        adapters = adapter_state_dict(algo)
        factories = _encoder_factories(algo)
        backbone = None
        if factories:
            model_dir = factories[0].model_dir
            backbone = {"model_dir": model_dir, "sha256": weights_sha256(resolve_model_dir(model_dir))}
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "folder": final.name,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model_file": MODEL,
            "model_sha256": model_sha,
            "adapters_file": ADAPTERS if adapters else None,
            "dataset": {"name": dataset_name, "version": dataset_version},
            "recipe": recipe,
            "algorithm": result.config.algorithm,
            "train_config": result.config.to_dict(),
            "d3rlpy_config": json.loads(algo.config.serialize()),
            "observation": {
                "layout": "observation.state values, then the index of language_instruction in `instructions`",
                "state_dim": int(algo.impl.observation_shape[0]) - 1,
                "action_size": int(algo.impl.action_size),
                "instructions": result.instructions,
            },
            "backbone": backbone,
            "code_version": code_version(),
            "versions": {"d3rlpy": d3rlpy.__version__, "torch": torch.__version__},
            "training": {
                "metrics": result.final_metrics(),
                "expert_usage": result.expert_usage,
                "learning_curve": result.curve.to_dicts(),
                "reward_scale": result.reward_scale,
                "rejected_episodes": int(result.rejected["episode_id"].n_unique()),
            },
            "metrics": metrics or {},
        }
        with AtomicDir(final) as tmp:
            staged_model.rename(tmp / MODEL)
            if adapters:
                save_file(adapters, str(tmp / ADAPTERS), metadata={"format": FORMAT, "name": name, "version": version})
                manifest["adapters_sha256"] = sha256_file(tmp / ADAPTERS)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return str(value)


def load_checkpoint(path: Path | str, device: str = "cpu:0") -> Checkpoint:
    """Rebuild the algorithm saved in a checkpoint folder, after checking it is ours and intact.

    Refuses (ValueError) a folder without our manifest, a model.d3 whose hash
    differs from the manifest (it is a pickle: never load a stranger's), or a
    backbone whose weights changed since training.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ValueError(f"{path} is not a checkpoint folder: it has no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path} is not a {FORMAT} manifest; refusing to load {MODEL}")
    model_path = path / MODEL  # fixed name: a manifest cannot point the unpickler elsewhere
    actual = sha256_file(model_path)
    if actual != manifest.get("model_sha256"):
        raise ValueError(
            f"{model_path} has sha256 {actual[:12]}..., not the manifest's "
            f"{str(manifest.get('model_sha256'))[:12]}...; it was changed, so it will not be unpickled"
        )
    backbone = manifest.get("backbone")
    if backbone:
        current = weights_sha256(resolve_model_dir(backbone["model_dir"]))
        if current != backbone["sha256"]:
            raise ValueError(
                f"the backbone weights ({backbone['model_dir'] or 'default MiniLM'}) differ from those the "
                "checkpoint was trained with; install the same model version"
            )
    algo = d3rlpy.load_learnable(str(model_path), device=device)
    return Checkpoint(path=path, algo=algo, manifest=manifest)


def load_adapters(path: Path | str) -> dict[str, torch.Tensor]:
    """The LoRA experts, routers and encoder weights of a checkpoint, from its safetensors file."""
    file = Path(path) / ADAPTERS
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist (checkpoints of MLP encoders have no adapters)")
    return load_file(str(file))


def list_checkpoints(name: str) -> list[Path]:
    """Folders of checkpoint `name`, oldest version first."""
    parent = area("checkpoints") / name
    if not parent.exists():
        return []
    found = [(tuple(int(g) for g in m.groups()), p) for p in parent.iterdir() if (m := _FOLDER.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(name: str) -> Optional[Path]:
    """The highest version of checkpoint `name`, or None."""
    versions = list_checkpoints(name)
    return versions[-1] if versions else None
