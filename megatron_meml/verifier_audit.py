#!/usr/bin/env python
"""Audit the verifiers on what models write: every gold answer of the evaluation splits rewritten in many answer
phrasings, scored correct (false negative = a correct phrasing scored 0) and perturbed (false positive = a wrong
letter / wrong number / negated yes-no scored 1).

    python -m megatron_meml.verifier_audit --data ../shared/data                 # full splits: gsm8k test, mathqa test,
                                                                          #   strategyqa dev; exit 1 on any FN/FP
    python -m megatron_meml.verifier_audit --data data --every 10 --show 3        # every 10th record, 3 failures each

The corpus (:data:`PHRASINGS`): per dataset >= 15 response templates, most of them "reasoning body, then an answer
sentence" as a model writes it. The body is the record's gold rationale without its final answer line (GSM8K:
the worked solution without ``#### x``; MathQA: the Rationale, which often ends in its own "answer c"; StrategyQA:
the facts and decomposition). Each template is filled once with the gold answer (must score 1) and once with a
perturbed one (must score 0): GSM8K gold + 1 (written the same way); MathQA another option's letter, or for value
phrasings another option's value that differs from the gold value (records where no option's value differs are
counted as not applicable); StrategyQA the other polarity. Self-correction templates put the other answer first
and the scored one last, so they test "the last explicit statement wins" (rewards/answers.py).

Output: one row per phrasing, one column per dataset: ``FN a/n  FP b/m`` (n, m = applicable records), totals last.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron_meml.data import load_dataset
from megatron_meml.data.dataset import default_data_root
from megatron_meml.rewards import verify
from megatron_meml.rewards.answers import plain_number
from megatron_meml.types import Record

SPLITS = OrderedDict([("gsm8k", "test"), ("mathqa", "test"), ("strategyqa", "dev")])
Template = Callable[[Record, str, str], Optional[str]]  # (record, answer, the other answer) -> response or None


# ------------------------------------------------------------------------------------------------ bodies

def body(record: Record, dataset: str) -> str:
    """The record's gold rationale without the final answer line our loaders append."""
    lines = record.solution.rstrip().split("\n")
    if dataset == "gsm8k":
        return "\n".join(ln for ln in lines if "####" not in ln).strip()
    return "\n".join(lines[:-1]).strip()  # mathqa: "The answer is (x)"; strategyqa: "The answer is yes."


# ------------------------------------------------------------------------------------------------ GSM8K

def _commas(n: str) -> str:
    return f"{int(n):,}" if re.fullmatch(r"-?\d+", n) else n


def _gsm(fmt: str, with_body: bool = True) -> Template:
    def make(r: Record, ans: str, other: str) -> str:
        text = fmt.format(a=ans, ac=_commas(ans), o=other)
        return f"{body(r, 'gsm8k')}\n{text}" if with_body else text
    return make


GSM8K: Dict[str, Template] = OrderedDict([
    ("the answer is N.", _gsm("The answer is {a}.")),
    ("#### N", _gsm("#### {a}")),
    ("**Answer:** N", _gsm("\n**Answer:** {a}")),
    ("Answer: $N.", _gsm("Answer: ${a}.")),
    ("The final answer is \\boxed{N}.", _gsm("The final answer is $\\boxed{{{a}}}$.")),
    ("\\[ \\boxed{N} \\] display", _gsm("\\[\n\\boxed{{{a}}}\n\\]")),
    ("**Final Answer** heading, N below", _gsm("\n**Final Answer**\n\n{a}")),
    ("N with thousands commas", _gsm("The answer is: {ac}")),
    ("N dollars (units)", _gsm("So the answer is {a} dollars.")),
    ("Final answer: N.00", _gsm("Final answer: {a}.00")),
    ("N is the final answer (postfix)", _gsm("Therefore, {a} is the final answer.")),
    ("sentence ending in **N** (no cue)", _gsm("So, in total, that comes to **{a}**.")),
    ("answer = N", _gsm("answer = {a}")),
    ("The answer is N! (trailing punctuation)", _gsm("The answer is {a}!")),
    ("self-correction: other first, N last", _gsm("The answer is {o}.\nWait, let me recheck the steps above. "
                                                  "The answer is {a}.")),
    ("answer only: N", _gsm("{a}", with_body=False)),
    ("answer, because ... (clause)", _gsm("The answer is {a}, because every step above checks out.")),
    ("\\boxed{N \\text{ dollars}}", _gsm("So she earns $\\boxed{{{a} \\text{{ dollars}}}}$.")),
    ("The answer is N (parenthetical remark).", _gsm("The answer is {a} (see the last step).")),
])


