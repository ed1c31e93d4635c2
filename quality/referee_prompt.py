"""The referee's question: LARM's four graded labels, their rewards, and the prompt text.

The referee reads a segment's rendering (the "state") and answers one multiple-choice
question. The labels are single letters so that one next-token distribution scores all
of them at once (no text is generated, nothing is parsed):

    A  right action, good outcome      +1.0
    B  right action, no visible outcome +0.3
    C  wrong action, no harm            -0.3
    D  wrong action, harm (fell, moved away from the goal)  -1.0

The scalars are LARM's graded "referee RL" rewards; `label_episodes` accepts another
mapping. `PROMPT_TEMPLATE_VERSION` is part of every cache key: bump it whenever the
wording or layout below changes, so cached judgements of the old prompt are not reused.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

PROMPT_TEMPLATE_VERSION = "referee-v3"  # v3: short question, answer format before the state (all prefix)

LABEL_REWARDS: dict[str, float] = {"A": 1.0, "B": 0.3, "C": -0.3, "D": -1.0}


@dataclass(frozen=True)
class Question:
    """A multiple-choice question whose options are answered by single-letter labels.

    `options` are (name, description) pairs in label order; `labels[i]` answers option i.
    The user message puts the question first and the state last, so that every prompt of
    a batch shares one long token prefix (the local backend computes it once).
    """

    instructions: str
    options: tuple[tuple[str, str], ...]
    labels: tuple[str, ...] = field(default=("A", "B", "C", "D"))

    def __post_init__(self) -> None:
        if len(self.options) != len(self.labels):
            raise ValueError(f"{len(self.options)} options but {len(self.labels)} labels; give one label per option")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {self.labels}")

    def render(self, state: str) -> str:
        """The full user message: instructions, lettered options, the answer format, then the state.

        The state comes last so that everything before it is a prefix shared by every prompt."""
        lines = [self.instructions] + [f"{label}. {name}: {desc}" for label, (name, desc) in zip(self.labels, self.options)]
        return "\n".join(lines) + "\n" + self.answer_format() + "\n\n" + state

    def answer_format(self) -> str:
        return f"Answer with one letter, {self.labels[0]} to {self.labels[-1]}."

    def to_systemone(self) -> dict:
        """The question as a System One `choice` question (`transformers serve` /v1/systemone)."""
        return {"type": "choice", "instructions": self.instructions, "criteria": dict(self.options)}

    @property
    def fingerprint(self) -> str:
        """Hash of everything that changes the prompt; part of the cache key."""
        blob = json.dumps([PROMPT_TEMPLATE_VERSION, self.instructions, self.options, self.labels, self.answer_format()])
        return hashlib.sha256(blob.encode()).hexdigest()


REFEREE_QUESTION = Question(
    instructions="You referee a robot. Judge what it did in one short segment against its task.",
    options=(
        ("progress", "clear progress toward the task"),
        ("no visible outcome", "it tried, but made little progress"),
        ("wrong, no harm", "it did something else, without falling or losing ground"),
        ("harm", "it fell, or moved away from the task's goal"),
    ),
)


def check_label_rewards(label_rewards: dict[str, float], question: Question) -> dict[str, float]:
    """`label_rewards` if it gives a finite scalar for exactly the question's labels; else a ValueError."""
    if set(label_rewards) != set(question.labels):
        raise ValueError(
            f"label_rewards must map exactly the labels {list(question.labels)} to rewards, got {sorted(label_rewards)}"
        )
    bad = {k: v for k, v in label_rewards.items() if not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise ValueError(f"label_rewards must be finite numbers; fix {bad}")
    return {label: float(label_rewards[label]) for label in question.labels}
