"""Recommend TP / PP / DP (and activation recomputation) for a RIEL run on N GPUs; print every feasible layout.

    python -m megatron_meml.plan_scaling --model qwen2.5-72b --gpus 64
    python -m megatron_meml.plan_scaling --config examples/scaling/llama3.1-8b.yaml --gpus 16 rollout.token_budget=131072
    python -m megatron_meml.plan_scaling --readme        # the scaling table of docs/scaling.md (every config at 8/16/64 GPUs)

The memory and step-time formulas, with units and assumptions, are in ``megatron_meml/planning.py``. Model shape,
batch sizes, sequence length and rollout budget come from the run config (``--model`` names a config in
examples/scaling/); the layout is what this tool varies. Layouts are ranked by estimated step time among those
whose peak memory fits the GPU; ``*`` marks the recommendation, ``cfg`` the config's own layout.
"""
from __future__ import annotations

import argparse
import os
import sys

from megatron_meml.config import ConfigError, load_config
from megatron_meml.paths import EXAMPLES
from megatron_meml.planning import SCALING_RUNS, GiB, Hardware, Layout, ModelShape, Workload, evaluate, rank_plans  # noqa: E402

SCALING_DIR = os.path.join(EXAMPLES, "scaling")
# name -> GPUs (8-GPU H100 nodes) the config's own parallel layout is written for


def config_path(model: str) -> str:
    if model not in SCALING_RUNS:
        raise SystemExit(f"error: unknown --model {model!r}; known: {', '.join(SCALING_RUNS)}")
    return os.path.join(SCALING_DIR, f"{model}.yaml")


def load(path: str, overrides=()):
    return load_config(path, list(overrides))


