"""ConvNeXt-B (Liu et al. 2022) as OpenCLIP's ``convnext_base_w`` image tower builds it from timm: the trunk
(stem, four stages of depths 3, 3, 27, 3 and widths 128 to 1024, layer-scaled blocks), timm's head (global average
pool, LayerNorm) and OpenCLIP's linear projection to 640, with the parameter names of OpenCLIP's
``model.visual.state_dict()``. Written from the ConvNeXt paper and the checkpoints' layout."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEPTHS, DIMS, EMBED = (3, 3, 27, 3), (128, 256, 512, 1024), 640


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """``x + gamma * mlp(norm(dwconv7x7(x)))``, the MLP over channels-last pixels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: Tensor) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1)))  # (B, H, W, C)
        return x + (y * self.gamma).permute(0, 3, 1, 2)


class Stage(nn.Module):
    def __init__(self, cin: int, dim: int, depth: int) -> None:
        super().__init__()
        self.downsample = (nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, dim, kernel_size=2, stride=2))
                           if cin != dim else nn.Identity())
        self.blocks = nn.Sequential(*[Block(dim) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.mean((2, 3), keepdim=True)).flatten(1)


class Trunk(nn.Module):
    def __init__(self, depths: Sequence[int] = DEPTHS, dims: Sequence[int] = DIMS) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=1e-6))
        self.stages = nn.Sequential(*[Stage(dims[max(i - 1, 0)], dims[i], depths[i]) for i in range(len(dims))])
        self.head = Head(dims[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


class Proj(nn.Module):
    def __init__(self, dim: int, embed: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, embed, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ConvNeXtTower(nn.Module):
    """(B, 3, H, W) normalised -> (B, 640): OpenCLIP's ``convnext_base_w`` image tower."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.head = Proj(DIMS[-1], EMBED)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))
