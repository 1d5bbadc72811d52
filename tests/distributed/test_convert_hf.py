"""HF checkpoints through our megatron model at TP=1, TP=2 and PP=2 (gloo, local processes) give transformers'
logits (fp32, max abs diff <= 1e-4):

* ``python -m megatron_meml.convert_hf check`` (the CLI: convert, spawn tp*pp ranks, compare) for a Qwen2 model (qkv
bias, tied
  embeddings, GQA, vocab 251 -> padded 256 at TP=2) and a Llama model (llama3 rope scaling, untied);
* the trainer's start paths through ``hf_convert.init_model_weights``: ``model.init_from`` with a checkpoint
  converted at another layout (re-shard + re-pad), and ``model.init_from_hf`` (on-the-fly conversion), followed by
  ``save_converted_checkpoint`` + export, which reproduces the HF tensors bit for bit.
"""
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from megatron_meml.backend.ckpt import hf_convert as H

from ..unit.convert import tiny_hf
from .launcher import spawn

TOL = 1e-4
TOKENS = torch.randint(0, min(tiny_hf.VOCAB_QWEN, tiny_hf.VOCAB_LLAMA), (2, 16),
                       generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    q, l = str(root / "qwen2"), str(root / "llama")
    models = {"qwen2": tiny_hf.qwen2(q), "llama": tiny_hf.llama(l)}
    with torch.no_grad():
        logits = {k: m(input_ids=TOKENS).logits for k, m in models.items()}
    return {"qwen2": q, "llama": l, "logits": logits, "root": root}


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)], ids=["tp1", "tp2", "pp2"])
def test_cli_check_passes(hf, tp, pp):
    cmd = [sys.executable, "-m", "megatron_meml.convert_hf", "check", "--hf-dir", hf["qwen2"],
           hf["llama"], "--tp", str(tp), "--pp", str(pp)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    per_model = [float(re.search(r"max abs logit diff (\S+)$", x).group(1)) for x in lines if "max |logit|" in x]
    assert len(per_model) == 2 and max(per_model) <= TOL
    assert re.fullmatch(r"max abs logit diff: \S+", lines[-1]) and float(lines[-1].split()[-1]) <= TOL


def start_and_logits(cases):
    """Worker: for each case build the model at its (tp, pp) from ``overrides``, call init_model_weights (what
    the trainer does after build_model), return the full logits of TOKENS; optionally save the model in the
    converted format. Per-case result on the rank holding the logits (last stage, TP rank 0), None elsewhere."""
    from megatron_meml.backend.ckpt import checkpoint_io
    from megatron_meml.backend.train import model
    from megatron_meml.backend.runtime import parallel
    from megatron_meml.config import load_config

    out = []
    for case in cases:
        cfg = load_config(None, case["overrides"])
        info = parallel.initialize(cfg.parallel.tensor_model_parallel_size,
                                   cfg.parallel.pipeline_model_parallel_size)
        chunks = model.build_model(cfg)
        msg = H.init_model_weights(chunks, cfg)
        logits = H.full_logits(chunks, TOKENS, cfg.model.vocab_size)
        if case.get("save_to"):
            checkpoint_io.save_converted_checkpoint(chunks, cfg, case["save_to"])
        out.append({"msg": msg, "logits": logits} if info.is_last_stage and info.tp_rank == 0 else None)
    return out


def _overrides(hf_dir, tp, pp, **model):
    ov = [f"model.hf_config={hf_dir}/config.json", f"parallel.tensor_model_parallel_size={tp}",
          f"parallel.pipeline_model_parallel_size={pp}"]
    return ov + [f"model.{k}={v}" for k, v in model.items()]


def test_trainer_start_paths_at_other_layouts(hf, tmp_path):
    q_ckpt, l_saved, q_saved = str(tmp_path / "q_tp1pp2"), str(tmp_path / "l_saved"), str(tmp_path / "q_saved")
    H.import_hf(hf["qwen2"], q_ckpt, tp=1, pp=2)  # vocab 251 unpadded; the TP=2 run pads to 256
    cases = [
        # converted at TP=1/PP=2, started at TP=2/PP=1 (re-shard, re-pad vocab), then saved at TP=2
        dict(overrides=_overrides(hf["qwen2"], 2, 1, init_from=q_ckpt, padded_vocab_size=256), save_to=q_saved),
        # straight from the HF directory at PP=2 (tied Qwen2: the last stage's output layer comes from the embedding)
        dict(overrides=_overrides(hf["qwen2"], 1, 2, init_from_hf=hf["qwen2"])),
        # straight from the HF directory at PP=2 (untied Llama, llama3 rope), then saved at PP=2
        dict(overrides=_overrides(hf["llama"], 1, 2, init_from_hf=hf["llama"]), save_to=l_saved),
        # control: the same Llama without its llama3 rope scaling must NOT match (the test sees rope scaling)
        dict(overrides=_overrides(hf["llama"], 2, 1, init_from_hf=hf["llama"], rope_scaling="null",
                                  padded_vocab_size=256)),
    ]
    per_rank = spawn("tests.distributed.test_convert_hf:start_and_logits", 2, cases=cases)
    got = [next(r[i] for r in per_rank if r[i] is not None) for i in range(len(cases))]
    ref = hf["logits"]
    assert got[0]["msg"].startswith(f"checkpoint {q_ckpt} (")
    assert (got[0]["logits"] - ref["qwen2"]).abs().max() <= TOL
    assert (got[1]["logits"] - ref["qwen2"]).abs().max() <= TOL
    assert (got[2]["logits"] - ref["llama"]).abs().max() <= TOL
    assert got[2]["msg"].startswith(f"HF directory {hf['llama']} (")
    assert (got[3]["logits"] - ref["llama"]).abs().max() > 1e-2
    # what the trainer saves exports back to the original HF tensors, bit for bit
    for saved, src in ((q_saved, hf["qwen2"]), (l_saved, hf["llama"])):
        H.export_hf(saved, str(tmp_path / (os.path.basename(saved) + "_hf")))
        a = load_file(os.path.join(src, "model.safetensors"))
        b = load_file(str(tmp_path / (os.path.basename(saved) + "_hf") / "model.safetensors"))
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
