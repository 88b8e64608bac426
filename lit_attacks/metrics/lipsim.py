"""LipSim (Ghazanfari, Araujo, Krishnamurthy, Khorrami & Garg, ICLR 2024): ``1 - cos`` of the embeddings of a
1-Lipschitz (l2) network, distilled from DreamSim's ensemble on ImageNet and fine-tuned on NIGHTS with a hinge
loss, so that its 2AFC decisions carry l2 certificates.

Written from the paper and the authors' code (SaraGhazanfari/lipsim, no licence file: read, not copied): the
``small`` network of their evaluation commands, with their layers' exact forward passes:

* the image in [0, 1] resized to 224 x 224 (their NIGHTS preprocessing, PIL bicubic; we skip PIL's 8-bit
  rounding), no normalisation (their mean 0, std 1), padded with zero channels from 3 to 45;
* 20 SDP-based Lipschitz (SLL) residual convolutions ``x - 2 K^T (t * relu(K x + b))`` with 5 inner channels and
  3x3 kernels, where ``t_i = 1 / sum |K K^T|_i`` (their conv layer's rescaling, in which the ``q`` parameters
  cancel out, as in their code), then two 4x4 sum-pools divided by 4 (224 -> 56 -> 14; 1-Lipschitz);
* flattened (45 x 14 x 14 = 8820 features), 7 SLL residual linear layers with 1024 inner features
  (``t_i = 1 / sum_j |q_i^-1 (W W^T)_ij q_j|``), and the first 1792 features (DreamSim's embedding size) kept;
* the distance ``1 - cos(e(ref), e(x))`` (their ``PerceptualMetric``, ``requires_bias=False`` as in their
  evaluation commands).

The rescalings ``t`` depend only on the frozen weights and are computed once at load (the authors recompute them
every call: 64 GFLOPs of ``W W^T`` per forward pass).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_attacks.metrics.base import EmbeddingDistance, register_learned, to01
from lit_attacks.metrics.vit import pil_bicubic
from lit_attacks.metrics.weights import load_exactly, released_weights

# the "small" model of the authors' main.py: depth, channels, linear depth, linear features, conv inner channels
DEPTH, CHANNELS, DEPTH_LINEAR, FEATURES, CONV_INNER, EMBED = 20, 45, 7, 1024, 5, 1792
_DRIVE = "https://drive.usercontent.google.com/download?id={}&export=download&confirm=t"
CHECKPOINTS = {
    # name -> (cached file name, Google Drive id of the authors' README link)
    "lipsim": ("lipsim_finetuned_margin0.5.pth", "11JoY5jrm4qmk0QmncQ5eVqXQpXQNLG1X"),
    "lipsim_margin02": ("lipsim_finetuned_margin0.2.pth", "1OHRP0uwFrRJ6zXsPrCUDxlTjALa_690c"),
    "lipsim_pretrained": ("lipsim_pretrained.pth", "1Y39Wnpxq3ZS8JMRe6j-Yx7x3E_nardbv"),
}


def safe_inv(x: Tensor) -> Tensor:
    """1 / x, with 0 where x = 0 (a dead unit)."""
    return torch.where(x == 0, torch.zeros_like(x), 1 / torch.where(x == 0, torch.ones_like(x), x))


class SLLConv(nn.Module):
    """``x - 2 K^T (t * relu(K x + b))``, K (inner, channels, 3, 3) with padding 1; 1-Lipschitz in l2."""

    def __init__(self, channels: int, inner: int, k: int = 3) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(inner, channels, k, k))
        nn.init.xavier_normal_(self.kernel)
        bound = (channels * k * k) ** -0.5
        self.bias = nn.Parameter(torch.empty(1, inner, 1, 1).uniform_(-bound, bound))
        self.q = nn.Parameter(torch.randn(inner))
        self.register_buffer("t", torch.zeros(1, inner, 1, 1), persistent=False)

    @torch.no_grad()
    def rescale(self) -> None:
        k = self.kernel
        ktk = F.conv2d(k, k, padding=k.shape[-1] - 1).abs()  # (inner, inner, 2k-1, 2k-1)
        self.t.copy_(safe_inv(ktk.sum((1, 2, 3))).view(1, -1, 1, 1))  # exp(q_i) exp(-q_i) = 1: q has no effect

    def forward(self, x: Tensor) -> Tensor:
        res = self.t * F.relu(F.conv2d(x, self.kernel, padding=1) + self.bias)
        return x - 2 * F.conv_transpose2d(res, self.kernel, padding=1)


class SLLLinear(nn.Module):
    """``x - 2 W^T (t * relu(W x + b))``, W (inner, features); 1-Lipschitz in l2."""

    def __init__(self, features: int, inner: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inner, features))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.empty(1, inner).uniform_(-features ** -0.5, features ** -0.5))
        self.q = nn.Parameter(torch.randn(inner))
        self.register_buffer("t", torch.zeros(inner), persistent=False)

    @torch.no_grad()
    def rescale(self) -> None:
        w, q = self.weight, self.q
        self.t.copy_(safe_inv((torch.exp(-q)[:, None] * (w @ w.T) * torch.exp(q)[None, :]).abs().sum(1)))

    def forward(self, x: Tensor) -> Tensor:
        res = self.t * F.relu(F.linear(x, self.weight) + self.bias)
        return x - 2 * F.linear(res, self.weight.T)


class LipSimNet(nn.Module):
    """(B, 3, 224, 224) in [0, 1] -> (B, 1792) embedding; 1-Lipschitz in l2."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[SLLConv(CHANNELS, CONV_INNER) for _ in range(DEPTH)],
                                   nn.AvgPool2d(4, divisor_override=4), nn.AvgPool2d(4, divisor_override=4))
        self.linear = nn.Sequential(nn.Flatten(),
                                    *[SLLLinear(CHANNELS * 14 * 14, FEATURES) for _ in range(DEPTH_LINEAR)])

    def rescale(self) -> None:
        """Compute every layer's rescaling from its (frozen) weights: once, after they are loaded."""
        for m in self.modules():
            if isinstance(m, (SLLConv, SLLLinear)):
                m.rescale()

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, 0, 0, CHANNELS - x.shape[1]))  # zero channels 3 -> 45
        return self.linear(self.convs(x))[:, :EMBED]