# ------------------------------------------------------------------------------------------------ MathQA

_UNIT = re.compile(r"^\s*(?:rs\s*\.?|\$)?\s*(-?[\d.,/ ]*\d)\s*([a-z%][a-z .%]*)?$", re.I)


def _number_and_unit(value: str) -> Tuple[Optional[str], str]:
    """``"rs . 560"`` -> ("560", ""), ``"15 / 8 ohms"`` -> ("15 / 8", "ohms"), ``"data inadequate"`` -> (None, "")."""
    if plain_number(value) is None:
        return None, ""
    m = _UNIT.match(value)
    if not m:
        return None, ""
    return m.group(1).strip(), (m.group(2) or "").strip()


def _mqa_letter(fmt: str, with_body: bool = True) -> Template:
    def make(r: Record, letter: str, other: str) -> str:
        text = fmt.format(l=letter, L=letter.upper(), v=r.meta["options"][letter], o=other, O=other.upper())
        return f"{body(r, 'mathqa')}\n{text}" if with_body else text
    return make


def _mqa_value(fmt: str, number: bool = False) -> Template:
    """A phrasing of an option's value; ``letter`` / ``other`` name the options whose values are used."""
    def make(r: Record, letter: str, other: str) -> Optional[str]:
        v = r.meta["options"][letter]
        if number:
            num, unit = _number_and_unit(v)
            if num is None:
                return None
            v = f"{num} {unit or '%'}"
        return f"{body(r, 'mathqa')}\n{fmt.format(v=v, l=letter)}"
    make.by_value = True
    return make


MATHQA: Dict[str, Template] = OrderedDict([
    ("The answer is (c).", _mqa_letter("The answer is ({l}).")),
    ("the correct option is c", _mqa_letter("the correct option is {l}")),
    ("so the answer is choice (b)", _mqa_letter("so the answer is choice ({l})")),
    ("I choose option d.", _mqa_letter("I choose option {l}.")),
    ("**Answer:** C", _mqa_letter("\n**Answer:** {L}")),
    ("Answer: c) <value>", _mqa_letter("Answer: {l}) {v}")),
    ("\\boxed{C}", _mqa_letter("\\boxed{{{L}}}")),
    ("Option C is correct. (postfix)", _mqa_letter("Option {L} is correct.")),
    ("(c) is the correct answer (postfix)", _mqa_letter("({l}) is the correct answer.")),
    ("last line: (c) <value>", _mqa_letter("({l}) {v}")),
    ("last line: **C**", _mqa_letter("**{L}**")),
    ("Correct answer: **(C)**", _mqa_letter("Correct answer: **({L})**")),
    ("I'll go with (b).", _mqa_letter("I'll go with ({l}).")),
    ("self-correction: (other) first, (c) last", _mqa_letter("The answer is ({o}).\nWait, checking again: the "
                                                             "answer is ({l}).")),
    ("value as written: the answer is <value>.", _mqa_value("The answer is {v}.")),
    ("value, number + unit: the answer is 27.675 %", _mqa_value("the answer is {v}", number=True)),
    ("value then letter: <value>, which is option c", _mqa_value("The answer is {v}, which is option {l}.")),
    ("answer only: C", _mqa_letter("{L}", with_body=False)),
    ("Hence, option (c).", _mqa_letter("Hence, option ({l}).")),
    ("value (option c): the answer is <value> (option c).", _mqa_value("The answer is {v} (option {l}).")),
    ("The answer is C, <value>.", _mqa_letter("The answer is {L}, {v}.")),
])


