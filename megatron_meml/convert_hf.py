"""HF <-> megatron_meml checkpoints for Qwen2/Qwen2.5 and Llama-3/3.2 (format:
megatron_meml/backend/ckpt/checkpoint_io.py,
name mapping: megatron_meml/backend/ckpt/hf_convert.py).

  python -m megatron_meml.convert_hf import --hf-dir HF_DIR --out CKPT --tp 2 --pp 1 [--dtype bf16]
  python -m megatron_meml.convert_hf export --ckpt CKPT --out HF_OUT [--max-shard-gb 5]
      CKPT: a converted checkpoint, a training checkpoint (runs/x/checkpoints/step_N) or a run's checkpoint
      root (runs/x/checkpoints, or runs/x: its newest complete checkpoint)
  python -m megatron_meml.convert_hf random --config CONFIG_JSON --out HF_DIR [--dtype bf16]   (no model hub needed)
  python -m megatron_meml.convert_hf check  --hf-dir HF_DIR [HF_DIR2 ...] --tp 2 --pp 2 [--ckpt CKPT ...] [--tol 1e-4]

``import`` and ``export`` run in one process without torch.distributed and stream one tensor at a time. ``check``
converts HF_DIR at (tp, pp) (or uses --ckpt), runs the same random tokens through transformers and through our
megatron model on tp*pp local gloo processes (fp32, CPU), prints ``max abs logit diff: <x>`` last and exits 0 only
when x <= tol (with several HF directories: one line each, then the maximum).

Peak memory of an import (the 1.5B measurement in the issue note; 6.2 GB fp32 on disk twice, ~13 GB free needed)::

  python -m megatron_meml.convert_hf random --config ../shared/data/tokenizers/qwen2.5/config.json --out /tmp/q15
  /usr/bin/time -v python -m megatron_meml.convert_hf import --hf-dir /tmp/q15 --out /tmp/q15_ckpt --tp 1 --pp 1 2>&1 \\
      | grep "Maximum resident"
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import List, Optional

from megatron_meml.backend.runtime.compat import quiet_library_notes

quiet_library_notes()  # before megatron-core loads below: its TE / apex notes would precede the version check's line

import torch  # noqa: E402

from megatron_meml.backend.ckpt import checkpoint_source, hf_convert
from megatron_meml.backend.ckpt.checkpoint_io import CheckpointError
from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.runtime.parallel import free_port  # noqa: E402
from megatron_meml.backend.train import model
from megatron_meml.versions import require_supported

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _check_worker(rank: int, world: int, port: int, ckpts: List[str], tp: int, pp: int, tokens_path: str,
                  out_path: str) -> None:
    """One rank of ``check``: for each checkpoint build the model for (tp, pp), load the checkpoint and compute the
    full logits; the last stage's TP rank 0 writes them (a list, one per checkpoint)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if world > 1:
        torch.set_num_threads(1)
    try:
        info = parallel.initialize(tp, pp)
        tokens, out = torch.load(tokens_path), []
        for ckpt in ckpts:
            meta, _ = checkpoint_source.open_checkpoint(ckpt)
            cfg = hf_convert.config_for(dict(meta.model, vocab_size=meta.vocab_size), tp, pp)
            chunks = model.build_model(cfg)
            checkpoint_source.load_checkpoint_weights(chunks, ckpt, cfg)
            out.append(hf_convert.full_logits(chunks, tokens, meta.vocab_size))
        if info.is_last_stage and info.tp_rank == 0:
            torch.save(out, out_path)
    finally:
        parallel.destroy()


def _hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    hf.eval()
    with torch.no_grad():
        return hf(input_ids=tokens).logits.float()


