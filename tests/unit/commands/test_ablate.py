"""megatron_meml.ablate's bookkeeping on fabricated run directories (no training): reward gain, mean ± std per row,
the paper's numbers beside the matching rows, the λ1 / k3 / normaliser rows of the grid."""
import json
import os

from megatron_meml import ablate as tool


def fake_run(path, mef, riel, rewards):
    os.makedirs(path)
    sel = {"vote": riel + 0.1, "logprob": riel}
    json.dump({"after_mef": {"mean_accuracy": mef, "majority_vote": mef},
               "after_riel": {"mean_accuracy": riel, "majority_vote": riel + 0.05, "selection": sel,
                              "best_expert": {"expert": 1, "accuracy": riel + 0.02}}}, open(path / "eval.json", "w"))
    with open(path / "metrics.jsonl", "w") as f:
        for i, r in enumerate(rewards):
            f.write(json.dumps({"stage": "riel", "step": i, "reward/mean": r}) + "\n")


def test_rows_summary_and_table(tmp_path):
    keys = [k for _, k, _ in tool.rows_for([0.3, 3.0], True, True)]
    assert keys == ["moe", "hsft", "iml", "all", "lambda0.3", "lambda3", "k3", "klown"]
    fake_run(tmp_path / "a", 0.6, 0.8, [0.5] * 10 + [0.7] * 10)
    fake_run(tmp_path / "b", 0.6, 0.9, [0.5] * 10 + [0.9] * 10)
    s = tool.summarise(str(tmp_path / "a"))
    assert abs(s["gain"] - 0.2) < 1e-12 and abs(s["delta"] - 0.2) < 1e-12 and abs(s["select"] - 0.9) < 1e-12
    text = tool.table([("all (MEML-GRPO)", "all", [s, tool.summarise(str(tmp_path / "b"))])])
    row = text.splitlines()[-1]
    assert row.startswith("| all (MEML-GRPO) | 77.3 | 85.0 ± 7.1 | 25.0 ± 7.1 |") and row.endswith("| 2 |")
    assert "+0.300 ± 0.141" in row


def test_complementarity_rows_and_overlap_columns(tmp_path):
    assert [k for _, k, _ in tool.EXTRA] == ["gate", "cw", "gatecw", "ds"]
    assert "riel.kl_gate=wrong_right" in dict((k, o) for _, k, o in tool.EXTRA)["gate"]
    run = tmp_path / "seed1" / "gate"
    fake_run(run, 0.6, 0.8, [0.5] * 20)
    with open(run / "predictions_after_riel.jsonl", "w") as f:  # e0 wrong on a, b; e1 wrong on b
        for qid, ok in (("a", (False, True)), ("b", (False, False)), ("c", (True, True))):
            for e, c in enumerate(ok):
                f.write(json.dumps({"id": qid, "expert": e, "correct": c}) + "\n")
    s = tool.summarise(str(run))
    assert abs(s["both"] - 1 / 3) < 1e-12 and abs(s["jaccard"] - 0.5) < 1e-12
    assert s["oracle"] != s["oracle"]  # not in this eval.json: nan, shown as n/a
    row = tool.table([("gate", "gate", [s])]).splitlines()[-1]
    assert "| n/a | 33.3 ± 0.0 | 0.500 ± 0.000 | 1 |" in row
