"""The fused output layer (``model.fused_output``: log-probs from hidden x W in the kernel, no logits) gives the loss,
metrics, every gradient and the scoring log-probs of the logits path (fp32, <= 1e-6 relative), with the padded
vocabulary (real 100 of 112 rows) left out on both paths and its output-weight gradient rows exactly 0.

Workloads: RIEL rows (GRPO + KL + SFT, temperature 0.7; the loss as the kernel's epilogue and as a plain callable on
the log-probs), prompt-sharing rows (segment masks) and MEF's SFT microbatches. Layouts: one process with tied and
with untied embeddings; TP=2 untied (vocabulary-sharded output weight, the padding on rank 1's shard); PP=2 tied
(the last stage's copy of the embedding, its gradient all-reduced with the first stage's). Two spawns in all.
Prompt-sharing rows at TP=2 / PP=2 on the fused path are checked against flat rows by test_shared_rows.py.
"""
import pytest

from .launcher import spawn

FULL = {"riel": ["epilogue", "plain", "logits"], "shared": ["epilogue", "logits"], "sft": ["epilogue", "logits"]}
CASES = {
    "single-tied-untied": (1, dict(models=[[], ["model.tie_word_embeddings=false"]], plans=[FULL, FULL])),
    # one 2-process spawn, megatron's groups re-formed between the two layouts
    "tp2-untied-then-pp2-tied": (2, dict(
        models=[["parallel.tensor_model_parallel_size=2", "model.tie_word_embeddings=false"],
                ["parallel.pipeline_model_parallel_size=2"]],
        plans=[{"riel": ["epilogue", "logits"], "sft": ["epilogue", "logits"]}, {"riel": ["epilogue", "logits"]}])),
}


def _rel_diff(a, b):
    assert set(a) == set(b)
    scale = max(v.abs().max().item() for v in a.values())
    assert scale > 1e-4  # a real gradient
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


@pytest.mark.parametrize("case", list(CASES))
def test_fused_output_matches_logits_path(case):
    world, kwargs = CASES[case]
    result = spawn("tests.distributed.fused_workers:fused_vs_logits", world, **kwargs)[0]
    assert len(result) == len(kwargs["models"])
    for model, works in result.items():
        assert set(works) == set(kwargs["plans"][model])
        for work, runs in works.items():
            ref = runs["logits"]
            assert ref["metrics"]["loss"] != 0.0
            for name, run in runs.items():
                where = (model, work, name)
                assert set(run["metrics"]) == set(ref["metrics"]), where
                for k, v in ref["metrics"].items():
                    assert abs(run["metrics"][k] - v) <= 1e-6 * max(1.0, abs(v)), (where, k, run["metrics"][k], v)
                assert _rel_diff(ref["grads"], run["grads"]) <= 1e-6, where
                assert run["padded_grad"] == 0.0, where
                if ref["logps"] is not None:  # scoring (forward_logprobs) when rank 0 is the last stage
                    assert len(ref["logps"]) == len(run["logps"]) > 0
                    for a, b in zip(ref["logps"], run["logps"]):
                        assert (a - b).abs().max().item() <= 1e-5, where
