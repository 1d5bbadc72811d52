"""Dynamic sampling per (question, expert) cell (``riel.dynamic_sampling``; DAPO's dynamic sampling, per cell).

A RIEL step has Q·N cells (question q, expert e), each a group of G rollouts with the per-cell baseline. A cell
whose G rewards are all equal has A = 0 on every rollout: it adds tokens to the GRPO normaliser and nothing to the
gradient. With dynamic sampling such a cell leaves the GRPO batch and its slot is refilled:

    round r = 1 .. R (R = riel.max_resample_rounds), while slots are empty:
        for each empty slot of expert e: a fresh question q' for e (not already used for e in this step, not one
            of the step's questions), G rollouts of q' under P_e (seeds mix_seed(seed, step, SALT, r, j))
        cells of the round with non-equal rewards fill slots; all-equal ones leave their slot empty for round r+1

so the GRPO batch keeps Q·N cells when the refills succeed within R rounds; slots still empty afterwards stay
out (``dynamic/unfilled``). The slots belong to the expert of the dropped cell, so each expert keeps its share of
the batch (an expert that solves everything does not hand its slots to another).

What still sees every cell: the inter-expert KL pairs are formed from the step's original questions with all N
groups (an all-wrong E− cell is exactly where the KL teaches), and the hard-example buffer is offered every cell
generated this step — the dropped all-wrong ones and the refills (in generation order). Refill cells are
single-expert cells: they take part in GRPO and the buffer, not in a KL pair (that needs every expert on q').

Fresh questions: a seeded draw from the RIEL pool per (step, round, expert) (``random.Random(mix_seed(...))``),
identical on every rank and after a resume. The cost is the extra rollouts: ``dynamic/rollouts`` and
``rollout/tokens`` (every response token generated this step, kept or not).

Measured on the quickstart (benchmarks/complementarity_cpu_20261207.md, seeds 1-3, R = 2): 72-85% of a step's
cells were all-equal over RIEL (mostly all-correct late), R = 2 refilled 27-38% of them, and the run generated
2.4x the rollout tokens; per step it beat the paper's objective (mean expert accuracy 99.5 vs 97.9%, oracle
100%), per rollout token it was behind early and level at ~0.5M tokens.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Set

from ..algo.advantages import compute_advantages
from ..types import Record, Request, Rollout, ScoredGroup
from .sampling import mix_seed

SALT = 0xD5A


def all_equal(g: ScoredGroup) -> bool:
    """The cell's G rewards are all equal (its group advantages are all 0)."""
    r = g.rewards
    return all(x == r[0] for x in r)


@dataclass
class Refill:
    """What the refill rounds of one step produced."""

    kept: List[ScoredGroup]                                       # the GRPO cells: original non-equal + refills
    generated: List[ScoredGroup] = field(default_factory=list)    # every refill cell, kept or not, in order
    records: Dict[str, Record] = field(default_factory=dict)      # the refill questions by id
    stats: Dict[str, float] = field(default_factory=dict)


def fresh_questions(pool: Sequence[Record], k: int, exclude: Set[str], seed: int) -> List[Record]:
    """``k`` distinct records of ``pool`` whose ids are not in ``exclude`` (fewer when the pool runs out)."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        if len(out) == k:
            break
        if pool[i].id not in exclude:
            out.append(pool[i])
    return out


def refill_cells(groups: Sequence[ScoredGroup], records: Sequence[Record], pool: Sequence[Record],
                 prompt: Callable[[Record, int], List[int]],
                 generate: Callable[[List[Request], Sequence[Record]], List[Rollout]], riel, step: int,
                 seed: int) -> Refill:
    """Drop the all-equal cells of ``groups`` and refill their slots (module docstring). ``generate(requests,
    records)`` returns scored rollouts in request order; ``prompt(record, e)`` renders a prompt."""
    G = riel.group_size
    kept = [g for g in groups if not all_equal(g)]
    empty = [g.expert for g in groups if all_equal(g)]  # one slot per dropped cell, owned by its expert
    out = Refill(kept=kept)
    used: Dict[int, Set[str]] = {}
    step_ids = {r.id for r in records}
    dropped, rollouts, rounds = len(empty), 0, 0
    for rnd in range(1, riel.max_resample_rounds + 1):
        if not empty:
            break
        rounds = rnd
        cells = []  # (record, expert) of this round
        for e in sorted(set(empty)):
            need = empty.count(e)
            taken = used.setdefault(e, set(step_ids))
            for rec in fresh_questions(pool, need, taken, mix_seed(seed, step, SALT, rnd, e)):
                taken.add(rec.id)
                cells.append((rec, e))
        if not cells:
            break
        requests = [Request(prompt_ids=list(prompt(rec, e)), qid=rec.id, expert=e,
                            seed=mix_seed(seed, step, SALT, rnd, j * G + i))
                    for j, (rec, e) in enumerate(cells) for i in range(G)]
        scored = generate(requests, [rec for rec, _ in cells])
        rollouts += len(requests)
        new = [ScoredGroup(qid=rec.id, expert=e, rollouts=scored[j * G:(j + 1) * G])
               for j, (rec, e) in enumerate(cells)]
        compute_advantages(new, riel)
        out.generated.extend(new)
        out.records.update({rec.id: rec for rec, _ in cells})
        filled = [g for g in new if not all_equal(g)]
        out.kept.extend(filled)
        for g in filled:
            empty.remove(g.expert)
    out.stats = {"dynamic/dropped_cells": float(dropped), "dynamic/refilled_cells": float(dropped - len(empty)),
                 "dynamic/unfilled": float(len(empty)), "dynamic/rounds": float(rounds),
                 "dynamic/rollouts": float(rollouts)}
    return out
