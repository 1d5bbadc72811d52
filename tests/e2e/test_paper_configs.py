"""Every config in examples/paper/ (Qwen2.5 and Llama-3 tokenizers, GSM8K / MathQA / StrategyQA) and every config in
examples/scaling/ runs on the real datasets, shrunk to a tiny model: 1 MEF step, eval on 2 questions, 1 RIEL step,
eval again. The path is the one a user takes from a fresh checkout:

  * the working directory is a stand-in checkout (``examples/`` linked in), so the configs' relative paths
    (``@examples/experts/prompts/*.txt``, ``runs/...``, ``models/...``) resolve as they do for a user;
  * ``models/<name>`` (the configs' ``model.init_from_hf``) is a tiny random HF folder written here: its config.json
    is the real model's (vocabulary, RoPE, bias, tying) with a 2-layer, 32-wide shape, so the model shape comes
    from ``init_from_hf`` as documented and the weights go through the on-the-fly HF conversion;
  * ``mef.traces`` (``runs/traces/<dataset>-mef.jsonl``) is written by python -m megatron_meml.build_mef_data from the rationales;
  * ``data.path`` is ../shared/data (tests/conftest.py DATA), passed explicitly.

The runs share one process (the interpreter, torch, megatron and the BPE tables load once; ~6 s a config): this
file is also the driver, ``python tests/e2e/test_paper_configs.py JOBS.json``. Scaling configs that are identical
once shrunk (same vocabulary, tying, RoPE scaling, tokenizer) share one run; each config is still loaded and
checked. Runtime overrides keep the real 128k/152k vocabularies cheap: 256-token sequences, batch 2, 4 new tokens.
"""
from __future__ import annotations

import contextlib
import importlib
import glob
import io
import json
import os
import sys
import time
import traceback

import pytest
import yaml

if __name__ != "__main__":
    from tests.conftest import DATA, ROOT
else:
    ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAPER = sorted(p for p in glob.glob(os.path.join(ROOT, "examples", "paper", "*.yaml"))
               if os.path.basename(p) != "base.yaml")
SCALING = sorted(p for p in glob.glob(os.path.join(ROOT, "examples", "scaling", "*.yaml"))
                 if os.path.basename(p) not in ("base.yaml", "qwen-family.yaml", "llama-family.yaml"))
TINY_HF = {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 8}
TINY_SHAPE = ["model.num_layers=2", "model.hidden_size=32", "model.ffn_hidden_size=64",
              "model.num_attention_heads=4", "model.num_query_groups=2", "model.kv_channels=8",
              "parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
              "parallel.sequence_parallel=false"]
# precision fp32: the configs' bf16 is for H100s; CPU bf16 matmuls made each run ~4x slower (measured)
RUNTIME = ["precision.dtype=fp32", "data.seq_length=256", "data.micro_batch_size=1", "data.global_batch_size=2", "mef.max_steps=1",
           "riel.steps=1", "riel.questions_per_step=1", "riel.group_size=2", "riel.buffer_k=1",
           "rollout.max_new_tokens=4", "rollout.token_budget=4096", "eval.num_examples=2", "eval.max_new_tokens=4",
           "logging.progress_bar=false", "logging.tensorboard=false"]
TOKENIZER_DIR = {"qwen2.5": "qwen2.5", "llama3": "llama3"}


def _yaml_tree(path):
    from megatron_meml.config.loader import read_yaml

    return read_yaml(path)


