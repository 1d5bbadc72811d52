"""The hard-example buffer: questions an expert mostly fails become supervised examples with the gold solution.

Rule (paper §RIEL, K=6, G=8, B=64): for each (q, e) group, if more than K of its G answers are wrong, the example
(q, P_e, ground-truth solution) is admitted with probability ``admit_prob`` (default K/G). When the buffer holds
B examples, those B examples become SFT microbatches of the current step (token-mean NLL of the gold solution,
weight λ2) and the buffer empties.

Choices the paper leaves open (documented here):
  * one uniform is drawn from the buffer's own ``torch.Generator`` per *hard* group (non-hard groups draw
    nothing), in the order groups are offered (question order, then expert order). The generator state is part of
    :meth:`HardExampleBuffer.state_dict`, so a resumed run admits exactly what the uninterrupted run would have.
  * admission is checked group by group; the moment the buffer reaches B it fires and empties, and later groups of
    the same step go into the emptied buffer (so a step can fire more than once when B is small).
  * the same question may be admitted several times (once per expert, or again in a later epoch).
  * the gold solution is ``Record.solution`` rendered under expert e's prompt (expert 0's MEF format).
Examples are stored as plain dicts so a checkpoint loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..types import Record, ScoredGroup
from .inter_expert_kl import is_correct


@dataclass
class HardExample:
    """One admitted (question, expert) pair; trained on ``record.solution`` under expert ``expert``'s prompt."""

    record: Record
    expert: int

    def to_dict(self) -> Dict[str, Any]:
        return {"record": asdict(self.record), "expert": self.expert}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HardExample":
        return cls(record=Record(**d["record"]), expert=int(d["expert"]))


def is_hard(rewards: Sequence[float], k: int) -> bool:
    """More than ``k`` of the group's answers are wrong."""
    return sum(0 if is_correct(r) else 1 for r in rewards) > k


class HardExampleBuffer:
    """Capacity-B buffer with seeded random admission (see module docstring)."""

    def __init__(self, capacity: int, admit_prob: float, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"riel.buffer_capacity must be >= 1, got {capacity}")
        if not 0.0 <= admit_prob <= 1.0:
            raise ValueError(f"riel.admit_prob must be in [0, 1], got {admit_prob}")
        self.capacity = int(capacity)
        self.admit_prob = float(admit_prob)
        self.examples: List[HardExample] = []
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, riel_cfg, seed: int) -> "HardExampleBuffer":
        """From a :class:`~megatron_meml.config.schema.RIELConfig`; admit_prob defaults to K/G."""
        p = riel_cfg.admit_prob if riel_cfg.admit_prob is not None else riel_cfg.buffer_k / riel_cfg.group_size
        return cls(riel_cfg.buffer_capacity, p, seed)

    def __len__(self) -> int:
        return len(self.examples)

    def offer(self, example: HardExample) -> Optional[List[HardExample]]:
        """One admission trial for a hard example. Returns the B fired examples when this admission filled the
        buffer (which is then empty), else None."""
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        if u < self.admit_prob:
            self.examples.append(example)
        if len(self.examples) >= self.capacity:
            fired, self.examples = self.examples, []
            return fired
        return None

    def state_dict(self) -> Dict[str, Any]:
        return {"capacity": self.capacity, "admit_prob": self.admit_prob,
                "examples": [e.to_dict() for e in self.examples], "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.admit_prob = float(state["admit_prob"])
        self.examples = [HardExample.from_dict(d) for d in state["examples"]]
        self.generator.set_state(state["generator"])


def admit_hard_examples(buffer: HardExampleBuffer, groups: Sequence[ScoredGroup], records: Mapping[str, Record],
                        k: int) -> List[HardExample]:
    """Offer every hard (q, e) group of the step to ``buffer`` in order; return the examples that fired (a
    multiple of B, usually 0 or B) — the SFT examples of this step."""
    fired: List[HardExample] = []
    for g in groups:
        if is_hard(g.rewards, k):
            out = buffer.offer(HardExample(record=records[g.qid], expert=g.expert))
            if out:
                fired.extend(out)
    return fired
