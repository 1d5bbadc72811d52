"""The fused output layer (``model.fused_output``: log-probs from hidden x W in the kernel, no logits) gives the loss,
metrics, every gradient and the scoring log-probs of the logits path (fp32, <= 1e-6 relative), with the padded
vocabulary (real 100 of 112 rows) left out on both paths and its output-weight gradient rows exactly 0. Checked for
RIEL rows (GRPO + KL + SFT, temperature 0.7; the loss as the kernel's epilogue and as a plain callable on the
log-probs), prompt-sharing rows and MEF's SFT microbatches; on one process with tied and with untied embeddings,
at TP=2 (vocabulary-sharded weight, padding on rank 1's shard) and PP=2 with tied embeddings (the last stage's
embedding copy)."""
import pytest

from .launcher import spawn

CASES = [(1, []), (1, ["model.tie_word_embeddings=false"]),
         (2, ["parallel.tensor_model_parallel_size=2", "model.tie_word_embeddings=false"]),
         (2, ["parallel.pipeline_model_parallel_size=2"])]


def _rel_diff(a, b):
    assert set(a) == set(b)
    scale = max(v.abs().max().item() for v in a.values())
    assert scale > 1e-4  # a real gradient
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


@pytest.mark.parametrize("world,overrides", CASES, ids=["tied", "untied", "tp2-untied", "pp2-tied"])
def test_fused_output_matches_logits_path(world, overrides):
    r = spawn("tests.distributed.fused_workers:fused_vs_logits", world, overrides=overrides)[0]
    for work, runs in r.items():
        ref = runs["logits"]
        for name, run in runs.items():
            if name == "logits":
                continue
            assert set(run["metrics"]) == set(ref["metrics"]), (work, name)
            for k, v in ref["metrics"].items():
                assert abs(run["metrics"][k] - v) <= 1e-6 * max(1.0, abs(v)), (work, name, k, run["metrics"][k], v)
            assert _rel_diff(ref["grads"], run["grads"]) <= 1e-6, (work, name)
            assert run["padded_grad"] == 0.0 and ref["padded_grad"] == 0.0, (work, name)
            if ref["logps"] is not None:  # scoring (forward_logprobs) on rank 0 when it is the last stage
                for a, b in zip(ref["logps"], run["logps"]):
                    assert (a - b).abs().max().item() <= 1e-5, (work, name)
        assert ref["metrics"]["loss"] != 0.0
