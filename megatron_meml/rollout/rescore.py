"""The training forward's log-probs of rollouts' sampled tokens (the ``old_logp`` of on-policy GRPO), for the
mismatch telemetry and TIS of ``algo/rollout_correction.py``.

    rescorer = RolloutRescorer(chunks, pad_id, max_tokens, temperature)
    logps = rescorer(rollouts)    # [[log π_old(o_t | prompt, o_<t) for t in response] per rollout], last PP stage

One forward (no gradient) over prompt + response rows, packed longest-first into microbatches of at most
``max_tokens`` padded tokens, through ``backend.train.step.forward_logprobs`` (the same output layer and temperature as
the training step). Collective over the model-parallel group: every rank of it passes the same rollouts. Returns
None off the last pipeline stage (where no loss is computed and the values are never read).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from ..backend.train.step import forward_logprobs
from ..types import Rollout, TokenKind
from .packing import TrainSequence, collate


class RolloutRescorer:
    """``rollouts -> [log-probs of each response token]`` under the current weights (module docstring). Also the
    asynchronous stage's KL teacher (``kind=TokenKind.KL``: the O+ responses under P+)."""

    def __init__(self, chunks, pad_id: int, max_tokens: int, temperature: float, kind: TokenKind = TokenKind.GRPO):
        self.chunks, self.pad_id, self.kind = chunks, int(pad_id), kind
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)

    def __call__(self, rollouts: Sequence[Rollout]) -> Optional[List[List[float]]]:
        if not rollouts:
            return []
        seqs = [TrainSequence.from_prompt_response(ro.request.prompt_ids, ro.response_ids, self.kind)
                for ro in rollouts]
        groups: List[List[int]] = [[]]
        for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i].tokens), i)):
            g = groups[-1]
            if g and (len(g) + 1) * len(seqs[g[0]].tokens) > self.max_tokens:
                groups.append([])
            groups[-1].append(i)
        logps = forward_logprobs(self.chunks, [collate([seqs[i] for i in g], self.pad_id) for g in groups],
                                 temperature=self.temperature)
        if logps is None:
            return None
        out: List[List[float]] = [[] for _ in rollouts]
        for g, lp in zip(groups, logps):
            for b, i in enumerate(g):
                P, L = len(rollouts[i].request.prompt_ids), len(rollouts[i].response_ids)
                out[i] = lp[b, P - 1:P - 1 + L].tolist()  # position t predicts token t + 1
        return out
