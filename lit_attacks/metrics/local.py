"""Scoring one-pixel changes of an image: the full forward, or only what the changed pixel reaches.

A one-pixel candidate differs from its prey in one pixel, so in a convolutional network only that
pixel's receptive field changes, layer after layer. :class:`LocalConvScorer` keeps the prey's
activations (the padded input of every spatial layer) and, per candidate, recomputes a fixed-size
window of each layer around what the pixel reaches, on top of the cached activations; at each LPIPS
tap it adds the change of the per-position terms inside the window to the prey's distance. The
result equals the full forward up to floating-point summation order (tested per layer and end to
end, in float32 and float64).

Supported: chains of ``Conv2d`` (no dilation), ``ReLU`` and ``MaxPool2d`` (no dilation, floor mode):
the AlexNet and VGG16 LPIPS backbones. Anything else (SqueezeNet's Fire modules, blur pools) is
scored by :class:`FullScorer`, which builds the candidate images and runs the bound distance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FullScorer:
    """``d(ref_r, prey_r with pixel (y, x) set to value)`` by the bound distance on whole images.

    Args:
        bound: the metric bound to the S references.
        prey: (S, 3, H, W) the images whose pixels change.
        chunk: images per metric call (memory: the reference context is gathered per image).
    """

    local = False

    def __init__(self, bound, prey: Tensor, chunk: int = 128) -> None:
        self.bound, self.prey, self.chunk = bound, prey, chunk

    def images(self, rows: Tensor, ys: Tensor, xs: Tensor, values: Tensor) -> Tensor:
        """(N, 3, H, W) candidate images: ``prey[rows]`` with pixel (ys, xs) set to ``values`` (N, 3)."""
        out = self.prey[rows].clone()
        out[torch.arange(len(rows), device=out.device), :, ys, xs] = values.to(out.dtype)
        return out

    def __call__(self, rows: Tensor, ys: Tensor, xs: Tensor, values: Tensor) -> Tensor:
        """(N,) distances of the candidates (rows index the bound samples)."""
        out = []
        for i in range(0, len(rows), self.chunk):
            sl = slice(i, i + self.chunk)
            out.append(self.bound.select(rows[sl])(self.images(rows[sl], ys[sl], xs[sl], values[sl])))
        return torch.cat(out) if out else self.prey.new_zeros(0)


@dataclass
class _Op:
    module: nn.Module
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    fill: float  # padding value: 0 for convolutions, -inf for max pooling


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_chain(modules: List[nn.Module]) -> Optional[List]:
    """The modules as ops ("relu" or :class:`_Op`), or None if one is not a supported local op."""
    ops = []
    for m in modules:
        if isinstance(m, nn.ReLU):
            ops.append("relu")
        elif isinstance(m, nn.Conv2d) and _pair(m.dilation) == (1, 1) and m.padding_mode == "zeros" \
                and not isinstance(m.padding, str):
            ops.append(_Op(m, _pair(m.kernel_size), _pair(m.stride), _pair(m.padding), 0.0))
        elif isinstance(m, nn.MaxPool2d) and _pair(m.dilation) == (1, 1) and not m.ceil_mode:
            ops.append(_Op(m, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding),
                           float("-inf")))
        else:
            return None
    return ops


def window_table(n: int, k: int, s: int, p: int, lo: Tensor, hi: Tensor) -> Tuple[int, int, Tensor, Tensor, Tensor]:
    """One spatial layer along one axis, for every pixel position at once.

    ``lo``, ``hi`` (n_pix,): the input interval [lo, hi) each pixel position reaches (empty when lo >= hi).
    Returns (n_out, window size, window start (n_pix,), reached output interval lo, hi): the window is
    the smallest fixed size that holds every position's reached outputs, placed at them and kept inside.
    """
    n_out = (n + 2 * p - k) // s + 1
    o_lo = torch.div(lo + p - k + s, s, rounding_mode="floor").clamp(min=0)  # ceil((lo + p - k + 1) / s)
    o_hi = (torch.div(hi - 1 + p, s, rounding_mode="floor") + 1).clamp(max=n_out)
    empty = (o_lo >= o_hi) | (lo >= hi)
    o_lo, o_hi = torch.where(empty, torch.zeros_like(o_lo), o_lo), torch.where(empty, torch.zeros_like(o_hi), o_hi)
    size = max(int((o_hi - o_lo).max()), 1)
    start = o_lo.clamp(max=n_out - size)
    return n_out, size, start, o_lo, o_hi


def _window(src: Tensor, rows: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """(N, h, w, C) windows of a channels-last ``src`` (S, H, W, C): ``src[rows[n], top[n]:+h, left[n]:+w, :]``."""
    if h == src.shape[1] and w == src.shape[2]:  # the whole map: a plain row copy
        return src.index_select(0, rows)
    ry = top[:, None] + torch.arange(h, device=src.device)
    cx = left[:, None] + torch.arange(w, device=src.device)
    return src[rows[:, None, None], ry[:, :, None], cx[:, None, :]]


class LocalConvScorer:
    """Exact LPIPS of one-pixel candidates from the prey's cached activations (see the module docstring).

    Args:
        pre: pointwise input map (LPIPS' scaling layer).
        slices: the backbone's slices; the LPIPS features are their outputs.
        lins: the per-tap linear heads; ``normalize`` the per-position channel normalisation.
        ref_features: the bound references' normalised features, one (S, C, h, w) per tap.
        prey: (S, 3, H, W).
    """

    local = True

    def __init__(self, pre, ops_per_slice: List[List], lins, normalize, ref_features: List[Tensor], prey: Tensor,
                 chunk: int = 4096) -> None:
        self.pre, self.lins, self.normalize, self.chunk = pre, list(lins), normalize, chunk
        self.ops = [op for ops in ops_per_slice for op in ops]
        self.taps = list(torch.cumsum(torch.tensor([len(o) for o in ops_per_slice]), 0).tolist())
        self.ref_shapes = [f.shape[-2:] for f in ref_features]
        self.ref = [f.permute(0, 2, 3, 1).contiguous() for f in ref_features]  # channels last, for gathers
        H, W = prey.shape[-2:]
        dev = prey.device
        # geometry, per axis, for every pixel position
        self.geo, self.out_sizes = [], []
        ylo, yhi = torch.arange(H, device=dev), torch.arange(H, device=dev) + 1
        xlo, xhi = torch.arange(W, device=dev), torch.arange(W, device=dev) + 1
        h, w = H, W
        prev = (1, 1, torch.arange(H, device=dev), torch.arange(W, device=dev))  # the changed pixel
        for op in self.ops:
            if op == "relu":
                self.geo.append(None)
                continue
            (ky, kx), (sy, sx), (py, px) = op.kernel, op.stride, op.padding
            h, size_y, start_y, ylo, yhi = window_table(h, ky, sy, py, ylo, yhi)
            w, size_x, start_x, xlo, xhi = window_table(w, kx, sx, px, xlo, xhi)
            # does the previous layer's window always lie inside this layer's input window? then it is
            # written into the gathered window; otherwise merged position by position
            hin, win = (size_y - 1) * sy + ky, (size_x - 1) * sx + kx
            top, left = prev[2] + py - start_y * sy, prev[3] + px - start_x * sx
            fits = bool((top >= 0).all() and (top + prev[0] <= hin).all()
                        and (left >= 0).all() and (left + prev[1] <= win).all())
            self.geo.append((size_y, size_x, start_y, start_x, fits))
            self.out_sizes.append((h, w))
            prev = (size_y, size_x, start_y, start_x)
        # the prey's activations: the padded input of every spatial layer, and the terms at every tap
        self.cache, self.prey_terms = [], []
        with torch.no_grad():
            a = self.pre(prey)
            d = 0
            t = 0
            for i, op in enumerate(self.ops):
                if op == "relu":
                    a = torch.relu(a)
                    self.cache.append(None)
                else:
                    (py, px) = op.padding
                    self.cache.append(F.pad(a, (px, px, py, py), value=op.fill).permute(0, 2, 3, 1).contiguous())
                    a = op.module(a)
                if i + 1 in self.taps:
                    term = self.lins[t]((ref_features[t] - self.normalize(a)) ** 2)
                    self.prey_terms.append(term.permute(0, 2, 3, 1).contiguous())
                    d = d + term.mean(dim=(2, 3)).flatten()
                    t += 1
        self.prey_distance = d

    def macs(self) -> Tuple[int, int]:
        """Multiply-accumulates of the convolutions per candidate: (local evaluation, full forward of one image)."""
        local = full = 0
        sizes = iter(self.out_sizes)
        for op, g in zip(self.ops, self.geo):
            if op == "relu":
                continue
            h, w = next(sizes)
            if isinstance(op.module, nn.Conv2d):
                m = op.module
                per = m.out_channels * (m.in_channels // m.groups) * op.kernel[0] * op.kernel[1]
                local += g[0] * g[1] * per
                full += h * w * per
        return local, full

    def __call__(self, rows: Tensor, ys: Tensor, xs: Tensor, values: Tensor) -> Tensor:
        out = [self._score(rows[i:i + self.chunk], ys[i:i + self.chunk], xs[i:i + self.chunk],
                           values[i:i + self.chunk]) for i in range(0, len(rows), self.chunk)]
        return torch.cat(out) if out else self.prey_distance.new_zeros(0)

    def _score(self, rows: Tensor, ys: Tensor, xs: Tensor, values: Tensor) -> Tensor:
        N = len(rows)
        a = self.pre(values.to(self.prey_distance.dtype).view(N, 3, 1, 1))  # the changed pixel, scaled
        ay, ax = ys, xs  # window origin of ``a`` in its layer's (unpadded) coordinates
        delta = torch.zeros(N, dtype=a.dtype, device=a.device)
        t = 0
        ar = torch.arange(N, device=a.device)
        for i, op in enumerate(self.ops):
            if op == "relu":
                a = torch.relu(a)
            else:
                size_y, size_x, start_y, start_x, fits = self.geo[i]
                (ky, kx), (sy, sx), (py, px) = op.kernel, op.stride, op.padding
                hin, win = (size_y - 1) * sy + ky, (size_x - 1) * sx + kx
                oy, ox = start_y[ys], start_x[xs]  # output window origin
                a_cl = a.permute(0, 2, 3, 1)  # the changed window of the previous layer, channels last
                window = _window(self.cache[i], rows, oy * sy, ox * sx, hin, win)  # padded coordinates
                dy, dx = ay + py - oy * sy, ax + px - ox * sx  # its origin in the window
                if fits:
                    wy = dy[:, None] + torch.arange(a.shape[2], device=a.device)
                    wx = dx[:, None] + torch.arange(a.shape[3], device=a.device)
                    window[ar[:, None, None], wy[:, :, None], wx[:, None, :]] = a_cl
                else:
                    sr = torch.arange(hin, device=a.device) - dy[:, None]
                    sc = torch.arange(win, device=a.device) - dx[:, None]
                    vr, vc = (sr >= 0) & (sr < a.shape[2]), (sc >= 0) & (sc < a.shape[3])
                    prev = a_cl[ar[:, None, None], sr.clamp(0, a.shape[2] - 1)[:, :, None],
                                sc.clamp(0, a.shape[3] - 1)[:, None, :]]
                    window = torch.where((vr[:, :, None, None] & vc[:, None, :, None]), prev, window)
                window = window.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
                m = op.module
                if isinstance(m, nn.Conv2d):
                    a = F.conv2d(window, m.weight, m.bias, m.stride, 0, 1, m.groups)
                else:
                    a = F.max_pool2d(window, op.kernel, op.stride, 0)
                ay, ax = oy, ox
            if i + 1 in self.taps:
                hl, wl = self.ref_shapes[t]
                h, w = a.shape[2:]
                fr = _window(self.ref[t], rows, ay, ax, h, w).permute(0, 3, 1, 2)
                term = self.lins[t]((fr - self.normalize(a)) ** 2)
                before = _window(self.prey_terms[t], rows, ay, ax, h, w)
                delta = delta + term.sum(dim=(1, 2, 3)) / (hl * wl) - before.sum(dim=(1, 2, 3)) / (hl * wl)
                t += 1
        return self.prey_distance[rows] + delta
