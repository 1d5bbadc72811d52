"""The v2 synthetic testbed: families, error-prone teachers (wrong only on trigger cases of their weak family, at
the configured rate), gold solutions that verify, deterministic disjoint splits, and v1 still reachable."""
from collections import Counter

import pytest

from megatron_meml.data import load_synthetic, synthetic_mef_rows
from megatron_meml.data.synthetic_families import FAMILIES, WEAK_FAMILY, correct_answer, teacher_trace
from megatron_meml.rewards import verify

TRAIN = load_synthetic("train", num_train=600, num_test=60, seed=5)


def test_splits_are_deterministic_disjoint_and_balanced():
    test = load_synthetic("test", num_train=600, num_test=60, seed=5)
    assert load_synthetic("train", num_train=600, num_test=60, seed=5) == TRAIN
    assert not {r.question for r in test} & {r.question for r in TRAIN}
    assert Counter(r.meta["family"] for r in TRAIN) == {f: 200 for f in FAMILIES}
    assert all(verify("synthetic", r.solution, r) == 1.0 and int(r.answer) == correct_answer(r) for r in TRAIN)
    assert load_synthetic("train", num_train=600, seed=6) != TRAIN


def test_teachers_err_only_on_trigger_cases_of_their_weak_family():
    rows = synthetic_mef_rows(TRAIN, num_experts=3, teacher_error=0.75, seed=5)
    by_id = {r.id: r for r in TRAIN}
    wrong = Counter()
    triggers = Counter(r.meta["family"] for r in TRAIN if r.meta["trigger"])
    for row in rows:
        rec = by_id[row.id]
        ok = verify("synthetic", row.response, rec) == 1.0
        if not ok:
            assert rec.meta["family"] == WEAK_FAMILY[row.expert] and rec.meta["trigger"], (row, rec)
            wrong[row.expert] += 1
    for e, fam in enumerate(WEAK_FAMILY):
        assert 0.6 <= wrong[e] / triggers[fam] <= 0.9, (e, wrong[e], triggers[fam])  # ~teacher_error
    assert synthetic_mef_rows(TRAIN, 3, 0.75, seed=5) == rows  # seeded
    assert all(verify("synthetic", r.response, by_id[r.id]) == 1.0 for r in synthetic_mef_rows(TRAIN, 3, 0.0))


@pytest.mark.parametrize("family,question,right,wrong", [
    ("add", "adds 47 and 8.", "47+8: 7+8=15. 4+1=5. #### 55", "47+8: 7+8=15. 4+0=4. #### 45"),
    ("prec", "computes 3+4*2.", "3+4*2. 1) 4*2=8. 2) 3+8=11. #### 11", "3+4*2. 1) 3+4=7. 2) 7*2=14. #### 14"),
    ("units", "has 3 weeks 4 days. In days?", "3*7+4; a=3*7=21; b=21+4=25; #### 25", "3+4; a=3+4=7; #### 7"),
])
def test_each_teacher_makes_its_realistic_mistake(family, question, right, wrong):
    """mis-carry (style 0 on add), left-to-right precedence (style 1 on prec), dropped unit (style 2 on units)."""
    rec = next(r for r in load_synthetic("train", num_train=3000, num_test=10, seed=1)
               if r.meta["family"] == family and r.question.endswith(question))
    style = WEAK_FAMILY.index(family)
    assert teacher_trace(rec, style, 0.0) == (right, False)
    assert teacher_trace(rec, style, 1.0) == (wrong, True)
    assert all(teacher_trace(rec, s, 1.0)[1] is False for s in range(3) if s != style)


def test_version_1_and_bad_arguments():
    v1 = load_synthetic("train", num_train=10, seed=3, version=1, max_steps=1)
    assert all("steps" in r.meta for r in v1) and synthetic_mef_rows(v1, 2)[0].response == v1[0].solution
    with pytest.raises(ValueError, match="data.synthetic.version"):
        load_synthetic("train", num_train=10, version=3)
    with pytest.raises(ValueError, match="data.synthetic.families"):
        load_synthetic("train", num_train=10, families=["add", "trig"])
    with pytest.raises(TypeError):
        load_synthetic("train", num_train=10, max_digits=3)


def test_riel_split_is_disjoint_from_train_and_test_and_leaves_them_unchanged():
    """riel.train_split=riel: RIEL's questions are ones MEF never trained on and eval never asks."""
    kw = dict(num_train=60, num_test=30, seed=5)
    train, test = load_synthetic("train", **kw), load_synthetic("test", **kw)
    riel = load_synthetic("riel", num_riel=40, **kw)
    assert len(riel) == 40 and Counter(r.meta["family"] for r in riel) == Counter({f: 40 // 3 + (i < 40 % 3)
                                                                                     for i, f in enumerate(FAMILIES)})
    assert not {r.question for r in riel} & ({r.question for r in train} | {r.question for r in test})
    assert len({r.id for r in riel}) == 40 and all(r.id.startswith("syn-riel-") for r in riel)
    # asking for the riel split does not move train or test (the MEF data and the held-out set stay the same)
    assert [r.question for r in load_synthetic("train", num_riel=40, **kw)] == [r.question for r in train]
    assert [r.question for r in load_synthetic("test", num_riel=40, **kw)] == [r.question for r in test]
    with pytest.raises(ValueError, match="data.synthetic.num_riel"):
        load_synthetic("riel", **kw)


def test_riel_train_split_config_reaches_the_riel_pool():
    from megatron_meml.config import ConfigError, load_config
    from megatron_meml.data.preflight import check_run_inputs
    from megatron_meml.stages.common import load_records, riel_records

    cfg = load_config(None, ["data.name=synthetic", "data.synthetic.num_train=30", "data.synthetic.num_test=9",
                             "data.synthetic.num_riel=12", "riel.train_split=riel"])
    pool = riel_records(cfg)
    assert len(pool) == 12 and not {r.id for r in pool} & {r.id for r in load_records(cfg, "train")}
    assert len(riel_records(load_config(None, ["data.name=synthetic", "data.synthetic.num_train=30"]))) == 30
    with pytest.raises(ConfigError, match="data.synthetic.num_riel"):
        load_config(None, ["data.synthetic.num_riel=-1"])
    # a real dataset: a RIEL split it does not have is a one-line error naming riel.train_split
    from tests.conftest import DATA

    cfg = load_config(None, ["data.name=gsm8k", f"data.path={DATA}", "riel.train_split=rl", "mef.enabled=false"])
    with pytest.raises(ConfigError, match=r"config key `riel.train_split`: gsm8k: unknown split 'rl'"):
        check_run_inputs(cfg)
