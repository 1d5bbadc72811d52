"""The RIEL objective against hand-computed values, and the KL gradient reaching only the E- (student) branch."""
import math

import torch

from megatron_meml.algo.objective import riel_loss
from megatron_meml.config import load_config
from megatron_meml.types import MicroBatch, TokenKind


def _mb(kind, logp_old, adv, weight):
    n = len(kind)
    return MicroBatch(tokens=torch.zeros(1, n, dtype=torch.long), loss_mask=torch.ones(1, n),
                      kind=torch.tensor([kind], dtype=torch.int8), weight=torch.tensor([weight]),
                      advantages=torch.tensor([adv]), old_logp=torch.tensor([logp_old]))


def test_hand_computed_terms():
    cfg = load_config(None, []).riel  # eps 0.2 / 0.2, k1, beta 0
    logp = torch.tensor([[-1.0, -1.0, -2.0, -0.5]], requires_grad=True)
    mb = _mb([TokenKind.GRPO, TokenKind.GRPO, TokenKind.KL, TokenKind.SFT],
             [-1.5, -0.9, -1.2, 0.0], [1.0, -2.0, 0.0, 0.0], [0.5, 0.5, 0.25, 2.0])
    loss, m = riel_loss(logp, mb, cfg, impl="torch")
    r0 = math.exp(0.5)                    # > 1.2 with A > 0 -> clipped at 1.2
    g0 = -min(r0 * 1.0, 1.2 * 1.0)
    r1 = math.exp(-0.1)                   # A < 0: -min(r A, clip(r) A) = -min(-1.8097, -1.8) = 1.8097
    g1 = -min(r1 * -2.0, max(min(r1, 1.2), 0.8) * -2.0)
    kl = -1.2 - (-2.0)                    # k1: teacher - student
    sft = 0.5
    expected = 0.5 * g0 + 0.5 * g1 + 0.25 * kl + 2.0 * sft
    assert abs(loss.item() - expected) < 1e-6
    assert abs(m["loss/grpo"].item() - (0.5 * g0 + 0.5 * g1)) < 1e-6
    assert abs(m["loss/kl"].item() - 0.25 * kl) < 1e-6 and abs(m["loss/sft"].item() - 1.0) < 1e-6
    assert m["count/clipped"].item() == 1.0 and m["count/grpo"].item() == 2.0
    loss.backward()
    # clipped token: no gradient; KL token: d/dlogp (teacher - logp) * w = -0.25; SFT: -w = -2
    assert logp.grad[0, 0].item() == 0.0
    assert abs(logp.grad[0, 2].item() + 0.25) < 1e-7 and abs(logp.grad[0, 3].item() + 2.0) < 1e-7


def test_kl_gradient_reaches_only_the_student_branch():
    """old_logp (the P+ teacher term) is data, never a graph input: only the P- forward gets a gradient."""
    cfg = load_config(None, ["riel.kl_estimator=k3"]).riel
    teacher = torch.tensor([[-0.7, -1.1]], requires_grad=True)
    student = torch.tensor([[-1.0, -0.9]], requires_grad=True)
    mb = _mb([TokenKind.KL, TokenKind.KL], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0])
    mb.old_logp = teacher.detach()
    loss, _ = riel_loss(student, mb, cfg, impl="torch")
    loss.backward()
    assert teacher.grad is None
    d = student.detach() - teacher.detach()
    assert torch.allclose(student.grad, torch.expm1(d), atol=1e-7)  # d/dd (e^d - 1 - d) = e^d - 1
    # minimising pulls the student's log-prob of O+ up (gradient negative where d < 0)
    assert student.grad[0, 0] < 0
