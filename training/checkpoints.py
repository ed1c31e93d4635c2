"""Immutable, versioned policy checkpoints.

Versions of a checkpoint are kept by the one versioned-artifact store
(foundations.versions): `<data root>/checkpoints/<name>/v<semver>-<hash8>/` holding
  model.d3               d3rlpy's `save` output (config + weights; a pickle),
  adapters.safetensors   LoRA experts, routers and the other trained encoder weights,
  manifest.json          the dataset version and its source files (lineage), recipe,
                         algorithm and configs, code version, backbone hash, metrics,
                         learning curve,
  version.json           the store's record: version, content hash, files' sha256.
`hash8` is the start of the sha256 of model.d3: saving the latest version's weights
again stores nothing. `.d3` files are pickles: they are
only unpickled after their hash matches a manifest written by this module.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import d3rlpy
import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from foundations.code_version import code_version
from foundations.storage import sha256_file
from foundations.versions import VersionStore
from training.backbone import resolve_model_dir, weights_sha256
from training.lora_moe import LoRAMoEEncoderFactory, adapter_state_dict, make_observations, text_ids
from training.offline_rl import TrainResult

FORMAT = "robocurate-checkpoint/1"
MANIFEST = "manifest.json"
MODEL = "model.d3"
ADAPTERS = "adapters.safetensors"
STORE = VersionStore("checkpoints", kind="checkpoint")


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
        """Greedy actions for states (N, D) under instruction texts (N of them, or 1 for all); any text
        for a LoRA-MoE policy (see `text_ids`), the training instructions only for an MLP one."""
        ids = text_ids(self.algo, list(texts), self.instructions)
        return self.algo.predict(make_observations(states, ids))

    def policy(self, instruction: str) -> Callable[[np.ndarray], np.ndarray]:
        """A closed-loop controller `state (D,) -> action (A,)` for one instruction (e.g. for sim rollouts)."""
        ids = text_ids(self.algo, [instruction], self.instructions)

        def act(state: np.ndarray) -> np.ndarray:
            return self.algo.predict(make_observations(np.asarray(state).reshape(1, -1), ids))[0]

        return act


def _encoder_factories(algo: Any) -> list[LoRAMoEEncoderFactory]:
    return [v for v in vars(algo.config).values() if isinstance(v, LoRAMoEEncoderFactory)]


def save_checkpoint(
    result: TrainResult,
    name: str,
    *,
    dataset: Optional[dict[str, Any]] = None,
    recipe: Optional[dict[str, Any]] = None,
    metrics: Optional[dict[str, Any]] = None,
    training_key: Optional[str] = None,
    parent: Optional[dict[str, Any]] = None,
) -> Path:
    """Store `result`'s policy as the next version of checkpoint `name`; returns its folder.

    `dataset` is the lineage of the data it learnt from (see `dataset_lineage`): name,
    version, content hash and every source file. `training_key` identifies the inputs
    (data content and configuration) so that callers can find a checkpoint trained on
    the same ones (`find_checkpoint`). `parent` names the checkpoint version it was
    warm-started from (name, version, folder, dataset version), None when trained from scratch. `metrics` (for example closed-loop scores) are
    stored beside the training metrics. Weights identical to the latest version's are
    not stored again: that version's folder is returned.
    """
    algo = result.algo
    if algo.impl is None:
        raise ValueError("the algorithm was never built or trained; nothing to save")
    versions_dir = STORE.folder(name)
    versions_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=".staging-", dir=versions_dir) as staging:
        staged_model = Path(staging) / MODEL
        algo.save(str(staged_model))
        model_sha = sha256_file(staged_model)

        def write(tmp: Path, record: dict[str, Any]) -> dict[str, Any]:
            adapters = adapter_state_dict(algo)
            factories = _encoder_factories(algo)
            backbone = None
            if factories:
                model_dir = factories[0].model_dir
                backbone = {"model_dir": model_dir, "sha256": weights_sha256(resolve_model_dir(model_dir))}
            manifest = {
                "format": FORMAT,
                "name": name,
                "version": record["version"],
                "folder": f"v{record['version']}-{model_sha[:8]}",
                "created_at": record["created_at"],
                "model_file": MODEL,
                "model_sha256": model_sha,
                "adapters_file": ADAPTERS if adapters else None,
                "dataset": dataset,
                "recipe": recipe,
                "algorithm": result.config.algorithm,
                "train_config": result.config.to_dict(),
                "d3rlpy_config": json.loads(algo.config.serialize()),
                "observation": {
                    "layout": "observation.state values, then the index of language_instruction in `instructions`",
                    "state_dim": int(algo.impl.observation_shape[0]) - 1,
                    "action_size": int(algo.impl.action_size),
                    "action_bounds": list(result.config.action_bounds or ()),
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
                "parent": parent,
            }
            staged_model.rename(tmp / MODEL)
            if adapters:
                save_file(adapters, str(tmp / ADAPTERS),
                          metadata={"format": FORMAT, "name": name, "version": record["version"]})
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
            return {}

        fields = {"format": FORMAT, "training_key": training_key,
                  "dataset": {k: dataset.get(k) for k in ("name", "version", "content_hash")} if dataset else None}
        record, _ = STORE.commit(name, model_sha, write, fields=fields)
    return Path(record["path"])


def dataset_lineage(record: dict[str, Any]) -> dict[str, Any]:
    """Name, version, content hash and source files of a published dataset version (its record from
    foundations.publish.resolve_version): what a checkpoint's manifest says it learnt from.

    Every source file of the version's `meta/info.json` comes with its sha256 and the episodes and
    steps it gave; `source` (the source mapping's name) is taken from the entry when the publisher
    recorded it, else from the version's episode table (None for a file that gave no episode).
    """
    path = Path(record["path"])
    info_path = path / "meta" / "info.json"
    try:
        sources = json.loads(info_path.read_text(encoding="utf-8"))["sources"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{info_path} does not list the version's sources ({exc}); republish the dataset") from exc
    table = pl.DataFrame(sources, schema_overrides={"source_file": pl.String, "source_sha256": pl.String},
                         infer_schema_length=None)
    keys = ["source_file", "source_sha256"]
    episodes_path = path / "meta" / "episodes.parquet"
    if "source" not in table.columns and episodes_path.exists():
        episodes = pl.read_parquet(episodes_path)
        if {"source", *keys} <= set(episodes.columns):
            table = table.join(episodes.select("source", *keys).unique(keys), on=keys, how="left")
    if "source" not in table.columns:
        table = table.with_columns(pl.lit(None, pl.String).alias("source"))
    columns = ["source", *keys, *[c for c in ("episodes", "steps") if c in table.columns]]
    return {
        "name": record["name"],
        "version": record["version"],
        "content_hash": record["content_hash"],
        "sources": table.select(columns).sort(keys).to_dicts() if table.height else [],
    }


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
    return [Path(r["path"]) for r in STORE.list_versions(name)]


def latest_checkpoint(name: str) -> Optional[Path]:
    """The highest version of checkpoint `name`, or None."""
    record = STORE.latest(name)
    return Path(record["path"]) if record else None


def find_checkpoint(name: str, training_key: str) -> Optional[Path]:
    """The newest version of checkpoint `name` trained with `training_key` (same data and config), or None."""
    found = [r for r in STORE.list_versions(name) if r.get("training_key") == training_key]
    return Path(found[-1]["path"]) if found else None
