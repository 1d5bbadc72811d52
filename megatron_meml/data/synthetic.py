"""The embedded synthetic task: procedurally generated arithmetic problems with exact integer answers.

Nothing is downloaded: a fresh machine can run MEF and RIEL end to end. Two versions (``data.synthetic.version``):
  * **2** (default): three problem families and three error-prone teachers, the testbed of the paper's mechanism
    (``synthetic_families.py``: experts that differ in *which* questions they get right);
  * **1**: the task below, whose teachers differ in format only (kept for comparison and for tests that pin it).

Version 1. Problems are chains of 1..max_steps
operations (+, -, *) over small operands, told as a short story. Splits are deterministic in ``seed`` and
disjoint: the test split never repeats a train question.

Expert solution styles (the "heterogeneous teachers" of the synthetic world):
  * style 0 (the dataset's own rationale): the equations, e.g. ``3+5=8. 8*2=16. #### 16``
  * style 1 (step by step):               ``Start 3. Add 5: 8. Times 2: 16. #### 16``
  * style 2 (decomposition):              ``a=3+5=8; b=a*2=16. #### 16``
  * style k >= 3 cycles through the three.
All end in ``#### <answer>`` so the synthetic verifier (exact integer) reads every style.
"""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

from ..types import Record
from .synthetic_families import FAMILIES, draw_distinct
from .synthetic_families import generate as generate_v2

NAMES = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal"]
ITEMS = ["apples", "cards", "coins", "pens", "shells", "stamps"]
_OPS = {"+": ("gets {x} more", "Add {x}"), "-": ("gives away {x}", "Minus {x}"), "*": ("ends with {x} times as many", "Times {x}")}


def _problem(rng: random.Random, max_operand: int, min_steps: int, max_steps: int) -> Tuple[str, List[Tuple[str, int]], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, max_operand)
    start = value
    steps: List[Tuple[str, int]] = []
    for _ in range(rng.randint(min_steps, max_steps)):
        op = rng.choice(["+", "-", "*"])
        if op == "*":
            x = rng.randint(2, 3)
        elif op == "-":
            if value <= 1:
                op = "+"
            x = rng.randint(1, max(1, min(max_operand, value - 1))) if op == "-" else rng.randint(1, max_operand)
        else:
            x = rng.randint(1, max_operand)
        value = value + x if op == "+" else value - x if op == "-" else value * x
        steps.append((op, x))
    story = f"{name} has {start} {item}. " + " ".join(
        f"{name} {_OPS[op][0].format(x=x)}." for op, x in steps) + f" How many {item} now?"
    return story, [("=", start)] + steps, value


def solution(steps: List[Tuple[str, int]], style: int) -> str:
    """Render the worked solution of a problem in expert ``style`` (see module docstring)."""
    style = style % 3
    value = steps[0][1]
    parts = []
    for i, (op, x) in enumerate(steps[1:]):
        new = value + x if op == "+" else value - x if op == "-" else value * x
        if style == 0:
            parts.append(f"{value}{op}{x}={new}.")
        elif style == 1:
            parts.append(f"{_OPS[op][1].format(x=x)}: {new}.")
        else:
            parts.append(f"{'abcdefgh'[i]}={'abcdefgh'[i - 1] if i else value}{op}{x}={new};")
        value = new
    head = f"Start {steps[0][1]}. " if style == 1 else ""
    return head + " ".join(parts) + f" #### {value}"


def generate(split: str, num: int, seed: int, max_operand: int = 20, min_steps: int = 1, max_steps: int = 2,
             exclude: set = frozenset()) -> List[Record]:
    """``num`` distinct problems for ``split``; the record's solution is style 0 and ``meta['steps']`` keeps the
    operations so other styles can be rendered."""
    rng = random.Random(f"{seed}:{split}")

    def draw(i: int):
        q, steps, ans = _problem(rng, max_operand, min_steps, max_steps)
        return q, lambda: Record(id=f"syn-{split}-{i}", question=q, answer=str(ans), solution=solution(steps, 0),
                                 meta={"steps": steps})

    return draw_distinct(num, exclude, draw, f"synthetic task: cannot draw {num} distinct {split} problems; raise "
                                             f"data.synthetic.max_operand or max_steps")


def load_synthetic(split: str, num_train: int = 2000, num_test: int = 200, seed: int = 1234, version: int = 2,
                   families: Sequence[str] = FAMILIES, num_riel: int = 0, **kw) -> List[Record]:
    """Deterministic ``train`` / ``test`` splits; test questions never occur in train. ``version`` 2 takes
    ``families``; version 1 takes ``max_operand``, ``min_steps``, ``max_steps`` (other keywords are ignored by the
    version they do not belong to, so one config section serves both). Split ``riel``: ``num_riel`` problems
    that occur in neither train nor test (RIEL questions MEF never saw, ``riel.train_split``)."""
    unknown = set(kw) - {"max_operand", "min_steps", "max_steps"}
    if unknown:
        raise TypeError(f"load_synthetic: unexpected keyword arguments {sorted(unknown)}")
    if version == 2:
        gen = lambda sp, n, exclude=frozenset(): generate_v2(sp, n, seed, families, exclude)  # noqa: E731
    elif version == 1:
        gen = lambda sp, n, exclude=frozenset(): generate(sp, n, seed, exclude=exclude, **kw)  # noqa: E731
    else:
        raise ValueError(f"config key `data.synthetic.version`: must be 1 or 2, got {version!r}")
    train = gen("train", num_train)
    if split == "train":
        return train
    test = gen("test", num_test, {r.question for r in train})
    if split in ("test", "dev", "eval"):
        return test
    if split == "riel":
        if num_riel < 1:
            raise ValueError("config key `data.synthetic.num_riel`: the `riel` split is empty; set it >= 1 (or "
                             "leave riel.train_split unset)")
        return gen("riel", num_riel, {r.question for r in train} | {r.question for r in test})
    raise ValueError(f"synthetic task: unknown split {split!r} (train | test | riel)")
