"""One RIEL step of ours (single-expert and MEML modes) against TRL's ``GRPOTrainer`` on the same model shape, prompt
length and completion budget, in one run, steps interleaved (ours single, ours MEML, TRL, ours single, ...).

    python -m megatron_meml.bench.vs_trl [--steps 5] [--warmup 1] [--engines continuous,vllm] [--skip-trl]

Shape: Qwen2, 4 layers, hidden 128, FFN 352, 4 heads, 2 KV groups, vocab 512, random weights, fp32, CPU, torch's
default thread count on every side (``--threads N`` pins N). A step: 8 prompts of ~100 tokens, G = 8 completions
each of at most 64 tokens, temperature 1, no top-k/top-p, the same cheap verifiable reward on both sides
(``crc32(text) & 1``: 0/1 with variance inside groups), no reference model (beta = 0), one optimizer step (Adam,
lr 1e-6, grad clip 1.0).
  * ours, single expert, one side per ``--engines`` entry: N = 1 -> 64 completions; ``RielScheduler.step``
    (generate with that ``rollout.engine``, score, advantages, pack) + ``forward_backward`` + optimizer step (+ the
    vLLM refit), the RIEL stage's step body;
  * ours, MEML (first engine): N = 3 expert prompts -> 192 completions, inter-expert KL and the hard-example buffer
    on (paper defaults K = 6, B = 64); reported as time per completion token relative to single-expert;
  * TRL 1.16 ``GRPOTrainer``: ``per_device_train_batch_size=64, num_generations=8, max_completion_length=64,
    gradient_checkpointing=False`` (TRL's default is True, which would recompute the forward), ``bf16=False``,
    ``use_cpu=True``, loss ``dapo`` (token-level, its default), ``beta=0``, ``num_iterations=1`` (on-policy: no
    extra old-log-prob forward), generation by transformers ``generate`` (TRL's default, no vLLM); its tokenizer is
    a 512-word WordLevel vocabulary (prompt = 100 space-separated words = 100 tokens).
TRL runs in its own virtual environment (``.venv-trl``, created on first use: a venv that sees this project's
``.venv`` site-packages -- so the same torch and transformers builds -- plus ``pip install trl==1.16.0``); it is
not a test dependency. It is driven as a subprocess that runs one ``trainer.train()`` and blocks before each step
until this process says go, so the steps interleave with ours under the same machine load.

Ours trains in microbatches of ``--micro-batch`` x 256 padded tokens (default 16 -> 4096: smaller microbatches keep
activations and logits in cache and pad less). Reported per side: completion tokens / step time (best and median
over ``--steps`` timed steps after ``--warmup``), the generate+score and train split; for MEML also the per-phase
ratios to single-expert, the padded forward tokens per completion token and the loss tokens of each term (GRPO,
inter-expert KL, hard-example SFT). The headline, per engine: the **median over the interleaved rounds of the
paired ratio** (our step and TRL's run back to back, so a slow phase of a shared machine hits both), with its min
and max; best over best is printed beside it, labelled.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import zlib

from megatron_meml.algo.objective import riel_loss
from megatron_meml.backend.runtime import parallel
from megatron_meml.backend.train import model as M
from megatron_meml.backend.train import optimizer as O
from megatron_meml.backend.train.step import forward_backward
from megatron_meml.bench.harness import median_paired
from megatron_meml.config import load_config
from megatron_meml.data.tokenizer import ByteTokenizer
from megatron_meml.paths import REPO
from megatron_meml.rollout.scheduler import build_riel_scheduler
from megatron_meml.types import Record

TRL_VERSION = "1.16.0"
TAG = "@@bench "  # prefix of the TRL worker's result lines (the trainer prints its own dicts to stdout)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--experts", type=int, default=3, help="N of the MEML mode")
    p.add_argument("--prompt", type=int, default=100, help="prompt tokens (approximately, ours: byte tokenizer)")
    p.add_argument("--max-new", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ffn", type=int, default=352)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads on every side (0 = torch's default, what a user gets: the headline)")
    p.add_argument("--engines", default="continuous",
                   help="comma list of rollout.engine values: one single-expert side of ours per engine (MEML: the "
                        "first)")
    p.add_argument("--micro-batch", type=int, default=16,
                   help="ours: data.micro_batch_size (x seq_length 256 = padded tokens per microbatch)")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--skip-meml", action="store_true")
    p.add_argument("--trl-python", default=None, help="python of an environment with trl (default: .venv-trl)")
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def reward_bit(text: str) -> float:
    """The shared cheap verifiable reward: 0/1 from the text's CRC (deterministic, varies within a group)."""
    return float(zlib.crc32(text.encode("utf-8", "replace")) & 1)


