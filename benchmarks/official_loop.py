"""The official per-sample attack loops (``whitebox_attack_pgd.py``; paper Algorithm 3 for FGSM), one sample
at a time with two forward passes per PGD iteration: the baseline the batched attacks are timed against.

Kept apart from the tests' own references on purpose: a benchmark never imports test code.
"""
from __future__ import annotations

import torch


def prey_other(m, ref, p0, p1):
    s0, s1 = m(ref, p0), m(ref, p1)
    return (p1, p0, s0) if int((s0 > s1).item()) == 1 else (p0, p1, s1)  # official: rank = int(s0 > s1)


def official_pgd(m, ref, p0, p1, eps: float, alpha: float, max_iters: int):
    """(adv, iterations) of the official PGD for one sample (iterations = max_iters when no flip was seen)."""
    x_orig, _, s_other = prey_other(m, ref, p0, p1)
    x_i = x_orig.clone()
    for i in range(max_iters):
        x_i.requires_grad_(True)
        s_adv = m(ref, x_i)
        if s_adv > s_other:
            return x_i.detach(), i
        loss = torch.nn.functional.mse_loss(s_other / (s_other + s_adv), torch.ones(1, dtype=s_adv.dtype))
        grad, = torch.autograd.grad(loss, x_i)
        eta = torch.clamp(x_i + alpha * grad.sign() - x_orig, min=-eps, max=eps)
        x_i = torch.clamp(x_orig + eta, min=-1, max=1).detach()
    return x_i, max_iters


def official_fgsm(m, ref, p0, p1, step: float = 1e-4, max_eps: float = 0.05):
    """(eps, adv) of Algorithm 3 for one sample: the first grid epsilon whose signed-gradient step flips, or None."""
    x, _, s_other = prey_other(m, ref, p0, p1)
    x = x.clone().requires_grad_(True)
    s = m(ref, x)
    loss = torch.nn.functional.mse_loss(s_other / (s_other + s), torch.ones(1, dtype=s.dtype))
    grad, = torch.autograd.grad(loss, x)
    for k in range(1, int(round(max_eps / step)) + 1):
        adv = torch.clamp(x.detach() + k * step * grad.sign(), -1, 1)
        if m(ref, adv) > s_other:
            return k * step, adv
    return None, None
