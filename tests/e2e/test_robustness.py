"""What a user sees when something is wrong:

* the bad-input table: each bad config value, data file, checkpoint or tool argument ends in ONE line on stderr
  that names the key or file, a non-zero exit code, no traceback, and a finished run directory next to it is left
  exactly as it was;
* a torn newest checkpoint: rerunning the finished command warns once, falls back to the previous checkpoint,
  resumes RIEL at the right step and keeps the finished MEF stage's numbers in summary.json;
* one rank of a 2-rank run is killed mid-RIEL: the survivor exits non-zero with one clear line within
  ``parallel.timeout_minutes`` (no hang), and the newest checkpoint is complete and loadable.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from megatron_meml.backend.ckpt import checkpoint as C
from megatron_meml.backend.runtime.parallel import free_port
from tests.conftest import ROOT

QUICKSTART = os.path.join(ROOT, "examples", "quickstart", "config.yaml")
TINY = ["logging.progress_bar=false", "logging.tensorboard=false", "model.num_layers=1", "model.hidden_size=32",
        "model.ffn_hidden_size=64", "data.global_batch_size=8", "data.micro_batch_size=8", "eval.enabled=false"]
RIEL = ["riel.questions_per_step=2", "riel.group_size=2", "riel.buffer_k=1", "rollout.max_new_tokens=8"]


def _train_cmd(run_dir, *extra):
    return [sys.executable, "-m", "megatron_meml.train", QUICKSTART, *TINY, f"logging.run_dir={run_dir}", *extra]


def _one_error_line(stderr):
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error"), stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def _files(d):
    """Bad files: a MEF trace file and a prediction file with a malformed line 2, an HF directory whose safetensors
    is truncated, a training checkpoint with a truncated shard."""
    with open(d / "preds.bad.jsonl", "w") as f:
        f.write('{"id": "a", "correct": true}\n{"id": "b", "correct": \n')
    with open(d / "bad.jsonl", "w") as f:
        f.write(json.dumps({"id": "a", "question": "1+1?", "expert": 0, "response": "2", "answer": "2"}) + "\n")
        f.write('{"id": "b", "question": \n')
    hf = d / "hf_trunc"
    hf.mkdir()
    json.dump({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 1,
               "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
               "vocab_size": 259, "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
               "tie_word_embeddings": True}, open(hf / "config.json", "w"))
    save_file({"model.embed_tokens.weight": torch.zeros(259, 32)}, str(hf / "model.safetensors"))
    os.truncate(hf / "model.safetensors", 5000)
    ck = d / "ckpt" / "step_00000001"
    ck.mkdir(parents=True)
    torch.save({"model": [{}]}, str(ck / "rank_00000.pt"))
    size = os.path.getsize(ck / "rank_00000.pt")
    json.dump({"format": C.FORMAT, "step": 1, "world_size": 1, "tp": 1, "pp": 1, "files": ["rank_00000.pt"],
               "file_info": {"rank_00000.pt": {"size": size + 100, "crc32": 0}}}, open(ck / "meta.json", "w"))


def _table(tmp, run_ok, run_new):
    """(name, kind, argv, what the one error line must name)."""
    trunc_hf = str(tmp / "hf_trunc")
    return [
        ("missing config file", "train", [str(tmp / "nope.yaml")], "nope.yaml"),
        ("unknown key", "train", run_ok + ["model.hiden_size=3"], "did you mean `model.hidden_size`"),
        ("section set to a scalar, then a key", "train", run_ok + ["riel=false", "riel.steps=1"],
         "`riel` is a section"),
        ("mef.max_steps=0", "train", run_ok + ["mef.max_steps=0"], "`mef.max_steps`"),
        ("riel.steps=-1", "train", run_ok + ["riel.steps=-1"], "`riel.steps`"),
        ("riel.questions_per_step=0", "train", run_ok + ["riel.questions_per_step=0"], "`riel.questions_per_step`"),
        ("eval.num_examples=-3", "train", run_ok + ["eval.num_examples=-3"], "`eval.num_examples`"),
        ("rollout.max_new_tokens=0", "train", run_ok + ["rollout.max_new_tokens=0"], "`rollout.max_new_tokens`"),
        ("checkpoint.keep_last=0", "train", run_ok + ["checkpoint.keep_last=0"], "`checkpoint.keep_last`"),
        ("data.global_batch_size=0", "train", run_ok + ["data.global_batch_size=0"], "`data.global_batch_size`"),
        ("parallel.timeout_minutes=0", "train", run_ok + ["parallel.timeout_minutes=0"], "`parallel.timeout_minutes`"),
        ("data.synthetic.num_train=0", "train", run_ok + ["data.synthetic.num_train=0"], "`data.synthetic.num_train`"),
        ("tokenizer larger than model.vocab_size", "train", run_ok + ["model.vocab_size=200"], "`model.vocab_size`"),
        ("model.init_from missing", "train", run_ok + [f"model.init_from={tmp}/nowhere"], "nowhere: not found"),
        ("truncated .safetensors", "train",
         run_ok + [f"model.hf_config={trunc_hf}/config.json", f"model.init_from_hf={trunc_hf}"],
         "hf_trunc/model.safetensors"),
        ("missing dataset file", "train", run_new + ["data.name=gsm8k", f"data.path={tmp}/nodata"], "nodata"),
        ("malformed trace line", "train", run_new + [f"mef.traces={tmp}/bad.jsonl"], "bad.jsonl:2"),
        ("missing trace file", "train", run_new + [f"mef.traces={tmp}/missing.jsonl"], "missing.jsonl"),
        ("plan_scaling: missing config", "plan_scaling", ["--config", str(tmp / "nope.yaml")], "nope.yaml"),
        ("expert_overlap: missing file", "expert_overlap", [str(tmp / "preds.jsonl")], "preds.jsonl"),
        ("expert_overlap: malformed line", "expert_overlap", [f"{tmp}/preds.bad.jsonl"], "preds.bad.jsonl:2"),
        ("expert_overlap: missing dataset", "expert_overlap",
         [f"{tmp}/bad.jsonl", "--data", "gsm8k", "--data-path", str(tmp / "nodata")], "nodata"),
        ("convert_hf export: missing checkpoint", "convert_hf",
         ["export", "--ckpt", str(tmp / "nowhere"), "--out", str(tmp / "o1")], "nowhere: not found"),
        ("convert_hf export: truncated training shard", "convert_hf",
         ["export", "--ckpt", f"{tmp}/ckpt/step_00000001", "--out", str(tmp / "o2")], "rank_00000.pt"),
        ("convert_hf export: checkpoint root without a complete one", "convert_hf",
         ["export", "--ckpt", f"{tmp}/ckpt", "--out", str(tmp / "o3")], "no complete checkpoint"),
        ("convert_hf import: truncated .safetensors", "convert_hf",
         ["import", "--hf-dir", trunc_hf, "--out", str(tmp / "o4")], "hf_trunc/model.safetensors"),
    ]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """One worker process runs: a good run (MEF + 2 RIEL steps, a checkpoint per step) -> snapshot of its run
    directory -> every bad input of the table -> snapshot -> the newest checkpoint's shard torn in half -> the
    good command again."""
    tmp = tmp_path_factory.mktemp("robust")
    _files(tmp)
    ok, new = tmp / "ok", tmp / "new"
    base = [QUICKSTART, *TINY, "mef.max_steps=1", "riel.steps=2", *RIEL, "checkpoint.save_interval=1"]
    run_ok, run_new = base + [f"logging.run_dir={ok}"], base + [f"logging.run_dir={new}"]
    table = _table(tmp, run_ok, run_new)
    cases = [{"name": "a good run", "kind": "train", "argv": run_ok},
             {"name": "before", "kind": "snapshot", "argv": [str(ok)]}]
    cases += [{"name": n, "kind": k, "argv": a} for n, k, a, _ in table]
    cases += [{"name": "after", "kind": "snapshot", "argv": [str(ok)]},
              {"name": "tear", "kind": "truncate",
               "argv": [str(ok / "checkpoints" / "step_01000002" / "rank_00000.pt")]},
              {"name": "rerun", "kind": "train", "argv": run_ok}]
    json.dump(cases, open(tmp / "cases.json", "w"))
    r = subprocess.run([sys.executable, "-m", "tests.e2e.bad_inputs_worker", str(tmp / "cases.json"),
                        str(tmp / "results.json")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = {x["name"]: x for x in json.load(open(tmp / "results.json"))}
    assert res["a good run"]["code"] == 0, res["a good run"]["stderr"][-3000:]
    return {"tmp": tmp, "ok": ok, "table": table, "res": res}


def test_bad_inputs_one_line_each_and_nothing_lost(table_run):
    res, failures = table_run["res"], []
    assert "Warning" not in res["a good run"]["stderr"], res["a good run"]["stderr"][-3000:]  # MEF + RIEL: none
    for name, _, _, names in table_run["table"]:
        x = res[name]
        lines = [ln for ln in x["stderr"].splitlines() if ln.strip()]
        if x["escaped"] or x["code"] in (0, None) or len(lines) != 1 or not lines[0].startswith("error") \
                or names not in lines[0]:
            failures.append(f"{name}: code={x['code']} escaped={bool(x['escaped'])} stderr={x['stderr'][-600:]!r}"
                            f"{x['escaped'][-600:] if x['escaped'] else ''}")
    assert not failures, "\n".join(failures)
    before, after = json.loads(res["before"]["stdout"]), json.loads(res["after"]["stdout"])
    assert any(k.startswith("checkpoints") for k in before) and after == before  # nothing lost or rewritten


def test_torn_newest_checkpoint_falls_back_and_resumes_riel(table_run):
    """The rerun of the finished command finds the newest checkpoint torn: one warning, resume from the previous
    one at the right RIEL step, and the finished MEF stage's numbers stay in summary.json."""
    res, root = table_run["res"], table_run["ok"] / "checkpoints"
    rerun = res["rerun"]
    assert rerun["code"] == 0 and not rerun["escaped"], rerun["stderr"][-3000:]
    warnings = [ln for ln in rerun["stdout"].splitlines() if ln.startswith("warning:")]
    assert any("step_01000002 is unusable" in w and "rank_00000.pt" in w and "falling back to" in w
               and "step_01000001" in w for w in warnings), rerun["stdout"]
    assert (root / "step_01000002.unusable").is_dir()  # set aside, not deleted
    assert "RIEL steps 0-0 done, continuing at step 1" in rerun["stdout"]  # the RIEL step, not the folder index
    summary = json.load(open(table_run["ok"] / "summary.json"))
    first_loss = float(res["a good run"]["stdout"].split("MEF loss: start ")[1].split()[0])
    assert summary["riel_steps"] == 2 and summary["mef_steps"] == 1
    assert abs(summary["mef_loss_start"] - first_loss) < 1e-4  # kept from the run that did MEF
    assert open(root / "latest").read() == "step_01000002" and C.verify(str(root / "step_01000002")) is None


