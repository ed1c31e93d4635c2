"""Canonical episode table -> d3rlpy MDPDataset, with rejections for unusable episodes.

Observations are `[observation.state..., instruction_index]` (the LoRA-MoE
encoder's layout, see training.lora_moe). Episode ends follow RLDS: a final step
with `is_terminal` becomes a d3rlpy terminal (no bootstrap, the fall is a real
outcome); a final step with `is_last` only becomes a timeout (truncated, the
value is still bootstrapped). The two flags never meet on one step.

Rewards stay raw in the dataset; `reward_scale` gives the multiplier that
training applies through d3rlpy's MultiplyRewardScaler (saved with the model).
Rewards are scaled, never shifted: a shift changes what ending an episode early
is worth, and falls end the episodes of legged robots.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import polars as pl
from d3rlpy.constants import ActionSpace
from d3rlpy.dataset import MDPDataset

from foundations.schema import ACTION, LINEAGE, QUARANTINE_SCHEMA, STATE

STAGE = "training"
MIN_EPISODE_STEPS = 2  # a timeout episode of one step yields no transition at all
BOUND_TOLERANCE = 1e-5  # float32 round-off at the bounds is not a violation


def _expected_width(table: pl.DataFrame, column: str) -> int:
    """The most common list length of a column: the width every row must have."""
    lengths = table.select(pl.col(column).list.len().drop_nulls().alias("n"))["n"]
    if lengths.is_empty():
        raise ValueError(f"column {column!r} has no values; cannot tell its width")
    return int(lengths.mode().sort()[0])


def _finite_list(column: str) -> pl.Expr:
    return pl.col(column).list.eval(pl.element().is_finite().fill_null(False)).list.all().fill_null(False)


def check_bounds(action_bounds: Sequence[float]) -> tuple[float, float]:
    """(low, high) of the robot profile's action bounds; ValueError unless low < high, both finite."""
    try:
        low, high = (float(b) for b in action_bounds)
    except (TypeError, ValueError):
        raise ValueError(f"action_bounds must be [low, high] (the robot profile's), got {action_bounds!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"action_bounds must be finite with low < high, got [{low}, {high}]")
    return low, high


def split_trainable(
    table: pl.DataFrame,
    reward_column: Optional[str],
    instructions: Sequence[str],
    action_bounds: Sequence[float],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a canonical table into (trainable rows, rejections in QUARANTINE_SCHEMA).

    An episode is rejected, with one record per failed check, when its state or
    action vectors have the wrong width or non-finite values, actions leave
    `action_bounds` (the robot profile's [low, high]), the reward column (unless None) is null or non-finite, its
    instruction is not in `instructions`, or its steps are not 0..T-1 ending in
    exactly one `is_last` (with `is_terminal` only there) and at least 2 steps.
    """
    required = {"episode_id", "step", STATE, ACTION, "is_first", "is_last", "is_terminal", "language_instruction"}
    if reward_column is not None:
        required.add(reward_column)
    missing = sorted(required - set(table.columns))
    if missing:
        raise ValueError(f"the episode table lacks columns {missing}; it must follow foundations.schema")
    low, high = check_bounds(action_bounds)
    if table.is_empty():
        return table, pl.DataFrame(schema=QUARANTINE_SCHEMA)

    state_dim = _expected_width(table, STATE)
    action_dim = _expected_width(table, ACTION)
    table = table.sort(["episode_id", "step"])
    reward_ok = (
        pl.col(reward_column).cast(pl.Float64).is_finite().fill_null(False)
        if reward_column is not None
        else pl.lit(True)
    )
    rows = table.select(
        "episode_id",
        "step",
        "is_first",
        "is_last",
        "is_terminal",
        (pl.col(STATE).list.len() == state_dim).fill_null(False).alias("state_width"),
        _finite_list(STATE).alias("state_finite"),
        (pl.col(ACTION).list.len() == action_dim).fill_null(False).alias("action_width"),
        _finite_list(ACTION).alias("action_finite"),
        (pl.col(ACTION).list.eval(pl.element().is_between(low - BOUND_TOLERANCE, high + BOUND_TOLERANCE))
         .list.all().fill_null(False)).alias("action_bounded"),
        reward_ok.alias("reward_ok"),
        pl.col("language_instruction").is_in(list(instructions)).fill_null(False).alias("instruction_ok"),
        *[pl.col(c) if c in table.columns else pl.lit(None, pl.String).alias(c) for c in LINEAGE],
    )
    episodes = rows.group_by("episode_id", maintain_order=True).agg(
        pl.len().alias("n_steps"),
        *[pl.col(c).first() for c in LINEAGE],
        (~pl.col("state_width")).sum().alias("bad_state_width"),
        (~pl.col("state_finite")).sum().alias("bad_state_finite"),
        (~pl.col("action_width")).sum().alias("bad_action_width"),
        (~pl.col("action_finite")).sum().alias("bad_action_finite"),
        (~pl.col("action_bounded")).sum().alias("bad_action_bounded"),
        (~pl.col("reward_ok")).sum().alias("bad_reward"),
        (~pl.col("instruction_ok")).sum().alias("bad_instruction"),
        (pl.col("step") == pl.int_range(pl.len())).all().alias("steps_contiguous"),
        pl.col("is_first").first().alias("first_flag"),
        pl.col("is_last").sum().alias("n_last"),
        pl.col("is_last").last().alias("last_flag"),
        (pl.col("is_terminal") & ~pl.col("is_last")).sum().alias("early_terminal"),
    )
    checks: list[tuple[str, pl.Expr, pl.Expr]] = [
        ("state_width", pl.col("bad_state_width") > 0,
         pl.format("{} of {} steps have an observation.state that is not {} values long",
                   "bad_state_width", "n_steps", pl.lit(state_dim))),
        ("finite_values", pl.col("bad_state_finite") > 0,
         pl.format("{} of {} steps have NaN, infinite or null values in observation.state",
                   "bad_state_finite", "n_steps")),
        ("action_width", pl.col("bad_action_width") > 0,
         pl.format("{} of {} steps have an action that is not {} values long",
                   "bad_action_width", "n_steps", pl.lit(action_dim))),
        ("finite_values", pl.col("bad_action_finite") > 0,
         pl.format("{} of {} steps have NaN, infinite or null values in action", "bad_action_finite", "n_steps")),
        ("action_range", pl.col("bad_action_bounded") > 0,
         pl.format("{} of {} steps have actions outside the robot's action bounds [{}, {}]",
                   "bad_action_bounded", "n_steps", pl.lit(low), pl.lit(high))),
        ("reward_missing", pl.col("bad_reward") > 0,
         pl.format("{} of {} steps have a null or non-finite {}", "bad_reward", "n_steps",
                   pl.lit(str(reward_column)))),
        ("unknown_instruction", pl.col("bad_instruction") > 0,
         pl.format("{} of {} steps have a language_instruction outside {}", "bad_instruction", "n_steps",
                   pl.lit(str(list(instructions))))),
        ("step_order", ~pl.col("steps_contiguous"),
         pl.lit("steps are not numbered 0..T-1 without gaps or repeats")),
        ("episode_bounds", ~pl.col("first_flag") | ~pl.col("last_flag") | (pl.col("n_last") != 1),
         pl.lit("the episode must start with is_first and end with exactly one is_last, on its final step")),
        ("early_terminal", pl.col("early_terminal") > 0,
         pl.lit("is_terminal is set on a step that is not the episode's last")),
        ("too_short", pl.col("n_steps") < MIN_EPISODE_STEPS,
         pl.format("the episode has {} step(s); training needs at least {}", "n_steps",
                   pl.lit(MIN_EPISODE_STEPS))),
    ]
    rejected = pl.concat(
        [
            episodes.filter(failed).select(
                "episode_id", *LINEAGE,
                pl.lit(STAGE).alias("stage"), pl.lit(name).alias("check"), reason.alias("reason"),
            )
            for name, failed, reason in checks
        ]
    ).cast(QUARANTINE_SCHEMA)  # type: ignore[arg-type]
    bad_ids = rejected["episode_id"].unique()
    return table.filter(~pl.col("episode_id").is_in(bad_ids.implode())), rejected


def reward_scale(table: pl.DataFrame, reward_column: str) -> float:
    """1 / std of the per-step rewards (1.0 when they are constant or absent)."""
    values = table[reward_column].cast(pl.Float64).drop_nulls()
    std = float(values.std()) if values.len() > 1 else 0.0
    return 1.0 / std if np.isfinite(std) and std > 1e-8 else 1.0


def state_statistics(table: pl.DataFrame) -> tuple[list[float], list[float]]:
    """Per-feature mean and std of observation.state (for the encoder's normalisation)."""
    states = _stack(table, STATE)
    return states.mean(axis=0).tolist(), states.std(axis=0).tolist()


def _stack(table: pl.DataFrame, column: str) -> np.ndarray:
    width = _expected_width(table, column)
    flat = table[column].explode().to_numpy().astype(np.float32, copy=False)
    return flat.reshape(-1, width)


def build_mdp_dataset(
    table: pl.DataFrame,
    reward_column: Optional[str],
    instructions: Sequence[str],
    action_bounds: Sequence[float],
) -> MDPDataset:
    """A d3rlpy MDPDataset from a canonical table whose episodes all pass `split_trainable`.

    Observations are state + instruction index (position in `instructions`);
    reward_column None gives zero rewards (behaviour cloning ignores them).
    Raises ValueError naming the failed checks when any episode is unusable;
    call `split_trainable` first to keep the good ones and record the rest.
    """
    clean, rejected = split_trainable(table, reward_column, instructions, action_bounds)
    if not rejected.is_empty():
        summary = rejected.group_by("check").agg(pl.len(), pl.col("reason").first()).sort("check")
        details = "; ".join(f"{r['check']} x{r['len']} (e.g. {r['reason']})" for r in summary.iter_rows(named=True))
        raise ValueError(
            f"{rejected['episode_id'].n_unique()} episode(s) cannot be trained on: {details}. "
            "Use split_trainable() to separate them and record the rejections."
        )
    if clean.is_empty():
        raise ValueError("the episode table is empty; nothing to train on")
    states = _stack(clean, STATE)
    actions = _stack(clean, ACTION)
    mapping = {text: i for i, text in enumerate(instructions)}
    idx = clean["language_instruction"].replace_strict(mapping, return_dtype=pl.Float32).to_numpy()
    observations = np.concatenate([states, idx[:, None]], axis=1)
    if reward_column is None:
        rewards = np.zeros(clean.height, dtype=np.float32)
    else:
        rewards = clean[reward_column].cast(pl.Float32).to_numpy()
    is_last = clean["is_last"].to_numpy()
    is_terminal = clean["is_terminal"].to_numpy() & is_last
    return MDPDataset(
        observations=observations,
        actions=actions,
        rewards=rewards.reshape(-1, 1),
        terminals=is_terminal.astype(np.float32),
        timeouts=(is_last & ~is_terminal).astype(np.float32),
        action_space=ActionSpace.CONTINUOUS,
        action_size=actions.shape[1],
    )
