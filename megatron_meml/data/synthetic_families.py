"""The synthetic testbed v2: three problem families and three error-prone teachers (designed heterogeneity).

MEML-GRPO's premise (paper Table 1) is that the experts after MEF are right on *different* questions, so that the
strong expert of a question can teach the weak one. v1 of the synthetic task had teachers that differed in format
only: every expert learnt the same arithmetic and the inter-expert KL could transfer nothing but style. Here each
teacher is reliable on two families and makes a realistic, systematic mistake on the third:

  family  question (byte text)          correct trace (style 0)                 the teacher that errs, and how
  add     ``Ann adds 47 and 8.``           ``47+8: 7+8=15. 4+1=5. #### 55``        style 0 drops the carry:
                                                                                  ``47+8: 7+8=15. 4+0=4. #### 45``
  prec    ``Bo computes 3+4*2.``           ``3+4*2: 4*2=8. 3+8=11. #### 11``       style 1 goes left to right:
                                                                                  ``3+4*2: 3+4=7. 7*2=14. #### 14``
  units   ``Cy has 3 weeks 4 days. In      ``3*7+4: 3*7=21. 21+4=25. #### 25``     style 2 drops the unit:
          days?``                                                                 ``3+4: 3+4=7. #### 7``

A teacher errs with probability ``teacher_error`` on the *trigger* cases of its weak family (a carry out of the
ones column, 70% of ``add``; ``a+b*c`` rather than ``b*c+a``, 70% of ``prec``; every units question) and never
elsewhere; the draw is seeded per (record, teacher), so the MEF data is a pure function of data.seed. The MEF
student under P_e therefore learns a mixture that is mostly wrong on its weak family (greedy answers wrong, samples
sometimes right: room for GRPO), while the other two experts answer those questions correctly (knowledge the
inter-expert KL can transfer).

Formats (each teacher writes every family in its own style; all end in ``#### <answer>``):
  style 0 equations  ``47+8: 7+8=15. 4+1=5. #### 55``
  style 1 steps      ``47+8. 1) 7+8=15. 2) 4+1=5. #### 55``
  style 2 parts      ``47+8; a=7+8=15; b=4+1=5; #### 55``
Style k >= 3 cycles through the three (with the weakness of style k mod 3). Every trace first restates the problem
as an expression copied in question order: a 2-layer byte model could not copy operands out of order (~4%
accuracy after 450 MEF steps with column sums written straight from the question).

``Record.solution`` is the *correct* trace in style 0 (the gold rationale the hard-example buffer trains on);
``Record.meta`` holds ``family``, ``args`` and ``trigger`` so any teacher's trace can be rendered
(:func:`teacher_trace`). Operands are kept to facts a 0.5M-parameter model learns in a few hundred steps (a
two-digit number plus a digit, products of 2..5, units of 7 and 12, half of them weeks); names make the question
strings distinct.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Sequence, Tuple

from ..types import Record

FAMILIES = ("add", "prec", "units")
WEAK_FAMILY = ("add", "prec", "units")  # teacher style s errs on WEAK_FAMILY[s % 3]
NAMES = ["Ann", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lu", "Max", "Ned", "Olu", "Pia",
         "Quin", "Rae", "Sol", "Tia"]
UNITS = [("weeks", "days", 7), ("feet", "inches", 12), ("years", "months", 12), ("dozens", "eggs", 12)]
CARRY_RATE = 0.7   # fraction of `add` problems with a carry out of the ones column (the trigger)
SUM_FIRST_RATE = 0.7  # fraction of `prec` problems written a+b*c (the trigger; else b*c+a)


def _draw(rng: random.Random, family: str) -> Tuple[list, bool]:
    """(args, trigger) of one problem of ``family``."""
    if family == "add":
        carry = rng.random() < CARRY_RATE
        while True:
            a, b = rng.randint(10, 89), rng.randint(2, 9)
            if (a % 10 + b >= 10) == carry:
                return [a, b], carry
    if family == "prec":
        sum_first = rng.random() < SUM_FIRST_RATE
        return [rng.randint(1, 6), rng.randint(2, 5), rng.randint(2, 5), int(sum_first)], sum_first
    if family == "units":  # half the problems in weeks (factor 7), half in one of the factor-12 units
        u = 0 if rng.random() < 0.5 else rng.randrange(1, len(UNITS))
        return [rng.randint(2, 5), rng.randint(1, 6), u], True
    raise ValueError(f"synthetic v2: unknown family {family!r}; choose from {', '.join(FAMILIES)}")


def question(name: str, family: str, args: Sequence[int]) -> str:
    if family == "add":
        return f"{name} adds {args[0]} and {args[1]}."
    if family == "prec":
        a, b, c, sum_first = args
        return f"{name} computes {a}+{b}*{c}." if sum_first else f"{name} computes {b}*{c}+{a}."
    big, small, _ = UNITS[args[2]]
    return f"{name} has {args[0]} {big} {args[1]} {small}. In {small}?"


def _steps(family: str, args: Sequence[int], wrong: bool) -> Tuple[str, List[str], int]:
    """(restated problem, the equations a teacher writes, its final answer); ``wrong``: the teacher's systematic
    mistake. Every trace first restates the problem as an expression (copied in question order), then works on
    it: the long-range copying a 2-layer byte model finds hard happens once, in order."""
    if family == "add":  # a two-digit + b one-digit, column by column; the tens step always names its carry
        a, b = args
        ones = a % 10 + b
        carry = 0 if wrong else ones // 10
        return f"{a}+{b}", [f"{a % 10}+{b}={ones}", f"{a // 10}+{carry}={a // 10 + carry}"], \
            (a // 10 + carry) * 10 + ones % 10
    if family == "prec":
        a, b, c, sum_first = args
        if not sum_first:
            return f"{b}*{c}+{a}", [f"{b}*{c}={b * c}", f"{b * c}+{a}={a + b * c}"], a + b * c
        if wrong:  # left to right: (a+b)*c
            return f"{a}+{b}*{c}", [f"{a}+{b}={a + b}", f"{a + b}*{c}={(a + b) * c}"], (a + b) * c
        return f"{a}+{b}*{c}", [f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}"], a + b * c
    k, r, u = args
    if wrong:  # the unit dropped: the two numbers are added
        return f"{k}+{r}", [f"{k}+{r}={k + r}"], k + r
    f = UNITS[u][2]
    return f"{k}*{f}+{r}", [f"{k}*{f}={k * f}", f"{k * f}+{r}={k * f + r}"], k * f + r


def render(problem: str, steps: Sequence[str], answer: int, style: int) -> str:
    """One trace in teacher ``style`` (see module docstring)."""
    style %= 3
    if style == 0:
        body = f"{problem}: " + " ".join(f"{s}." for s in steps)
    elif style == 1:
        body = f"{problem}. " + " ".join(f"{i + 1}) {s}." for i, s in enumerate(steps))
    else:
        body = f"{problem}; " + " ".join(f"{'abcdefgh'[i]}={s};" for i, s in enumerate(steps))
    return f"{body} #### {answer}"


def correct_answer(record: Record) -> int:
    return _steps(record.meta["family"], record.meta["args"], False)[2]


def teacher_trace(record: Record, style: int, teacher_error: float, seed: int = 0) -> Tuple[str, bool]:
    """(trace, is_wrong) of teacher ``style`` for a v2 record. The teacher errs with probability ``teacher_error``
    on trigger cases of its weak family, by a draw seeded with (seed, record id, style)."""
    m = record.meta
    wrong = (m["family"] == WEAK_FAMILY[style % 3] and m["trigger"]
             and random.Random(f"{seed}:{record.id}:{style}").random() < teacher_error)
    return render(*_steps(m["family"], m["args"], wrong), style), wrong


def generate(split: str, num: int, seed: int, families: Sequence[str] = FAMILIES,
             exclude: set = frozenset()) -> List[Record]:
    """``num`` distinct problems for ``split``, families in turn (record i has family ``families[i % F]``)."""
    if not families:
        raise ValueError("config key `data.synthetic.families`: needs at least one family")
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"config key `data.synthetic.families`: unknown family {f!r}; choose from "
                             f"{', '.join(FAMILIES)}")
    rng = random.Random(f"v2:{seed}:{split}")

    def draw(i: int):
        family = families[i % len(families)]
        args, trigger = _draw(rng, family)
        q = question(rng.choice(NAMES), family, args)

        def build() -> Record:
            problem, steps, answer = _steps(family, args, False)
            return Record(id=f"syn-{split}-{i}", question=q, answer=str(answer),
                          solution=render(problem, steps, answer, 0),
                          meta={"family": family, "args": list(args), "trigger": bool(trigger), "version": 2})
        return q, build

    return draw_distinct(num, exclude, draw, f"synthetic task v2: cannot draw {num} distinct {split} problems; "
                                             f"lower data.synthetic.num_train / num_test / num_riel")


def draw_distinct(num: int, exclude: set, draw: Callable[[int], Tuple[str, Callable[[], Record]]],
                  fail: str) -> List[Record]:
    """``num`` records with distinct questions (none in ``exclude``): ``draw(i)`` proposes (question, build) for
    record i until the question is new, then ``build()`` makes the record. Raises ``ValueError(fail)`` after
    ``100 * num + 1000`` proposals (the problem space is too small for the splits asked for)."""
    out: List[Record] = []
    seen = set(exclude)
    tries = 0
    while len(out) < num:
        tries += 1
        if tries > 100 * num + 1000:
            raise ValueError(fail)
        q, build = draw(len(out))
        if q in seen:
            continue
        seen.add(q)
        out.append(build())
    return out


def family_counts(records: Sequence[Record]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for r in records:
        out[r.meta.get("family", "?")] = out.get(r.meta.get("family", "?"), 0) + 1
    return out