# ------------------------------------------------------------------------------------------------------- ours
class Ours:
    """One of our RIEL setups (single-expert or MEML) with its own model, optimizer and scheduler."""

    def __init__(self, a, experts: int, engine: str):
        from functools import partial

        prompts = ["You are expert zero; answer briefly.", "You are expert one; reason step by step.",
                   "You are expert two; split the problem into parts."][:experts]
        while len(prompts) < experts:
            prompts.append(f"You are expert {len(prompts)}.")
        self.cfg = cfg = load_config(None, [
            f"model.num_layers={a.layers}", f"model.hidden_size={a.hidden}", f"model.ffn_hidden_size={a.ffn}",
            f"model.num_attention_heads={a.heads}", f"model.num_query_groups={a.kv_heads}", "model.vocab_size=259",
            f"model.padded_vocab_size={a.vocab}", "model.max_position_embeddings=1024", "data.tokenizer=byte",
            "data.seq_length=256", f"data.micro_batch_size={a.micro_batch}", "data.global_batch_size=64",
            f"rollout.max_new_tokens={a.max_new}",
            f"rollout.engine={engine}", "rollout.token_budget=65536", "rollout.temperature=1.0",
            f"riel.questions_per_step={a.questions}", f"riel.group_size={a.group}", "riel.lr=1e-6",
            "optimizer.lr_warmup_steps=0", f"seed={a.seed}"])
        self.chunks = M.build_model(cfg)
        self.opt, self.sched_lr = O.build_optimizer(cfg, self.chunks, lr=1e-6, total_steps=1000)
        self.tok = ByteTokenizer()
        self.sched = build_riel_scheduler(cfg, self.chunks, self.tok, prompts, lambda text, rec: reward_bit(text))
        self.loss_fn = partial(riel_loss, riel_cfg=cfg.riel)
        self.O = O
        # questions whose rendered prompt (system + user turn + headers) is about a.prompt tokens
        probe = self.sched.renderer.prompt(Record("x", "", "", ""), 0)
        body = max(1, a.prompt - len(probe))
        g = __import__("random").Random(a.seed)
        words = "alpha beta gamma delta sum of the two numbers and then what is left over".split()

        def question(i):
            s = f"Q{i}:"
            while len(s) < body:
                s += " " + g.choice(words)
            return s[:body]

        self.records = [Record(f"q{i}", question(i), str(i % 10), "The answer is 7.") for i in range(4096)]
        self.step_no = 0

    def step(self):
        n = self.cfg.riel.questions_per_step
        recs = self.records[self.step_no * n:(self.step_no + 1) * n]
        t0 = time.perf_counter()
        out = self.sched.step(recs, self.step_no)
        t1 = time.perf_counter()
        self.O.zero_grads(self.chunks, self.opt)
        forward_backward(self.chunks, out.microbatches, self.loss_fn, temperature=self.cfg.rollout.temperature)
        self.O.optimizer_step(self.opt, self.sched_lr)
        refit = getattr(self.sched.engine, "refit", None)  # rollout.engine=vllm: its own weights copy, as in a run
        if refit is not None:
            refit()
        t2 = time.perf_counter()
        self.step_no += 1
        completions = [ro for g in out.groups for ro in g.rollouts]
        prompt_lens = [len(ro.request.prompt_ids) for ro in completions]
        return {"seconds": t2 - t0, "gen_seconds": t1 - t0, "train_seconds": t2 - t1,
                "completion_tokens": sum(len(ro.response_ids) for ro in completions),
                "completions": len(completions), "prompt_tokens": sum(prompt_lens) / len(prompt_lens),
                "kl_pairs": len(out.kl_pairs), "sft": len(out.sft_examples),
                "grpo_tokens": out.stats["tokens/grpo"], "kl_tokens": out.stats["tokens/kl"],
                "sft_tokens": out.stats["tokens/sft"], "forward_tokens": out.stats["tokens/forward"],
                "microbatches": len(out.microbatches)}


