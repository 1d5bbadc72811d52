"""MEF rows from a trace file: traces whose final answer fails the verifier are dropped unless told otherwise."""
import json

from megatron_meml.config import load_config
from megatron_meml.stages.mef import mef_rows


def test_unverified_traces_are_dropped_and_counted(tmp_path):
    path = tmp_path / "mef.jsonl"
    rows = [{"id": "a", "question": "1+1?", "expert": 0, "response": "1+1=2. #### 2", "answer": "2"},
            {"id": "a", "question": "1+1?", "expert": 1, "response": "Start 1. Add 1: 3. #### 3", "answer": "2"},
            {"id": "b", "question": "2*3?", "expert": 1, "response": "Start 2. Times 3: 6. #### 6", "answer": "6"},
            {"id": "b", "question": "2*3?", "expert": 5, "response": "#### 6", "answer": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    cfg = load_config(None, [f"mef.traces={path}", "data.synthetic.num_train=5", "data.synthetic.num_test=5"])
    kept = mef_rows(cfg, said.append)
    assert sorted((r.id, r.expert) for r in kept) == [("a", 0), ("b", 1)]  # wrong answer and unknown expert out
    assert said == ["MEF: dropped 1 of 3 traces whose final answer fails the synthetic verifier (mef.drop_unverified)"]
    cfg.mef.drop_unverified = False
    assert len(mef_rows(cfg, said.append)) == 3
