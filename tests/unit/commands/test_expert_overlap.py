"""Error overlap (the paper's Table 1) against hand-computed numbers, and the thin CLI over it."""
import json

import pytest

from megatron_meml import expert_overlap
from megatron_meml.data import load_synthetic
from megatron_meml.eval.overlap import error_overlap, format_table


# wrong sets: A {q1,q2,q3}, B {q2,q3,q4}, C {q3,q5}; q7 is only in A and is not compared.
IDS = ["q1", "q2", "q3", "q4", "q5", "q6"]
WRONG = {"A": {"q1", "q2", "q3"}, "B": {"q2", "q3", "q4"}, "C": {"q3", "q5"}}


def correctness():
    out = {e: {q: q not in wrong for q in IDS} for e, wrong in WRONG.items()}
    out["A"]["q7"] = False
    return out


def test_hand_computed_table():
    t = error_overlap(correctness())
    assert t.n == 6 and t.dropped == {"A": 1, "B": 0, "C": 0}
    assert t.errors == {"A": 3, "B": 3, "C": 2}
    assert t.error_rate == pytest.approx({"A": 0.5, "B": 0.5, "C": 1 / 3})
    assert t.pair_errors == {("A", "B"): 2, ("A", "C"): 1, ("B", "C"): 1}
    assert t.pair_rate == pytest.approx({("A", "B"): 1 / 3, ("A", "C"): 1 / 6, ("B", "C"): 1 / 6})
    assert t.pair_jaccard == pytest.approx({("A", "B"): 0.5, ("A", "C"): 0.25, ("B", "C"): 0.25})
    assert t.all_errors == 1 and t.all_rate == pytest.approx(1 / 6)
    assert t.independent_pair(("A", "B")) == pytest.approx(0.25) and t.independent_all == pytest.approx(1 / 12)
    text = format_table(t)
    assert "questions compared: 6" in text and "A & B" in text and "33.33%" in text and "16.67%" in text
    assert "if independent" in text and "25.00%" in text and "8.33%" in text


def test_edge_cases():
    t = error_overlap({"A": {"q": True}, "B": {"q": True}})
    assert t.all_errors == 0 and t.pair_jaccard[("A", "B")] == 0.0
    assert error_overlap({"A": {}, "B": {"x": True}}).n == 0
    with pytest.raises(ValueError):
        error_overlap({})


def test_cli_correct_and_response_rows(tmp_path, capsys):
    """A and C give `correct`; B gives responses that the CLI scores with the synthetic verifier (the CLI loads
    the synthetic test split with its default settings, so the ids come from that split)."""
    records = load_synthetic("test")[:6]
    wrong = {"A": {0, 1, 2}, "B": {1, 2, 3}, "C": {2, 4}}

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(tmp_path / name)

    a = write("a.jsonl", [{"id": r.id, "correct": i not in wrong["A"]} for i, r in enumerate(records)])
    b = write("b.jsonl", [{"id": r.id, "response": f"#### {int(r.answer) + (i in wrong['B'])}"}
                          for i, r in enumerate(records)])
    c = write("c.jsonl", [{"id": r.id, "correct": int(i not in wrong["C"])} for i, r in enumerate(records)])
    assert expert_overlap.main([f"A={a}", f"B={b}", f"C={c}", "--data", "synthetic", "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 6 and [e["errors"] for e in out["experts"]] == [3, 3, 2]
    assert [p["both_wrong"] for p in out["pairs"]] == [2, 1, 1] and out["all_experts"]["all_wrong"] == 1


def test_cli_groups_rows_by_expert(tmp_path, capsys):
    rows = [{"id": q, "expert": e, "correct": q not in WRONG["ABC"[e]]} for e in range(3) for q in IDS]
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert expert_overlap.main([str(tmp_path / "preds.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "expert 0 & expert 1" in text and "all experts" in text
    assert text.splitlines()[3].split()[-2:] == ["3", "50.00%"]