def _other_letter(r: Record) -> str:
    """The next option letter after the gold one (cyclic): a wrong letter."""
    letters = sorted(r.meta["options"])
    return letters[(letters.index(r.answer) + 1) % len(letters)]


def _other_value_letter(r: Record, numeric: bool) -> Optional[str]:
    """An option whose value differs from the gold option's (numerically when both are numbers, else as text)."""
    opts = r.meta["options"]
    gold = opts[r.answer]
    for k in sorted(opts, key=lambda k: (k <= r.answer, k)):
        v = opts[k]
        if k == r.answer:
            continue
        gv, ov = plain_number(gold), plain_number(v)
        if numeric and (_number_and_unit(v)[0] is None or gv is None):
            continue
        if (gv is not None and ov is not None and gv != ov) or \
                ((gv is None or ov is None) and re.sub(r"\s+", "", v.lower()) != re.sub(r"\s+", "", gold.lower())):
            return k
    return None


# ------------------------------------------------------------------------------------------------ StrategyQA

def _sqa(fmt: str, with_body: bool = True, first: bool = False) -> Template:
    def make(r: Record, ans: str, other: str) -> str:
        words = {"p": ans, "P": ans.capitalize(), "o": other, "T": "True" if ans == "yes" else "False",
                 "t": "true" if ans == "yes" else "false", "B": " ".join(r.meta.get("facts", [])) or "of the facts"}
        text = fmt.format(**words)
        if not with_body:
            return text
        return f"{text}\n\n{body(r, 'strategyqa')}" if first else f"{body(r, 'strategyqa')}\n{text}"
    return make


STRATEGYQA: Dict[str, Template] = OrderedDict([
    ("Yes.", _sqa("{P}.")),
    ("the answer is: no", _sqa("the answer is: {p}")),
    ("**True**", _sqa("**{T}**")),
    ("The answer is yes.", _sqa("The answer is {p}.")),
    ("So the final answer is no.", _sqa("So the final answer is {p}.")),
    ("Answer: Yes", _sqa("Answer: {P}")),
    ("\\boxed{yes}", _sqa("\\boxed{{{p}}}")),
    ("Yes, because <facts> (one line)", _sqa("{P}, because {B}", with_body=False)),
    ("**Answer: No**", _sqa("**Answer: {P}**")),
    ("Therefore, the answer is **yes**.", _sqa("Therefore, the answer is **{p}**.")),
    ("So the statement is true. (no cue)", _sqa("So the statement in the question is {t}.")),
    ("#### yes", _sqa("#### {p}")),
    ("self-correction: other first, answer last", _sqa("The answer is {o}. Wait, on reflection, the answer is {p}.")),
    ("answer first, then the facts", _sqa("{P}.", first=True)),
    ("answer only: Yes", _sqa("{P}", with_body=False)),
    ("Yes — because <facts> (dash)", _sqa("{P} — because {B}", with_body=False)),
    ("I would say no. (no cue)", _sqa("Putting these together, I would say {p}.")),
])

PHRASINGS: Dict[str, Dict[str, Template]] = {"gsm8k": GSM8K, "mathqa": MATHQA, "strategyqa": STRATEGYQA}


# ------------------------------------------------------------------------------------------------ the audit

def cases(dataset: str, record: Record, name: str) -> Tuple[Optional[str], Optional[str]]:
    """(correct response, perturbed response) of one phrasing for one record; None where not applicable."""
    make = PHRASINGS[dataset][name]
    if dataset == "gsm8k":
        wrong = str(int(record.answer) + 1) if re.fullmatch(r"-?\d+", record.answer) else record.answer + "1"
        return make(record, record.answer, wrong), make(record, wrong, record.answer)
    if dataset == "strategyqa":
        other = {"yes": "no", "no": "yes"}[record.answer]
        return make(record, record.answer, other), make(record, other, record.answer)
    if getattr(make, "by_value", False):
        numeric = "number" in name
        good = make(record, record.answer, record.answer)
        bad_letter = _other_value_letter(record, numeric)
        return good, (make(record, bad_letter, record.answer) if bad_letter and good is not None else None)
    other = _other_letter(record)
    return make(record, record.answer, other), make(record, other, record.answer)


