"""A trained model leaves the stack, and the padded vocabulary does not change the model (gloo, 2 processes):

1. MEF at TP=1 (DP=2) and at TP=2 from the same seed: the first loss is the same although the vocab pads to 320
   at TP=1 and 384 at TP=2 (``model.padded_vocab_size`` not pinned): padded ids get no probability mass.
2. ``python -m megatron_meml.convert_hf export --ckpt <the TP=2 run's checkpoint root>`` -> transformers loads it (also
from an
   older checkpoint whose meta.json lacks the model fields: the run's config.yaml supplies them); a new run at PP=2
   with ``model.init_from=<that root>`` starts from the same function (its logits, training and generation path,
   equal transformers' on the exported model; padded ids get no mass) and continues training from it.
"""
import json
import math
import os
import shutil

import torch
from safetensors.torch import load_file

from tests.conftest import ROOT

from .launcher import spawn

QUICKSTART = os.path.join(ROOT, "examples", "quickstart", "config.yaml")
BASE = ["riel.enabled=false", "eval.enabled=false", "logging.progress_bar=false", "logging.tensorboard=false",
        "data.global_batch_size=8", "data.micro_batch_size=4", "model.hidden_size=32", "model.ffn_hidden_size=64",
        "optimizer.lr_warmup_steps=0"]
TOKENS = torch.randint(0, 259, (2, 16), generator=torch.Generator().manual_seed(5))


def _generation_logits(chunks):
    """Last-position logits [B, V_padded] of the generation path (KV cache, TP-gathered), last stage only."""
    from megatron_meml.backend.infer import inference

    with inference.generation_mode(chunks):
        runner = inference.PipelineForward(chunks, TOKENS.shape[0], TOKENS.shape[1] + 1)
        out = runner.forward(TOKENS)
        runner.close()
    return out


def _train(run_dir, overrides, logits_before=False):
    from megatron_meml.stages import common, mef, riel, run as stages_run
    from megatron_meml.backend.ckpt.hf_convert import full_logits
    from megatron_meml.config import load_config

    cfg = load_config(QUICKSTART, BASE + [f"logging.run_dir={run_dir}"] + list(overrides))
    run = stages_run.setup(cfg, config_dir=os.path.dirname(QUICKSTART))
    logits = gen = None
    if logits_before:
        logits = full_logits(run.chunks, TOKENS, cfg.model.vocab_size)
        gen = _generation_logits(run.chunks)
    summary = stages_run.run_all(run)
    run.logger.close()
    return {"summary": summary, "logits": logits, "generation_logits": gen, "logging": run.info.is_logging_rank}


def train_and_continue(root):
    """MEF at TP=1 then at TP=2 (checkpointed), one step each; then a new run at PP=2 from the TP=2 run's
    checkpoint root: logits of its starting weights, then one MEF step."""
    tp1 = _train(os.path.join(root, "tp1"), ["mef.max_steps=1"])
    tp2 = _train(os.path.join(root, "tp2"), ["mef.max_steps=1", "parallel.tensor_model_parallel_size=2"])
    pp2 = _train(os.path.join(root, "pp2"), ["mef.max_steps=1", "parallel.pipeline_model_parallel_size=2",
                                             f"model.init_from={os.path.join(root, 'tp2', 'checkpoints')}"],
                 logits_before=True)
    return {"tp1": tp1["summary"]["mef_loss_start"], "tp2": tp2["summary"]["mef_loss_start"], "pp2": pp2}


def _convert_hf_main(argv):
    from megatron_meml import convert_hf

    return convert_hf.main(argv)


def test_train_export_to_hf_and_continue_at_another_layout(tmp_path):
    from transformers import AutoModelForCausalLM

    out = spawn("tests.distributed.test_train_export:train_and_continue", 2, root=str(tmp_path))
    losses = out[0]
    # padded ids carry no probability mass: the first loss does not depend on how TP pads the vocabulary
    assert math.isfinite(losses["tp1"]) and abs(losses["tp1"] - losses["tp2"]) < 1e-5, losses

    root = str(tmp_path / "tp2" / "checkpoints")
    hf_dir = str(tmp_path / "hf")
    assert _convert_hf_main(["export", "--ckpt", root, "--out", hf_dir]) == 0
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(input_ids=TOKENS).logits
    assert ref.shape[-1] == 259  # the exported model is unpadded

    # a checkpoint saved before meta.json recorded the model and rank positions: the run's config.yaml fills in
    old_run = tmp_path / "old_run"
    shutil.copytree(tmp_path / "tp2", old_run)
    step = old_run / "checkpoints" / open(old_run / "checkpoints" / "latest").read().strip()
    meta = json.load(open(step / "meta.json"))
    json.dump({k: v for k, v in meta.items() if k not in ("model", "vocab_size", "padded_vocab_size", "ranks")},
              open(step / "meta.json", "w"))
    assert _convert_hf_main(["export", "--ckpt", str(old_run), "--out", str(tmp_path / "hf_old")]) == 0
    a = load_file(os.path.join(hf_dir, "model.safetensors"))
    b = load_file(str(tmp_path / "hf_old" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    got = next(r["pp2"] for r in out if r["pp2"]["logits"] is not None)
    assert (got["logits"] - ref).abs().max().item() < 1e-4
    # generation sees the same function: real columns match transformers' last position, padded ones carry no mass
    gen = got["generation_logits"]
    assert gen.shape[-1] == 320 and (gen[:, :259] - ref[:, -1]).abs().max().item() < 1e-4
    assert torch.softmax(gen, dim=-1)[:, 259:].sum().item() == 0.0
    logged = next(r["pp2"] for r in out if r["pp2"]["logging"])
    assert math.isfinite(logged["summary"]["mef_loss_start"])
    # the trained weights (not a fresh init) are where the PP=2 run starts: its first loss is below the TP=2 run's
    assert logged["summary"]["mef_loss_start"] < losses["tp2"]
