"""CLIP image embeddings as zero-shot perceptual metrics: ``1 - cos`` of the OpenCLIP image embeddings of ``ref``
and ``x``, with the robust (adversarially fine-tuned) image towers of Croce, Schlarmann, Singh & Hein (2024,
"Adversarially robust CLIP models induce better (robust) perceptual metrics", fra31/perceptual-metrics): R-CLIP_F
(FARE, l_inf 4/255) and R-CLIP_T (TeCoA, l_inf 4/255) with ConvNeXt-B (``convnext_base_w``, their best) and ViT-B/16
towers, and the clean OpenCLIP models they start from (LAION-2B) as the non-robust baselines.

Written from the paper, their evaluation code (``eval.py``: the image tower on OpenCLIP's preprocessing with
the normalisation moved into the forward pass, cosine similarity of the embeddings) and OpenCLIP's towers:
our ViT-B (:mod:`lit_attacks.metrics.vit`, OpenCLIP's names mapped onto it) and ConvNeXt-B
(:mod:`lit_attacks.metrics.convnext`, OpenCLIP's names). Preprocessing as theirs: shorter side to 224 px (ViT) or
256 px (ConvNeXt, trained at 256: they replace OpenCLIP's crop by a 224 px centre crop), PIL bicubic without its
8-bit rounding, centre crop to 224, OpenAI CLIP mean and std. Inputs in [-1, 1] are converted to [0, 1] first.

Their NIGHTS-tuned LoRA / MLP heads are not ported.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from lit_attacks.metrics.base import EmbeddingDistance, register_learned, to01
from lit_attacks.metrics.convnext import ConvNeXtTower
from lit_attacks.metrics.vit import OPENAI_CLIP, ViT, resize_center_crop
from lit_attacks.metrics.weights import load_exactly, released_weights

_NEXTCLOUD = "https://nc.mlcloud.uni-tuebingen.de/index.php/s/{}/download"  # the README's share links, as files
CHECKPOINTS = {
    # name -> (tower, cached file name, URL): the authors' image-tower state dicts, or OpenCLIP's whole model
    "rclip_fare_convnext": ("convnext", "convnext_base_w-fare-eps4.pt", _NEXTCLOUD.format("GCPXBDEE5PoCngy")),
    "rclip_tecoa_convnext": ("convnext", "convnext_base_w-tecoa-eps4.pt", _NEXTCLOUD.format("zHKCC9aS7rf4qCt")),
    "clip_convnext_laion": ("convnext", "clip-convnext_base_w-laion2b-s13b-b82k-augreg.bin",
                            "https://huggingface.co/laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg/resolve/main/"
                            "open_clip_pytorch_model.bin"),
    "rclip_fare_vitb16": ("vit", "vit-b-16-fare-eps4.pt", _NEXTCLOUD.format("fg7JHQzASiNnxCg")),
    "rclip_tecoa_vitb16": ("vit", "vit-b-16-tecoa-eps4.pt", _NEXTCLOUD.format("ZBkmbMrAwgfeeSa")),
    "clip_vitb16_laion": ("vit", "clip-vit-b-16-laion2b-s34b-b88k.bin",
                          "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/"
                          "open_clip_pytorch_model.bin"),
}
RESIZE = {"vit": 224, "convnext": 256}  # shorter side before the 224 px centre crop
_RENAME = (("conv1.", "patch_embed.proj."), ("ln_pre.", "pos_drop."), ("ln_post.", "norm."),
           ("transformer.resblocks.", "blocks."), (".ln_1.", ".norm1."), (".ln_2.", ".norm2."),
           (".attn.in_proj_", ".attn.qkv."), (".attn.out_proj.", ".attn.proj."), (".mlp.c_fc.", ".mlp.fc1."),
           (".mlp.c_proj.", ".mlp.fc2."))


def from_open_clip(sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """OpenCLIP's image-tower state dict (``model.visual``; a whole-model file's ``visual.*`` keys) in our ViT's
    names (other keys pass unchanged, so the loader can name them)."""
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    out = {}
    for k, v in sd.items():
        if k == "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == "positional_embedding":
            out["pos_embed"] = v.unsqueeze(0)
        else:
            for a, b in _RENAME:
                if k.startswith(a) or (a.startswith(".") and a in k):
                    k = k.replace(a, b, 1)
            out[k] = v
    return out


class CLIPDistance(EmbeddingDistance):
    """``1 - cos`` of OpenCLIP image embeddings: ViT-B/16 (``ln_post`` of the class token times ``proj``) or
    ConvNeXt-B (average pool, LayerNorm, linear projection).

    Args:
        checkpoint: a key of :data:`CHECKPOINTS`.
        pretrained: False keeps a random tower (labelled; tests and timing only).
        weights_dir: folder searched first for the checkpoint file.
    """

    def __init__(self, checkpoint: str, pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        self.checkpoint, self.pretrained = checkpoint, pretrained
        self.arch, fname, url = CHECKPOINTS[checkpoint]
        self.tower = ViT(16, "open_clip", patch_bias=False) if self.arch == "vit" else ConvNeXtTower()
        mean, std = OPENAI_CLIP
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            sd = from_open_clip(released_weights(checkpoint, fname, url, weights_dir))
            kind = "ViT-B/16" if self.arch == "vit" else "ConvNeXt-B (convnext_base_w)"
            load_exactly(self.tower, sd, f"{checkpoint}: {fname} is not an OpenCLIP {kind} image tower")

    def embed224(self, x: Tensor) -> Tensor:
        """(B, D) embedding of images in [0, 1] at 224 x 224 (not normalised)."""
        x = (x - self.mean) / self.std
        if self.arch == "convnext":
            return self.tower(x)
        return self.tower.clip_embedding(self.tower(x))

    def embed(self, x: Tensor) -> Tensor:
        """(B, D) embedding of images in [-1, 1] of any size (not normalised)."""
        return self.embed224(resize_center_crop(to01(x), RESIZE[self.arch], 224))


_CALIBRATED = ("OpenCLIP 3.3 (its image tower loaded strictly with the checkpoint, its preprocessing as the authors' "
               "eval.py sets it) on generated weights: embeddings within 1e-5 on its input, distances within 3e-4 "
               "through our resize (tests/data/rclip)")
_SHARE = ("(Tübingen Nextcloud share of fra31/perceptual-metrics; no licence file: downloaded and cached, never "
          "redistributed)")


def _register(name: str, what: str, weights: str) -> None:
    register_learned(name, lambda pretrained, weights_dir: CLIPDistance(name, pretrained, weights_dir), what=what,
                     distance="as is (1 - cosine similarity of the image embeddings, in [0, 2])", weights=weights,
                     calibrated=_CALIBRATED)


for _tower, _net in (("convnext", "ConvNeXt-B (convnext_base_w, the paper's best)"), ("vitb16", "ViT-B/16")):
    for _method, _short in (("FARE", "fare"), ("TeCoA", "tecoa")):
        _register(f"rclip_{_short}_{_tower}", f"R-CLIP_{_method[0]} (Croce et al. 2024): OpenCLIP {_net} image tower "
                  f"adversarially fine-tuned with {_method} (l_inf 4/255), zero-shot; cosine of the image embeddings",
                  f"the authors' {CHECKPOINTS[f'rclip_{_short}_{_tower}'][1]} {_SHARE}")
_register("clip_convnext_laion", "OpenCLIP ConvNeXt-B (convnext_base_w, LAION-2B s13B b82K augreg), the clean CLIP "
          "R-CLIP_F/T ConvNeXt start from, as a zero-shot metric; cosine of the image embeddings",
          "OpenCLIP's open_clip_pytorch_model.bin from Hugging Face "
          "(laion/CLIP-convnext_base_w-laion2B-s13B-b82K-augreg, MIT), image tower only, downloaded and cached")
_register("clip_vitb16_laion", "OpenCLIP ViT-B/16 (LAION-2B s34B b88K), the clean CLIP R-CLIP_F/T ViT-B/16 start "
          "from, as a zero-shot metric; cosine of the image embeddings",
          "OpenCLIP's open_clip_pytorch_model.bin from Hugging Face (laion/CLIP-ViT-B-16-laion2B-s34B-b88K, MIT), "
          "image tower only, downloaded and cached")