def audit(records_by_dataset: Dict[str, Sequence[Record]], show: int = 0) -> Dict[str, Dict[str, dict]]:
    """{dataset: {phrasing: {"fn", "n", "fp", "m", "examples"}}}."""
    out: Dict[str, Dict[str, dict]] = {}
    for dataset, records in records_by_dataset.items():
        table = out.setdefault(dataset, OrderedDict())
        for name in PHRASINGS[dataset]:
            row = table.setdefault(name, {"fn": 0, "n": 0, "fp": 0, "m": 0, "examples": []})
            for r in records:
                good, bad = cases(dataset, r, name)
                if good is not None:
                    row["n"] += 1
                    if verify(dataset, good, r) != 1.0:
                        row["fn"] += 1
                        if len(row["examples"]) < show:
                            row["examples"].append(("FN", r.id, good[-160:]))
                if bad is not None:
                    row["m"] += 1
                    if verify(dataset, bad, r) != 0.0:
                        row["fp"] += 1
                        if len(row["examples"]) < show:
                            row["examples"].append(("FP", r.id, bad[-160:]))
    return out


def format_table(result: Dict[str, Dict[str, dict]]) -> str:
    """Markdown: one row per phrasing (grouped by dataset, since each dataset has its own phrasings)."""
    lines = ["| dataset | phrasing | false negatives | false positives |", "|---|---|---|---|"]
    for dataset, table in result.items():
        for name, row in table.items():
            lines.append(f"| {dataset} | {name} | {row['fn']}/{row['n']} | {row['fp']}/{row['m']} |")
    lines.append("")
    lines.append("| dataset | records | phrasings | correct responses | false negatives | perturbed responses | "
                 "false positives |")
    lines.append("|---|---|---|---|---|---|---|")
    for dataset, table in result.items():
        n = sum(r["n"] for r in table.values())
        m = sum(r["m"] for r in table.values())
        fn = sum(r["fn"] for r in table.values())
        fp = sum(r["fp"] for r in table.values())
        records = max(r["n"] for r in table.values())
        lines.append(f"| {dataset} | {records} | {len(table)} | {n} | {fn} | {m} | {fp} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data root (default: $MEML_DATA or ./data)")
    p.add_argument("--datasets", nargs="*", default=list(SPLITS), choices=list(SPLITS))
    p.add_argument("--every", type=int, default=1, help="audit every k-th record (default 1: the full split)")
    p.add_argument("--show", type=int, default=0, help="print up to this many failing responses per phrasing")
    p.add_argument("--json", default=None, help="also write the counts as JSON here")
    args = p.parse_args(argv)
    if args.every < 1:
        print(f"error: --every must be >= 1, got {args.every}", file=sys.stderr)
        return 2
    root = args.data or default_data_root()
    try:
        records = {d: load_dataset(d, root, SPLITS[d])[::args.every] for d in args.datasets}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    result = audit(records, show=args.show)
    print(format_table(result))
    calls = sum(r["n"] + r["m"] for t in result.values() for r in t.values())
    print(f"\n{calls} verifier calls in {time.time() - t0:.1f} s "
          f"({', '.join(f'{d} {SPLITS[d]} {len(v)}' for d, v in records.items())} records)")
    bad = [(d, name, row) for d, t in result.items() for name, row in t.items() if row["fn"] or row["fp"]]
    for d, name, row in bad:
        for kind, rid, text in row["examples"]:
            print(f"{kind} {d} [{name}] {rid}: ...{text!r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({d: {n: {k: v for k, v in r.items() if k != "examples"} for n, r in t.items()}
                       for d, t in result.items()}, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
