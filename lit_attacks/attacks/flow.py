"""Pure functions of the spatial attacks: backward warping by a per-pixel flow, and flow losses.

Flow convention: ``flow`` is (B, 2, H, W) in pixels, channel 0 = u (horizontal, +x is right) and
channel 1 = v (vertical, +y is down). Backward warping: ``out[y, x] = img[y + v, x + u]``,
bilinear. (The official stAdv code stores (v, u); ours is (u, v), the optical-flow order.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def backward_warp(img: Tensor, flow: Tensor) -> Tensor:
    """Sample ``img`` (B, C, H, W) at ``pixel + flow`` with bilinear interpolation.

    ``grid_sample`` with ``align_corners=True`` (normalised -1 and 1 are the centres of the first and
    last pixels, so a flow of 1 moves exactly one pixel) and ``padding_mode="border"`` (positions
    outside the image take the nearest edge pixel, as the official stAdv code clamps coordinates).
    Computed in float64 and cast back, so a zero flow returns a float32 image exactly and an integer
    flow shifts it exactly. Differentiable in ``img`` and ``flow``.
    """
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[0] != img.shape[0] or flow.shape[2:] != img.shape[2:]:
        raise ValueError(f"flow must be (B, 2, H, W) matching the image {tuple(img.shape)}, got {tuple(flow.shape)}")
    B, _, H, W = img.shape
    dt = torch.float64
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dt, device=img.device), torch.arange(W, dtype=dt, device=img.device),
                            indexing="ij")
    fx = flow[:, 0].to(dt) + xs
    fy = flow[:, 1].to(dt) + ys
    grid = torch.stack([2 * fx / max(W - 1, 1) - 1, 2 * fy / max(H - 1, 1) - 1], dim=-1)  # (B, H, W, 2)
    # Beyond +-1 border padding returns the edge pixel anyway; clamping keeps NaN/huge flows (a diverged
    # optimisation, reported as failed by the caller) from reaching grid_sample, which can crash on them.
    grid = torch.nan_to_num(grid, nan=2.0).clamp(-2.0, 2.0)
    out = F.grid_sample(img.to(dt), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(img.dtype)


def _diagonal_differences(flow: Tensor):
    """Differences of each flow vector to its four diagonal neighbours (zero padding), as official stAdv."""
    p = F.pad(flow, (1, 1, 1, 1), mode="constant", value=0.0)
    for shifted in (p[:, :, 2:, 2:], p[:, :, 2:, :-2], p[:, :, :-2, 2:], p[:, :, :-2, :-2]):
        yield flow - shifted


def flow_loss_squared(flow: Tensor, eps: float = 1e-8) -> Tensor:
    """(B,) official TMLR stAdv smoothness: sum over pixels and 4 diagonal neighbours of |du|^2 + |dv|^2 + eps."""
    return sum(((d ** 2).sum(1) + eps).sum((1, 2)) for d in _diagonal_differences(flow))


def flow_loss_sqrt(flow: Tensor, eps: float = 1e-8) -> Tensor:
    """(B,) original stAdv smoothness (Xiao et al. 2018): sum of sqrt(|du|^2 + |dv|^2 + eps)."""
    return sum(torch.sqrt((d ** 2).sum(1) + eps).sum((1, 2)) for d in _diagonal_differences(flow))


def charbonnier(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Elementwise Charbonnier penalty sqrt(x^2 + eps)."""
    return torch.sqrt(x ** 2 + eps)


def flow_charbonnier(flow: Tensor, eps: float = 1e-6) -> Tensor:
    """(B,) mean Charbonnier penalty of the flow's horizontal and vertical finite differences (smoothness)."""
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    return (charbonnier(dx, eps).flatten(1).mean(1) + charbonnier(dy, eps).flatten(1).mean(1)) / 2
