"""Ensemble metrics on hand-made predictions: pairwise error overlap, pass@k against the binomial formula (Chen et
al. 2021), maj@k on small exact cases, and ``evaluate``'s ensemble / sampled fields on a scripted generator."""
import itertools
from math import comb

import pytest

from megatron_meml.eval.accuracy import answer_key, evaluate, write_eval
from megatron_meml.eval.ensemble import (ensemble_maj_at_k, ensemble_pass_at_k, flat_metrics, maj_at_k,
                                         pairwise_overlap, pass_at_k, sampled_scores)
from megatron_meml.types import Record, Rollout


def test_pairwise_overlap_hand_made():
    # rows = questions, columns = experts 0..2. Wrong sets: e0 {q1}, e1 {q0, q1}, e2 {q0}
    pq = [[1, 0, 0], [0, 0, 1], [1, 1, 1]]
    ov = pairwise_overlap(pq)
    # pairs (0,1): both {q1} 1/3, jaccard 1/2; (0,2): {} 0, 0/2; (1,2): {q0} 1/3, 1/2
    assert ov["both_wrong"] == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    assert ov["jaccard"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert pairwise_overlap([[1, 1], [1, 1]]) == {"both_wrong": 0.0, "jaccard": 0.0}  # no errors: 0, not nan
    assert pairwise_overlap([[0, 0]]) == {"both_wrong": 1.0, "jaccard": 1.0}
    assert pairwise_overlap([[1]]) == {"both_wrong": 0.0, "jaccard": 0.0}


def test_pass_at_k_matches_the_binomial_formula():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                want = 1.0 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0 and pass_at_k(8, 2, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    # ensemble: k of every expert, independent experts -> 1 - prod of the failure probabilities
    assert ensemble_pass_at_k(4, [1, 0, 2], 2) == pytest.approx(1 - (comb(3, 2) / 6) * 1 * (comb(2, 2) / 6))


def test_pass_at_k_is_the_mean_over_k_subsets():
    correct = [1, 0, 0, 1, 0]
    for k in range(1, 6):
        subsets = list(itertools.combinations(range(5), k))
        brute = sum(any(correct[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(5, sum(correct), k) == pytest.approx(brute)


def test_maj_at_k_exact_small_cases():
    keys, ok = ["4", "4", "5", None], [True, True, False, False]
    assert maj_at_k(keys, ok, 4) == 1.0  # 4 twice beats 5
    assert maj_at_k(keys, ok, 1) == pytest.approx(0.5)  # one sample: right when it is one of the two 4s
    # k = 2 over C(4,2) = 6 subsets: {4,4} right; {4,5}: tie -> first seen (4) right twice, 5 first never (sorted
    # subsets keep sample order); {4,None} right x2; {5,None} wrong -> 5/6
    assert maj_at_k(keys, ok, 2) == pytest.approx(5 / 6)
    # ensemble over 2 experts, k = 1: expert 0 says 4 (right) / 5, expert 1 says 5 / 5 -> votes over pairs
    ek, eo = [["4", "5"], ["5", "5"]], [[True, False], [False, False]]
    # draws (4,5) tie -> 4 first: right; (4,5): right; (5,5) wrong; (5,5) wrong -> 1/2
    assert ensemble_maj_at_k(ek, eo, 1) == pytest.approx(0.5)


RECORDS = [Record(id=f"q{i}", question=f"{i}", answer=str(i), solution="", meta={"family": "a" if i < 2 else "b"})
           for i in range(3)]
GREEDY = {("q0", 0): "0", ("q0", 1): "0", ("q1", 0): "9", ("q1", 1): "1", ("q2", 0): "9", ("q2", 1): "8"}


def sample_answer(qid, e, i):  # sample i of (q, e): expert 0 right on its first sample only, expert 1 never on q2
    q = int(qid[1:])
    return str(q) if (e == 0 and i == 1) or (e == 1 and q < 2 and i <= 3) else "7"


def fake_generate(requests):
    def answer(r):  # seed 0: the greedy request; seeds 1..n: the samples
        return GREEDY[(r.qid, r.expert)] if r.seed == 0 else sample_answer(r.qid, r.expert, r.seed)

    return [Rollout(r, [1], [-0.1], text=f"#### {answer(r)}") for r in requests]


def reward(text, record):
    return float(answer_key(text) == record.answer)


def test_evaluate_reports_overlap_and_sampled_metrics(tmp_path):
    res = evaluate(fake_generate, lambda r, e: [e], RECORDS, 2, reward, strategies=("vote",),
                   sample_generate=fake_generate, samples=4, pass_k=(1, 2, 4, 9))
    assert res["accuracy"] == [pytest.approx(1 / 3), pytest.approx(2 / 3)] and res["oracle"] == pytest.approx(2 / 3)
    # wrong: e0 {q1, q2}, e1 {q2}: both wrong 1/3, jaccard 1/2
    assert res["overlap"] == {"both_wrong": pytest.approx(1 / 3), "jaccard": pytest.approx(0.5)}
    s = res["sampled"]
    assert s["samples"] == 4 and sorted(s["pass@k"]) == ["1", "2", "4"]  # k = 9 > n is left out
    # expert 0: 1 of 4 right on every question; expert 1: 3 of 4 on q0, q1, 0 of 4 on q2
    assert s["pass@k"]["1"] == [pytest.approx(0.25), pytest.approx(0.5)]
    assert s["pass@k"]["2"][0] == pytest.approx(1 - comb(3, 2) / comb(4, 2))
    want = (2 * (1 - (comb(3, 2) / 6) * 0) + (1 - comb(3, 2) / 6)) / 3
    assert s["ensemble_pass@k"]["2"] == pytest.approx(want)
    assert s["maj@k"]["4"] == [0.0, pytest.approx(2 / 3)]  # expert 0's majority is the wrong 7
    assert res["by_family"]["b"]["sampled"]["pass@k"]["1"] == [pytest.approx(0.25), 0.0]
    m = flat_metrics(res)
    assert m["heldout/overlap/jaccard"] == pytest.approx(0.5)
    assert m["heldout/best_label_free"] == res["selection"]["vote"]
    assert m["heldout/pass@4/ensemble"] == pytest.approx(1.0)
    write_eval({"after_riel": res}, str(tmp_path))
    md = (tmp_path / "eval.md").read_text()
    assert "| after_riel | pass@2 (n=4) | 0.500 |" in md and "after_riel (3 questions), per family:" in md
    assert "| 0.333 | 0.500 |" in md  # both wrong, jaccard columns


def test_sampled_scores_skip_k_above_n():
    out = sampled_scores([[["1", "2"]]], [[[True, False]]], [1, 3])
    assert list(out["pass@k"]) == ["1"] and out["pass@k"]["1"] == [0.5]
