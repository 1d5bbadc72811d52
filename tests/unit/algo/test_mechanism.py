"""A regression test of the MEML-GRPO mechanism, end to end through the real RIEL code path (scheduler, advantages,
E+/E- selection, hard-example buffer, aggregation weights, riel_loss) on a policy small enough to train in seconds.

The policy is a table of logits over 4 answers per (problem family, expert): the testbed's designed heterogeneity
in miniature. Expert e was taught a wrong answer on family e (p(correct) = 0.02, p(its mistake) = 0.94) and is
reliable elsewhere (p(correct) = 0.7). Per step: 3 questions (one per family) x 3 experts x G = 8 sampled answers,
one Adam step; 30 steps. (Seeds 0-3 give weak-expert p(correct) 0.83-0.90 with the KL, 0.43-0.70 without.)
What must hold with the default objective (riel.* defaults, λ1 = riel.lambda_kl, grpo normaliser):
  * training reward rises; every expert's greedy answer on its weak family turns correct;
  * the inter-expert KL transfers knowledge: with it, the weak experts' p(correct) on their weak families ends
    higher than with GRPO alone (same seeds), because E+ is a reliable expert and O+ its correct answers.
"""
import torch

from megatron_meml.algo.objective import riel_loss
from megatron_meml.algo.sft_buffer import HardExampleBuffer
from megatron_meml.config.schema import RIELConfig, RolloutConfig
from megatron_meml.rollout.sampling import request_uniforms
from megatron_meml.rollout.scheduler import RielScheduler
from megatron_meml.types import Record, Rollout

F = N = 3          # families, experts
A = 4              # answers; family f's correct answer is 30 + f, its teacher's mistake 30 + (f + 1) % A
FAM, EXP, ANS = 10, 20, 30


def initial_logits() -> torch.Tensor:
    p = torch.full((F, N, A), 0.1)
    for f in range(F):
        p[f, :, f] = 0.7
        p[f, f] = 0.02
        p[f, f, (f + 1) % A] = 0.94
    return (p / p.sum(-1, keepdim=True)).log()


class TablePolicy:
    """Engine + renderer + log-prob model of the table (prompt = [family token, expert token], answer = 1 token)."""

    def __init__(self, logits):
        self.w = logits.clone().requires_grad_(True)

    def prompt(self, record, expert):
        return [FAM + record.meta["family"], EXP + expert]

    def example(self, record, expert):
        return self.prompt(record, expert) + [ANS + record.meta["family"]], [0, 0, 1]

    def generate(self, requests, params):
        fam = torch.tensor([r.prompt_ids[0] - FAM for r in requests])
        exp = torch.tensor([r.prompt_ids[1] - EXP for r in requests])
        with torch.no_grad():
            logp = torch.log_softmax(self.w[fam, exp], -1)
        u = request_uniforms([r.seed for r in requests], 1)
        ans = torch.searchsorted(logp.double().exp().cumsum(-1), u, right=True)[:, 0].clamp(max=A - 1)
        return [Rollout(r, [ANS + a], [float(logp[i, a])], text=str(a), finish_reason="eos")
                for i, (r, a) in enumerate(zip(requests, ans.tolist()))]

    def logp(self, mb):
        """[B, S] log-probs of the targets: only slot 1 (the answer after [family, expert]) carries one."""
        out = torch.zeros(mb.tokens.shape)
        lp = torch.log_softmax(self.w[mb.tokens[:, 0] - FAM, mb.tokens[:, 1] - EXP], -1)
        ans = (mb.tokens[:, 2] - ANS).clamp(0, A - 1)
        return out.index_put((torch.arange(len(ans)), torch.ones_like(ans)), lp.gather(1, ans[:, None])[:, 0])

    def p_correct(self, f, e) -> float:
        return float(torch.softmax(self.w[f, e].detach(), -1)[f])


def train(inter_expert_kl: bool, steps: int = 30, seed: int = 0):
    riel = RIELConfig(group_size=8, inter_expert_kl=inter_expert_kl, buffer_capacity=8, skip_zero_advantage=True)
    policy = TablePolicy(initial_logits())
    records = [Record(id=f"q{i}", question="", answer=str(i % F), solution="", meta={"family": i % F})
               for i in range(3)]
    sched = RielScheduler(policy, policy, lambda text, rec: float(text == rec.answer), riel,
                          RolloutConfig(max_new_tokens=1), num_experts=N, max_tokens_per_microbatch=4096, pad_id=0,
                          buffer=HardExampleBuffer.from_config(riel, seed=seed), seed=seed)
    opt = torch.optim.Adam([policy.w], lr=0.15)
    rewards = []
    for step in range(steps):
        out = sched.step(records, step)
        rewards.append(out.stats["reward/mean"])
        opt.zero_grad()
        sum(riel_loss(policy.logp(mb), mb, riel, impl="torch")[0] for mb in out.microbatches).backward()
        opt.step()
    return policy, rewards


def test_riel_learns_and_the_inter_expert_kl_transfers_knowledge():
    with_kl, rewards = train(inter_expert_kl=True)
    grpo_only, _ = train(inter_expert_kl=False)
    assert sum(rewards[-8:]) / 8 >= sum(rewards[:8]) / 8 + 0.2, rewards
    for f in range(F):
        assert with_kl.p_correct(f, f) > 0.6, (f, with_kl.p_correct(f, f))      # greedy answer now correct
        assert with_kl.p_correct(f, f) > grpo_only.p_correct(f, f) + 0.15, f     # the KL taught it
        assert all(with_kl.p_correct(f, e) > 0.7 for e in range(N) if e != f)  # strong experts stay strong