# -------------------------------------------------------------------------------------------------------- TRL
def trl_python(a) -> str:
    """The python of an environment with TRL: ``--trl-python``, or ``.venv-trl`` (created on first use: it sees this
    ``.venv``'s packages, editable installs of ours included, through ``site.addsitedir`` in a .pth file)."""
    if a.trl_python:
        return a.trl_python
    venv = os.path.join(REPO, ".venv-trl")
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    base = subprocess.run([sys.executable, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "meml_base.pth"), "w") as f:  # addsitedir also runs base's own .pth files
        f.write(f"import site; site.addsitedir({base!r})\n")
    ok = subprocess.run([py, "-c", f"import trl, sys; sys.exit(trl.__version__ != '{TRL_VERSION}')"],
                        capture_output=True).returncode == 0
    if not ok:
        print(f"installing trl=={TRL_VERSION} into {venv} (once; shares this .venv's torch and transformers)",
              flush=True)
        subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "-q", f"trl=={TRL_VERSION}"],
                       check=True)
    return py


def trl_worker(a) -> None:
    """Runs inside the TRL environment: one GRPOTrainer.train(); before each step it reads a line from stdin, after
    it prints one JSON line (step seconds, generate+score seconds, completion tokens)."""
    import tempfile
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    vocab = {f"w{i}": i for i in range(a.vocab - 2)}
    vocab.update({"<pad>": a.vocab - 2, "<eos>": a.vocab - 1})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="w0")
    tok.padding_side = "left"
    torch.manual_seed(a.seed)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=a.vocab - 2,
        eos_token_id=a.vocab - 1, bos_token_id=None, torch_dtype="float32"))
    g = torch.Generator().manual_seed(a.seed)
    n_prompts = a.questions * (a.warmup + a.steps + 1)
    prompts = [" ".join(f"w{int(i)}" for i in torch.randint(0, a.vocab - 2, (a.prompt,), generator=g))
               for _ in range(n_prompts)]
    count = {"tokens": 0, "gen": 0.0}

    def reward(completions, completion_ids=None, **_):
        count["tokens"] += sum(len(c) for c in completion_ids)
        return [reward_bit(c) for c in completions]

    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=a.questions * a.group,
                     num_generations=a.group, max_completion_length=a.max_new, gradient_checkpointing=False,
                     bf16=False, use_cpu=True, learning_rate=1e-6, logging_steps=1, report_to="none",
                     save_strategy="no", max_steps=a.warmup + a.steps, shuffle_dataset=False, seed=a.seed,
                     temperature=1.0, beta=0.0, num_iterations=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok)
    inner = trainer._generate_and_score_completions

    def timed(*args, **kw):
        t = time.perf_counter()
        try:
            return inner(*args, **kw)
        finally:
            count["gen"] += time.perf_counter() - t

    trainer._generate_and_score_completions = timed

    class Sync(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sys.stdin.readline()
            count.update(tokens=0, gen=0.0, t0=time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            dt = time.perf_counter() - count["t0"]
            print(TAG + json.dumps({"seconds": dt, "gen_seconds": count["gen"], "train_seconds": dt - count["gen"],
                              "completion_tokens": count["tokens"], "completions": a.questions * a.group,
                              "prompt_tokens": a.prompt}), flush=True)

    trainer.add_callback(Sync())
    print(TAG + json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "config": {k: getattr(cfg, k) for k in ("per_device_train_batch_size", "num_generations",
                                                              "max_completion_length", "loss_type", "beta",
                                                              "gradient_checkpointing", "optim", "use_vllm",
                                                              "num_iterations", "scale_rewards")}}), flush=True)
    trainer.train()


class TRLSide:
    def __init__(self, a):
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if a.threads > 0:
            env["OMP_NUM_THREADS"] = str(a.threads)
        # -m from the checkout: the TRL environment sees this .venv's packages, not its editable install of ours
        args = [trl_python(a), "-m", "megatron_meml.bench.vs_trl", "--trl-worker"] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
            if k in ("steps", "warmup", "questions", "group", "prompt", "max_new", "layers", "hidden", "ffn", "heads",
                     "kv_heads", "vocab", "threads", "seed")]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self.info = self._read()

    def _read(self):
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"the TRL worker exited (code {self.p.wait()}); run with --skip-trl to bench ours")
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])

    def step(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return self._read()

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=120)


# ------------------------------------------------------------------------------------------------------- main
def _summary(name, runs):
    rate = [r["completion_tokens"] / r["seconds"] for r in runs]
    best = max(range(len(runs)), key=lambda i: rate[i])
    b = runs[best]
    print(f"{name:26s} completion tok/s best {rate[best]:7.1f} median {statistics.median(rate):7.1f} | best step "
          f"{b['seconds']:.2f}s = gen+score {b['gen_seconds']:.2f}s + train {b['train_seconds']:.2f}s | "
          f"{b['completions']} completions, {b['completion_tokens']} tokens, prompts ~{b['prompt_tokens']:.0f} tok")
    print(f"{'':26s} every step: " + ", ".join(f"{x:.0f} tok/s ({r['gen_seconds']:.2f}+{r['train_seconds']:.2f}s)"
                                              for x, r in zip(rate, runs)))
    return max(rate), statistics.median(rate), min(r["seconds"] / r["completion_tokens"] for r in runs), \
        statistics.median(r["seconds"] / r["completion_tokens"] for r in runs)