def write_tiny_hf_model(folder: str, real_config_json: str, seed: int = 0) -> None:
    """A random HF checkpoint (config.json + model.safetensors, bf16) with the real model's config.json except the
    shape (TINY_HF): same vocabulary, RoPE, qkv bias and embedding tying."""
    import torch
    from safetensors.torch import save_file

    with open(real_config_json) as f:
        cfg = json.load(f)
    cfg.update(TINY_HF)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    g = torch.Generator().manual_seed(seed)
    H, F, V, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    bias = cfg["model_type"] == "qwen2"

    def w(*shape):
        return (0.02 * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    t = {"model.embed_tokens.weight": w(V, H), "model.norm.weight": torch.ones(H, dtype=torch.bfloat16)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
                  p + "post_attention_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
                  p + "self_attn.q_proj.weight": w(q, H), p + "self_attn.k_proj.weight": w(kv, H),
                  p + "self_attn.v_proj.weight": w(kv, H), p + "self_attn.o_proj.weight": w(H, q),
                  p + "mlp.gate_proj.weight": w(F, H), p + "mlp.up_proj.weight": w(F, H),
                  p + "mlp.down_proj.weight": w(H, F)})
        if bias:
            t.update({p + "self_attn.q_proj.bias": w(q), p + "self_attn.k_proj.bias": w(kv),
                      p + "self_attn.v_proj.bias": w(kv)})
    if not cfg.get("tie_word_embeddings", False):
        t["lm_head.weight"] = w(V, H)
    save_file(t, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def scaling_groups():
    """{key: [config paths]}: scaling configs that are the same run once shrunk share one key."""
    from megatron_meml.config import load_config, to_dict

    groups = {}
    for path in SCALING:
        d = to_dict(load_config(path, TINY_SHAPE + [f"data.path={DATA}"] + RUNTIME))
        d["logging"].pop("run_dir")
        groups.setdefault(json.dumps(d, sort_keys=True), []).append(path)
    return list(groups.values())


# --------------------------------------------------------------------------------------------------- the driver


def _run_job(job):
    """One job in this process: a tool's main(argv) or megatron_meml.train.main(argv); stdout/stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    t0 = time.time()
    rc, exc = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if job["kind"] == "tool":
                rc = importlib.import_module("megatron_meml." + job["name"]).main(job["argv"])
            else:
                from megatron_meml import train

                rc = train.main(job["argv"])
        except SystemExit as e:
            rc = e.code
        except BaseException:  # a crash is a result to report, not the end of the other jobs
            exc = traceback.format_exc()
    return {"rc": rc, "exception": exc, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "seconds": round(time.time() - t0, 2)}


def _drive(spec_path):
    import torch

    torch.set_num_threads(1)
    with open(spec_path) as f:
        spec = json.load(f)
    import shutil

    results = {}
    for job in spec["jobs"]:
        results[job["id"]] = _run_job(job)
        for ckpt in glob.glob(os.path.join("runs", "**", "checkpoints"), recursive=True):
            shutil.rmtree(ckpt)  # ~60 MB a run with the real vocabularies; no test reads them
        with open(spec["results"], "w") as f:  # after every job, so a hard crash still leaves the earlier ones
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    _drive(sys.argv[1])
    sys.exit(0)


# ---------------------------------------------------------------------------------------------------- the tests

needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(DATA, "gsm8k")),
                                reason=f"offline datasets not found at {DATA} (set MEML_DATA)")


def _paper_id(path):
    return os.path.basename(path)[:-len(".yaml")]


@pytest.fixture(scope="module")
def user_runs(tmp_path_factory):
    """Lay out the stand-in checkout, then run every job in one driver process; {job id: result}."""
    import subprocess

    work = tmp_path_factory.mktemp("checkout")
    os.symlink(os.path.join(ROOT, "examples"), work / "examples")
    jobs, datasets = [], {}
    for path in PAPER:
        tree = _yaml_tree(path)
        folder = tree["model"]["init_from_hf"]
        tok = tree["data"]["tokenizer"]
        if not os.path.isdir(work / folder):
            write_tiny_hf_model(str(work / folder), os.path.join(DATA, "tokenizers", TOKENIZER_DIR[tok], "config.json"))
        datasets[tree["data"]["name"]] = (tree["data"]["train_split"], tree["mef"]["traces"])
    for name, (split, traces) in sorted(datasets.items()):
        jobs.append({"id": f"build-{name}", "kind": "tool", "name": "build_mef_data",
                     "argv": ["--data", name, "--data-path", DATA, "--split", split, "--out", traces]})
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731  (the user types examples/paper/x.yaml)
    for path in PAPER:
        jobs.append({"id": _paper_id(path), "kind": "train",
                     "argv": [rel(path), f"data.path={DATA}"] + RUNTIME})
    for group in scaling_groups():
        jobs.append({"id": "scaling:" + ",".join(_paper_id(p) for p in group), "kind": "train",
                     "argv": [rel(group[0]), f"data.path={DATA}"] + TINY_SHAPE + RUNTIME})
    # the one-line errors of a user who skipped a step (data not prepared, traces not built)
    first = rel(PAPER[0])
    jobs.append({"id": "no-data", "kind": "train", "argv": [first] + RUNTIME})
    jobs.append({"id": "no-traces", "kind": "train",
                 "argv": [first, f"data.path={DATA}", "mef.traces=runs/traces/missing.jsonl"] + RUNTIME})
    spec = {"jobs": jobs, "results": str(work / "results.json")}
    (work / "jobs.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("MEML_DATA", None)  # the no-data job must see the default data.path
    r = subprocess.run([sys.executable, os.path.abspath(__file__), str(work / "jobs.json")], cwd=work, env=env,
                       capture_output=True, text=True, timeout=900)
    assert (work / "results.json").exists(), r.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    return work, results


def _ok(res):
    assert res["exception"] is None, res["exception"]
    assert res["rc"] == 0, res["stderr"][-2000:]


@needs_data
@pytest.mark.parametrize("dataset", ["gsm8k", "mathqa", "strategyqa"])
def test_build_mef_data_tool_writes_the_configs_trace_file(user_runs, dataset):
    work, results = user_runs
    res = results[f"build-{dataset}"]
    _ok(res)
    path = work / "runs" / "traces" / f"{dataset}-mef.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    assert rows and {r["expert"] for r in rows} == {0}
    assert sorted(rows[0]) == ["answer", "expert", "id", "question", "response"]
    assert f"{len(rows)} traces (expert 0: {len(rows)})" in res["stdout"] and "sha256" in res["stdout"]


@needs_data
@pytest.mark.parametrize("config", PAPER, ids=[_paper_id(p) for p in PAPER])
def test_paper_config_runs_mef_eval_riel_eval_on_real_data(user_runs, config):
    work, results = user_runs
    name = _paper_id(config)
    res = results[name]
    _ok(res)
    tree = _yaml_tree(config)
    run_dir = work / tree["logging"]["run_dir"]
    out = res["stdout"]
    assert "initial weights from HF directory models/" in out
    n_rows = (work / tree["mef"]["traces"]).read_bytes().count(b"\n")
    # the real per-expert counts: all MEF rows are expert 0's rationales
    assert f"MEF: {n_rows} traces (expert 0: {n_rows}, expert 1: 0, expert 2: 0); experts 1, 2 have no MEF" in out
    assert "MEF loss: start" in out and "eval after_mef" in out and "eval after_riel" in out
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["data"]["tokenizer"] == tree["data"]["tokenizer"] and resolved["data"]["name"] in name
    vocab = {"qwen2.5": 151936, "llama3": 128256}[tree["data"]["tokenizer"]]
    assert resolved["model"]["vocab_size"] == vocab and resolved["model"]["hidden_size"] == 32  # from init_from_hf
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    stages = [(r["stage"], r["step"]) for r in rows]
    assert ("mef", 0) in stages and ("riel", 0) in stages
    mef = next(r for r in rows if r["stage"] == "mef")
    assert mef["loss"] == pytest.approx(float(out.split("MEF loss: start ")[1].split()[0]), abs=1e-4)
    evals = json.loads((run_dir / "eval.json").read_text())
    assert sorted(evals) == ["after_mef", "after_riel"]
    assert all(len(v["accuracy"]) == 3 for v in evals.values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mef_steps"] == 1 and summary["riel_steps"] == 1


@needs_data
@pytest.mark.parametrize("config", SCALING, ids=[_paper_id(p) for p in SCALING])
def test_scaling_config_runs_riel_on_real_data(user_runs, config):
    work, results = user_runs
    key = next(k for k in results if k.startswith("scaling:") and _paper_id(config) in k[8:].split(","))
    res = results[key]
    _ok(res)
    assert "RIEL: 1 steps x 1 questions x 3 experts x G=2" in res["stdout"] and "eval after_riel" in res["stdout"]
    assert "MEF:" not in res["stdout"]  # the scaling configs are RIEL-only


@needs_data
def test_missing_dataset_is_one_line_naming_data_path_and_the_tool(user_runs):
    _, results = user_runs
    res = results["no-data"]
    assert res["exception"] is None and res["rc"] == 2
    lines = res["stderr"].strip().splitlines()
    assert len(lines) == 1, res["stderr"]
    assert "config key `data.path`" in lines[0] and "python -m megatron_meml.prepare_data" in lines[0], lines[0]
    assert "the gsm8k 'train' split not found" in lines[0]


@needs_data
def test_missing_traces_is_one_line_naming_mef_traces(user_runs):
    _, results = user_runs
    res = results["no-traces"]
    assert res["exception"] is None and res["rc"] == 2
    lines = res["stderr"].strip().splitlines()
    assert len(lines) == 1 and "mef.traces" in lines[0] and "python -m megatron_meml.build_mef_data" in lines[0], res["stderr"]