def test_killed_rank_makes_the_survivor_exit_with_one_line(tmp_path):
    run = tmp_path / "run"
    cmd = _train_cmd(run, "data.micro_batch_size=4", "mef.max_steps=2", "riel.steps=200", *RIEL,
                     "checkpoint.save_interval=1", "parallel.timeout_minutes=0.5")
    port, procs = free_port(), []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        t0, metrics = time.time(), run / "metrics.jsonl"
        while not (metrics.exists() and sum('"stage": "riel"' in ln for ln in open(metrics)) >= 2):
            assert procs[0].poll() is None and procs[1].poll() is None, procs[0].stderr.read()[-2000:]
            assert time.time() - t0 < 300
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        t_kill = time.time()
        out, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert time.time() - t_kill < 0.5 * 60 + 30  # within the timeout (+ slack for a loaded machine)
    assert procs[0].returncode == 1
    line = _one_error_line(err)
    assert "lost contact with another rank" in line and "parallel.timeout_minutes=0.5" in line
    latest = C.latest(str(run / "checkpoints"))
    assert latest is not None and f"the newest complete checkpoint is {latest}" in line
    assert C.verify(latest, ["rank_00000.pt", "rank_00001.pt"]) is None
    meta = C.read_meta(latest)
    for f in meta["files"]:
        blob = C.load_rank_file(os.path.join(latest, f))
        assert blob["trainer"]["stage"] == meta["stage"] and blob["model"]