def _meml_breakdown(single, meml):
    """Where MEML's time per completion token goes against single-expert: the generate+score and train phases
    (medians of seconds per completion token), and the training rows MEML adds beyond its completions."""
    def med(runs, key):
        return statistics.median(r[key] / r["completion_tokens"] for r in runs)

    def avg(runs, key):
        return sum(r[key] for r in runs) / len(runs)

    print(f"MEML / single-expert per completion token, median: generate+score "
          f"{med(meml, 'gen_seconds') / med(single, 'gen_seconds'):.3f}, train "
          f"{med(meml, 'train_seconds') / med(single, 'train_seconds'):.3f}; forward (padded) tokens per completion "
          f"token: single {med(single, 'forward_tokens'):.2f}, MEML {med(meml, 'forward_tokens'):.2f} "
          f"({avg(single, 'microbatches'):.1f} / {avg(meml, 'microbatches'):.1f} microbatches)")
    print(f"MEML loss tokens per step (mean): GRPO {avg(meml, 'grpo_tokens'):.0f}, inter-expert KL "
          f"{avg(meml, 'kl_tokens'):.0f} (+{100 * avg(meml, 'kl_tokens') / avg(meml, 'grpo_tokens'):.1f}%, "
          f"{avg(meml, 'kl_pairs'):.1f} questions), hard-example SFT {avg(meml, 'sft_tokens'):.0f} "
          f"({avg(meml, 'sft'):.1f} examples fired)")


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.trl_worker:
        trl_worker(a)
        return 0
    import torch

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    parallel.initialize(1, 1, seed=a.seed)
    engines = [e for e in a.engines.split(",") if e]
    single = {e: f"ours single-expert ({e})" for e in engines}
    sides = {single[e]: Ours(a, 1, e) for e in engines}
    if not a.skip_meml:
        sides[f"ours MEML N={a.experts}"] = Ours(a, a.experts, engines[0])
    trl = None
    if not a.skip_trl:
        trl = TRLSide(a)
        sides["TRL GRPOTrainer"] = trl
        print(f"TRL worker: torch {trl.info['torch']}, {trl.info['threads']} thread(s), config {trl.info['config']}")
    runs = {k: [] for k in sides}
    for i in range(a.warmup + a.steps):
        for k, side in sides.items():
            r = side.step()
            if i >= a.warmup:
                runs[k].append(r)
    if trl is not None:
        trl.close()
    print(f"shape: Qwen2 {a.layers} layers, hidden {a.hidden}, ffn {a.ffn}, heads {a.heads}/{a.kv_heads}, vocab "
          f"{a.vocab}; {a.questions} prompts x G={a.group}, <= {a.max_new} new tokens, fp32, {threads} torch "
          f"thread(s) ({'pinned' if a.threads > 0 else 'torch default'}), {a.steps} timed steps after {a.warmup} "
          f"warm-up, interleaved; ours: rollout.engine {', '.join(engines)}")
    res = {k: _summary(k, v) for k, v in runs.items()}
    base = single[engines[0]]
    meml = res.get(f"ours MEML N={a.experts}")
    if meml is not None:
        _meml_breakdown(runs[base], runs[f"ours MEML N={a.experts}"])
        print(f"MEML / single-expert time per completion token: best {meml[2] / res[base][2]:.3f}  "
              f"median {meml[3] / res[base][3]:.3f}")
    parallel.destroy()
    if trl is not None:
        t = res["TRL GRPOTrainer"]
        for e in engines:
            pairs = [(o["completion_tokens"] / o["seconds"], t_["completion_tokens"] / t_["seconds"])
                     for o, t_ in zip(runs[single[e]], runs["TRL GRPOTrainer"])]
            paired = sorted(x / y for x, y in pairs)
            print(f"headline ({threads} torch threads, {'pinned' if a.threads > 0 else 'torch default'}; median "
                  f"paired ratio over {len(pairs)} interleaved rounds), {single[e]} / TRL: "
                  f"{median_paired(pairs):.3f} (min {paired[0]:.3f}, max {paired[-1]:.3f})")
            print(f"{single[e]} / TRL completion tokens per second (best over best): {res[single[e]][0] / t[0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