def network_state(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The authors' checkpoint (``{'model_state_dict': ...}`` of ``DataParallel(NormalizedModel(net))``, or a
    bare state dict) in our names: prefixes ``module.``, ``backbone.`` and ``model.`` removed, the aliases of the
    same tensors under ``base.`` dropped."""
    sd = sd.get("model_state_dict", sd)
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone.", "model."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not k.startswith("base."):
            out[k] = v
    return out


class LipSimDistance(EmbeddingDistance):
    """LipSim: ``1 - cos`` of 1-Lipschitz embeddings of the images resized to 224 px.

    Args:
        checkpoint: a key of :data:`CHECKPOINTS`.
        pretrained: False keeps random SLL layers (labelled; tests and timing only).
        weights_dir: folder searched first for the checkpoint file.
    """

    cosine_eps = 1e-6  # the authors' nn.CosineSimilarity(eps=1e-6)

    def __init__(self, checkpoint: str = "lipsim", pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        self.checkpoint, self.pretrained = checkpoint, pretrained
        self.net = LipSimNet()
        if pretrained:
            fname, drive_id = CHECKPOINTS[checkpoint]
            sd = network_state(released_weights(checkpoint, fname, _DRIVE.format(drive_id), weights_dir))
            load_exactly(self.net, sd, f"{checkpoint}: {fname} is not the authors' LipSim 'small' network")
        self.net.rescale()

    def embed(self, x: Tensor) -> Tensor:
        """(B, 1792) embedding of images in [-1, 1] of any size."""
        return self.net(pil_bicubic(to01(x)))

    lipschitz_hint = "LipSim's network is 1-Lipschitz on its 224 x 224 input: run at --image-size 224"

    def embedding_lipschitz(self, size) -> Optional[float]:
        """1 on [0, 1] images of 224 x 224 (the SLL network is 1-Lipschitz by construction and the resize is the
        identity there); None at other sizes (the resize comes first: not 1-Lipschitz in general)."""
        return 1.0 if tuple(size) == (224, 224) else None


_CALIBRATED = ("the authors' own network code (SaraGhazanfari/lipsim at 58fe73e, its L2LipschitzNetwork, "
               "NormalizedModel and PerceptualMetric) on a generated checkpoint of the 'small' shapes: embeddings "
               "within 1e-5 relative on its input, distances within 3e-4 through our resize (tests/data/lipsim)")


def _register(name: str, what: str) -> None:
    register_learned(name, lambda pretrained, weights_dir: LipSimDistance(name, pretrained, weights_dir), what=what,
                     distance="as is (1 - cosine similarity of the embeddings, in [0, 2])",
                     weights="the authors' checkpoint on Google Drive (SaraGhazanfari/lipsim; no licence file: "
                             "downloaded and cached, never redistributed)", calibrated=_CALIBRATED)


_register("lipsim", "LipSim (Ghazanfari et al. 2024): 1-Lipschitz SLL network distilled from DreamSim and fine-tuned "
          "on NIGHTS with margin 0.5 (the paper's primary model); cosine of the embeddings")
_register("lipsim_margin02", "LipSim fine-tuned on NIGHTS with hinge margin 0.2 (more accurate, less certified)")
_register("lipsim_pretrained", "LipSim after distillation from DreamSim only (not fine-tuned on NIGHTS)")
