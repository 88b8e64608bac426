"""Vision transformers as DINO, CLIP and OpenCLIP build them (ViT-B at 224 px), with the parameter names of
DINO's ``VisionTransformer``, and the PIL-style resizing of their preprocessing. Shared by DreamSim and the
CLIP-based metrics; written from the architectures' papers and the layouts of the released checkpoints."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZE = 224
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def pil_bicubic(x: Tensor, size: Tuple[int, int] | int = SIZE) -> Tensor:
    """(B, C, h, w): PIL's ``resize((w, h), BICUBIC)`` of images in [0, 1] (antialiased cubic with a = -0.5,
    horizontal pass then vertical, each clipped to [0, 1]), without PIL's 8-bit rounding. ``size``: (h, w) or
    one int for a square."""
    h, w = (size, size) if isinstance(size, int) else size
    if x.shape[-2:] == (h, w):
        return x
    x = F.interpolate(x, size=(x.shape[-2], w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def resize_center_crop(x: Tensor, size: int = SIZE, crop: int | None = None) -> Tensor:
    """torchvision's ``Resize(size, BICUBIC)`` (shorter side to ``size``, PIL) then ``CenterCrop(crop or size)``, as
    CLIP's and OpenCLIP's preprocessing; a square image at ``size`` without crop is just resized."""
    crop = crop or size
    H, W = x.shape[-2:]
    h, w = (size, int(size * W / H)) if H <= W else (int(size * H / W), size)  # torchvision truncates the long side
    x = pil_bicubic(x, (h, w))
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[..., top:top + crop, left:left + crop]


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act, nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float, act: nn.Module) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), MLP(dim, 4 * dim, act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)


class ViT(nn.Module):
    """ViT-B/``patch`` at 224 px with the parameter names of DINO's ``VisionTransformer`` (which DreamSim uses
    for every backbone). ``kind``: "dino" (LayerNorm eps 1e-6, GELU), "clip" / "open_clip" (``pos_drop`` is
    CLIP's ``ln_pre``, eps 1e-5; QuickGELU for OpenAI CLIP) plus the projection ``proj`` (768, 512).
    ``patch_bias``: False for OpenCLIP's own checkpoints (``conv1`` has none; DreamSim's conversions add zeros)."""

    def __init__(self, patch: int, kind: str, dim: int = 768, depth: int = 12, heads: int = 12,
                 patch_bias: bool = True) -> None:
        super().__init__()
        clip = kind != "dino"
        eps = 1e-5 if clip else 1e-6
        self.patch_embed = PatchEmbed(patch, dim, patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (SIZE // patch) ** 2 + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.LayerNorm(dim, eps=eps) if clip else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads, eps, QuickGELU() if kind == "clip" else nn.GELU())
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        if clip:
            self.proj = nn.Parameter(torch.randn(dim, 512) * dim ** -0.5)

    def clip_embedding(self, tokens: Tensor) -> Tensor:
        """(B, 512): CLIP's image embedding from :meth:`forward`'s tokens, the final LayerNorm of the class token
        times ``proj`` (CLIP kinds only)."""
        return self.norm(tokens[:, 0]) @ self.proj

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, 224, 224) normalised -> (B, 1 + patches, dim) tokens of the last block (before ``norm``)."""
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed
        t = self.pos_drop(t)
        for blk in self.blocks:
            t = blk(t)
        return t