def check(hf_dirs: List[str], tp: int, pp: int, ckpts: Optional[List[str]] = None, batch: int = 2, seq: int = 16,
          seed: int = 0) -> List[float]:
    """Max abs logit difference (transformers vs ours at (tp, pp)) for each HF directory. Our side runs on tp*pp
    spawned gloo processes, started first so that their imports overlap the transformers forward here."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        if ckpts is None:
            ckpts = [os.path.join(d, f"ckpt{i}") for i in range(len(hf_dirs))]
            for hf_dir, ckpt in zip(hf_dirs, ckpts):
                hf_convert.import_hf(hf_dir, ckpt, tp, pp)
        vocab = min(checkpoint_source.open_checkpoint(c)[0].vocab_size for c in ckpts)
        tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
        tok, out = os.path.join(d, "tokens.pt"), os.path.join(d, "logits.pt")
        torch.save(tokens, tok)
        ctx = mp.start_processes(_check_worker, args=(tp * pp, free_port(), ckpts, tp, pp, tok, out),
                                 nprocs=tp * pp, join=False, start_method="spawn")
        refs = [_hf_logits(h, tokens) for h in hf_dirs]
        while not ctx.join():
            pass
        ours = torch.load(out)
    diffs = []
    for h, r, o in zip(hf_dirs, refs, ours):
        if o.shape != r.shape:
            raise SystemExit(f"{h}: logit shapes differ: megatron {tuple(o.shape)} vs transformers {tuple(r.shape)}")
        diffs.append((o - r).abs().max().item())
        print(f"{h}: TP={tp} PP={pp} logits {tuple(r.shape)} max |logit| {r.abs().max().item():.3e} "
              f"max abs logit diff {diffs[-1]:.3e}")
    return diffs


def cmd_import(a) -> int:
    t0 = time.time()
    meta = hf_convert.import_hf(a.hf_dir, a.out, a.tp, a.pp, DTYPES.get(a.dtype), log=print)
    print(f"imported {a.hf_dir} -> {a.out}: TP={meta.tp} PP={meta.pp} vocab {meta.vocab_size} padded to "
          f"{meta.padded_vocab_size}, {len(meta.names())} tensors in {time.time() - t0:.1f}s")
    return 0


def cmd_export(a) -> int:
    t0 = time.time()
    files = hf_convert.export_hf(a.ckpt, a.out, int(a.max_shard_gb * 2 ** 30), log=print)
    print(f"exported {a.ckpt} -> {a.out}: {len(files)} safetensors file(s) + config.json in {time.time() - t0:.1f}s")
    return 0


def cmd_random(a) -> int:
    t0 = time.time()
    n = hf_convert.write_random_hf(a.config, a.out, DTYPES[a.dtype], a.seed, int(a.max_shard_gb * 2 ** 30), log=print)
    print(f"wrote a random {n / 1e9:.3f}B-parameter model ({a.dtype}) of {a.config} to {a.out} in "
          f"{time.time() - t0:.1f}s")
    return 0


def cmd_check(a) -> int:
    if a.ckpt is not None and len(a.ckpt) != len(a.hf_dir):
        print("error: give one --ckpt per --hf-dir", file=sys.stderr)
        return 2
    diff = max(check(a.hf_dir, a.tp, a.pp, a.ckpt, a.batch, a.seq, a.seed))
    print(f"max abs logit diff: {diff:.3e}")
    return 0 if diff <= a.tol else 1


def main(argv=None) -> int:
    require_supported()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("import", help="HF directory -> sharded checkpoint")
    i.add_argument("--hf-dir", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--tp", type=int, default=1)
    i.add_argument("--pp", type=int, default=1)
    i.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="cast (default: keep the HF dtype)")
    e = sub.add_parser("export", help="checkpoint -> HF safetensors + config.json")
    e.add_argument("--ckpt", required=True, help="converted checkpoint, training checkpoint folder, or a run's "
                                                "checkpoint root / run directory (newest complete checkpoint)")
    e.add_argument("--out", required=True)
    e.add_argument("--max-shard-gb", type=float, default=5.0)
    c = sub.add_parser("check", help="logits of transformers vs our model from a conversion")
    c.add_argument("--hf-dir", required=True, nargs="+", help="one or more HF directories (checked in one launch)")
    c.add_argument("--tp", type=int, default=1)
    c.add_argument("--pp", type=int, default=1)
    c.add_argument("--ckpt", default=None, nargs="+", help="checkpoints (converted or training, any layout) to use "
                                                         "instead of converting")
    c.add_argument("--batch", type=int, default=2)
    c.add_argument("--seq", type=int, default=16)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tol", type=float, default=1e-4)
    r = sub.add_parser("random", help="random HF model of a config.json's shapes, written tensor by tensor")
    r.add_argument("--config", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-shard-gb", type=float, default=1.0)
    a = p.parse_args(argv)
    try:
        return {"import": cmd_import, "export": cmd_export, "check": cmd_check, "random": cmd_random}[a.cmd](a)
    except (CheckpointError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
