"""Our attacks and protocols against plain restatements of their sources (read, never copied).

Square l_2 (AutoAttack, ``fra31/auto-attack``, ``autoattack/square.py``, the ``L2`` branch of
``attack_single_run``): the window's new perturbation is ``eta`` times random signs plus the old window's
per-channel direction, normalised per channel and scaled to ``sqrt(max(eps^2 - ||delta||^2, 0) / c +
||delta * mask||^2)``, where both norms are ``lp_norm``: over all channels of the image (``(x ** 2).view(n,
-1).sum(-1).sqrt()``); the second window is zeroed and the whole perturbation renormalised to eps.
"""
from __future__ import annotations

import math

import pytest
import torch

from lit_attacks.attacks import square as sq


class _FixedDraws:
    """A stand-in for a sample stream: hands out fixed uniforms."""

    def __init__(self, u: torch.Tensor) -> None:
        self.u = u

    def uniform(self, shape, rows=None, dtype=torch.float64):
        return self.u.view(-1, *shape).to(dtype)


def _autoattack_l2_step(x_best, x, eps, s, vh, vw, vh2, vw2, eta, signs):
    """One l_2 proposal of AutoAttack's Square for one image (C, H, W), restated with its positions, pattern and
    signs given."""
    c = x.shape[0]
    delta = x_best - x
    norm_img = math.sqrt(float((delta ** 2).sum()))
    mask = torch.zeros_like(x)
    mask[:, vh:vh + s, vw:vw + s] = 1.0
    mask[:, vh2:vh2 + s, vw2:vw2 + s] = 1.0
    norm_windows = math.sqrt(float(((delta * mask) ** 2).sum()))  # lp_norm: over all channels
    old = delta[:, vh:vh + s, vw:vw + s]
    old = old / (1e-12 + (old ** 2).sum(dim=(-2, -1), keepdim=True).sqrt())
    new = torch.ones(c, s, s, dtype=x.dtype) * eta.view(1, s, s) * signs.view(c, 1, 1) + old
    budget = math.sqrt(max(eps ** 2 - norm_img ** 2, 0.0) / c + norm_windows ** 2)
    new = new / (1e-12 + (new ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
    delta = delta.clone()
    delta[:, vh2:vh2 + s, vw2:vw2 + s] = 0.0
    delta[:, vh:vh + s, vw:vw + s] = new
    return (x + delta / (math.sqrt(float((delta ** 2).sum())) + 1e-12) * eps).clamp(-1, 1)


@pytest.mark.parametrize("p,delta_norm", [(0.1, 0.8), (0.05, 0.3), (0.3, 1.0)])
def test_square_l2_proposal_is_autoattacks(p, delta_norm):
    torch.manual_seed(0)
    A, C, H, W, eps = 3, 3, 32, 32, 1.0
    centre = torch.rand(A, C, H, W, dtype=torch.float64) * 1.6 - 0.8
    d = torch.randn(A, C, H, W, dtype=torch.float64)
    x_best = centre + d / d.flatten(1).norm(dim=1).view(A, 1, 1, 1) * delta_norm  # ||delta|| below eps
    u = torch.rand(A, 5 + C, dtype=torch.float64)
    got = sq.l2_propose(x_best, centre, eps, p, _FixedDraws(u), torch.arange(A))
    s = min(max(int(round(math.sqrt(p * H * W))), 3), H - 1, W - 1)
    s += 1 if s % 2 == 0 and s + 1 < min(H, W) else 0
    for a in range(A):
        vh, vw, vh2, vw2 = (int(v) for v in sq._positions(u[a:a + 1, :4], (H - s, W - s, H - s, W - s))[0])
        eta = sq._patterns(s, u[a:a + 1, 4] > 0.5, centre.device)[0]
        signs = sq._signs(u[a, 5:])
        want = _autoattack_l2_step(x_best[a], centre[a], eps, s, vh, vw, vh2, vw2, eta, signs)
        assert torch.allclose(got[a], want, atol=1e-12, rtol=0), (a, (got[a] - want).abs().max())


def test_square_eta_is_autoattacks_nested_rectangles():
    def rectangles(x, y):  # AutoAttack's eta_rectangles
        delta = torch.zeros(x, y, dtype=torch.float64)
        xc, yc = x // 2 + 1, y // 2 + 1
        c0, c1 = xc - 1, yc - 1
        for counter in range(max(xc, yc)):
            delta[max(c0, 0):min(c0 + 2 * counter + 1, x), max(0, c1):min(c1 + 2 * counter + 1, y)] += \
                1.0 / (counter + 1) ** 2
            c0, c1 = c0 - 1, c1 - 1
        return delta / (delta ** 2).sum().sqrt()

    for s in (3, 5, 8, 13, 57):
        want = torch.zeros(s, s, dtype=torch.float64)
        want[:s // 2] = rectangles(s // 2, s)
        want[s // 2:] = -rectangles(s - s // 2, s)
        want /= (want ** 2).sum().sqrt()
        assert torch.allclose(sq._eta(s), want, atol=1e-15), s