def config_layout(cfg, gpus: int) -> Layout:
    p = cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    return Layout(tp=tp, pp=pp, dp=max(gpus // (tp * pp), 1), recompute=cfg.model.recompute_activations,
                  sequence_parallel=p.sequence_parallel)


def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def format_table(plans, cfg_layout=None) -> str:
    head = ("", "TP", "PP", "DP", "recomp", "params/GPU", "state GiB", "act+logits", "KV GiB", "peak GiB", "fits",
            "rollout s", "train s", "step s")
    rows = []
    for i, pl in enumerate(plans):
        lay = pl.layout
        mark = "*" if i == 0 and pl.fits else ""
        if cfg_layout is not None and (lay.tp, lay.pp, lay.dp, lay.recompute) == \
                (cfg_layout.tp, cfg_layout.pp, cfg_layout.dp, cfg_layout.recompute):
            mark += "cfg"
        rows.append((mark, lay.tp, lay.pp, lay.dp, "full" if lay.recompute else "-",
                     f"{pl.params_per_gpu / 1e9:.2f}B", _gib(pl.state_total), _gib(pl.activations + pl.logits),
                     _gib(pl.kv_cache), _gib(pl.peak), "yes" if pl.fits else "NO", f"{pl.rollout_s:.0f}",
                     f"{pl.train_s:.0f}", f"{pl.step_s:.0f}"))
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(v).rjust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def workload(cfg, layer_spec: str = "te") -> Workload:
    w = Workload.from_config(cfg)
    return Workload(**{**w.__dict__, "layer_spec": layer_spec})


def plan_text(name: str, cfg, gpus: int, hw: Hardware, show_all: bool, layer_spec: str = "te") -> str:
    shape, work = ModelShape.from_config(cfg), workload(cfg, layer_spec)
    plans = rank_plans(shape, work, gpus, hw)
    feasible = [pl for pl in plans if pl.fits]
    cl = config_layout(cfg, gpus)
    lines = [
        f"model {name}: {shape.params() / 1e9:.2f}B params, {shape.layers} layers, hidden {shape.hidden}, "
        f"heads {shape.heads}/{shape.groups} kv, ffn {shape.ffn}, vocab {shape.vocab}, "
        f"{'tied' if shape.tied else 'untied'}",
        f"RIEL step: {work.rollouts} rollouts ({work.train_sequences} training sequences) of seq_length "
        f"{work.seq_length} (prompt {work.prompt_tokens} + {work.new_tokens} new), micro-batch "
        f"{work.micro_batch_size}, rollout token_budget {work.token_budget}/GPU, {work.dtype}, "
        f"{'fused' if work.fused_output else 'logits'} output layer, {work.layer_spec} layers",
        f"hardware: {gpus} GPUs ({hw.gpus_per_node}/node) with {hw.memory_gib:g} GiB, fit under "
        f"{hw.memory_gib * (1 - hw.headroom):.1f} GiB ({hw.headroom:.0%} headroom, {hw.overhead_gib:g} GiB fixed "
        f"overhead); {hw.peak_tflops:g} TFLOP/s at MFU {hw.mfu}; HBM {hw.hbm_tbps} TB/s x {hw.hbm_efficiency}; "
        f"NVLink {hw.nvlink_gbps:g} GB/s, network {hw.network_gbps:g} GB/s per GPU",
        "",
    ]
    if not feasible:
        lines.append(f"no layout fits {gpus} GPUs; the least memory needs "
                     f"{min(pl.peak for pl in plans) / GiB:.1f} GiB/GPU" if plans else "no valid layout")
    shown = plans if show_all else feasible
    if cl.gpus == gpus and not any(pl.layout == cl for pl in shown):
        shown = shown + [evaluate(shape, cl, work, hw)]
    if shown:
        lines.append(format_table(shown, cl if cl.gpus == gpus else None))
    if feasible:
        b = feasible[0]
        lines += ["", f"recommended: TP={b.layout.tp} PP={b.layout.pp} DP={b.layout.dp} "
                      f"recompute={'full' if b.layout.recompute else 'off'}: peak {b.peak / GiB:.1f} GiB/GPU, "
                      f"~{b.step_s:.0f} s per RIEL step ({b.rollout_s:.0f} s rollout + {b.train_s:.0f} s train)",
                  f"  overrides: parallel.tensor_model_parallel_size={b.layout.tp} "
                  f"parallel.pipeline_model_parallel_size={b.layout.pp} "
                  f"model.recompute_activations={str(b.layout.recompute).lower()} "
                  f"parallel.sequence_parallel={str(b.layout.sequence_parallel).lower()}"]
    return "\n".join(lines)


def readme_table(hw: Hardware, gpu_counts=(8, 16, 32, 64)) -> str:
    """Markdown: one row per scaling config; per GPU count the recommended TP·PP·DP (``+rc``: full activation
    recomputation), the peak memory per GPU and the estimated RIEL step time."""
    out = ["| model | params | " + " | ".join(f"{g} GPUs: layout, peak/GPU, step" for g in gpu_counts) + " |",
           "|---|---|" + "---|" * len(gpu_counts)]
    for name in SCALING_RUNS:
        cfg = load(config_path(name))
        shape, work = ModelShape.from_config(cfg), Workload.from_config(cfg)
        cells = []
        for g in gpu_counts:
            plans = rank_plans(shape, work, g, hw)
            if not plans or not plans[0].fits:
                cells.append("does not fit")
                continue
            lay, b = plans[0].layout, plans[0]
            cells.append(f"TP{lay.tp}·PP{lay.pp}·DP{lay.dp}{'+rc' if lay.recompute else ''}, "
                         f"{b.peak / GiB:.0f} GiB, {b.step_s:.0f} s")
        out.append(f"| {name} | {shape.params() / 1e9:.1f}B | " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=f"a scaling config: {', '.join(SCALING_RUNS)}")
    src.add_argument("--config", help="any run config YAML")
    src.add_argument("--readme", action="store_true", help="print the scaling table of docs/scaling.md")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the run config")
    p.add_argument("--gpus", type=int, help="total GPUs (default: what the scaling config is written for)")
    p.add_argument("--all", action="store_true", help="also list layouts that do not fit")
    d = Hardware()
    p.add_argument("--gpus-per-node", type=int, default=d.gpus_per_node, help="TP stays within a node")
    p.add_argument("--gpu-mem-gib", type=float, default=d.memory_gib, help="usable memory per GPU")
    p.add_argument("--headroom", type=float, default=d.headroom, help="fraction of memory kept free")
    p.add_argument("--overhead-gib", type=float, default=d.overhead_gib, help="per-GPU fixed overhead")
    p.add_argument("--peak-tflops", type=float, default=d.peak_tflops, help="dense bf16 peak per GPU")
    p.add_argument("--mfu", type=float, default=d.mfu, help="assumed model-FLOPs utilisation (train, prefill)")
    p.add_argument("--hbm-tbps", type=float, default=d.hbm_tbps, help="HBM bandwidth per GPU (TB/s)")
    p.add_argument("--hbm-efficiency", type=float, default=d.hbm_efficiency, help="achieved fraction in decode")
    p.add_argument("--tp-allreduce-us", type=float, default=d.tp_allreduce_us, help="decode TP all-reduce latency")
    p.add_argument("--nvlink-gbps", type=float, default=d.nvlink_gbps, help="intra-node collective GB/s")
    p.add_argument("--network-gbps", type=float, default=d.network_gbps, help="inter-node GB/s per GPU")
    p.add_argument("--layer-spec", choices=["te", "local"], default="te",
                   help="te: Transformer Engine layers (the Docker image); local: megatron's local spec with torch "
                        "norms (no TE: more activations, no sequence parallelism)")
    return p.parse_intermixed_args(argv)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except ConfigError as e:  # a missing or invalid config: one line naming the file or key
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    a = parse_args(argv)
    hw = Hardware(memory_gib=a.gpu_mem_gib, headroom=a.headroom, overhead_gib=a.overhead_gib,
                  peak_tflops=a.peak_tflops, mfu=a.mfu, hbm_tbps=a.hbm_tbps, hbm_efficiency=a.hbm_efficiency,
                  tp_allreduce_us=a.tp_allreduce_us, nvlink_gbps=a.nvlink_gbps, network_gbps=a.network_gbps,
                  gpus_per_node=a.gpus_per_node)
    if a.readme:
        print(readme_table(hw))
        return 0
    name = a.model or os.path.splitext(os.path.basename(a.config))[0]
    cfg = load(config_path(a.model) if a.model else a.config, a.overrides)
    gpus = a.gpus or SCALING_RUNS.get(name) or a.gpus_per_node
    print(plan_text(name, cfg, gpus, hw, a.all, a.layer_spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
