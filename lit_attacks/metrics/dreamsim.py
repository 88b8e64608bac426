"""DreamSim (Fu, Tamir, Sundaram, Chai, Zhang, Dekel & Isola, NeurIPS 2023): the cosine distance between
embeddings of ViT-B backbones (DINO, CLIP, OpenCLIP) whose attention was fine-tuned with LoRA on NIGHTS, a set
of human 2AFC judgements on image variations.

A torch port of the authors' package (``dreamsim`` 0.2.1, ssundaram21/dreamsim, MIT), written from its
``model.py`` and ``feature_extraction``: it needs neither the package nor its dependencies (peft, open_clip,
timm, transformers), runs no code from torch hub, and reads every file with ``torch.load(weights_only=True)``
or a safetensors reader. What it reproduces, per backbone of a variant:

* the image in [0, 1] resized to 224 x 224 as the package's ``preprocess`` does (PIL bicubic on 8-bit images:
  one horizontal then one vertical antialiased pass, each clipped to [0, 1]; PIL also rounds to 8 bits between
  and after the passes, which we do not, so ours differs by at most about 1/255 per pixel), then normalised
  with the backbone's mean and std (ImageNet for DINO, OpenAI CLIP for CLIP and OpenCLIP);
* DINO ``cls``: token 0 of the last block's output, before the final LayerNorm (the package hooks block 11);
  CLIP / OpenCLIP ``embedding``: the final LayerNorm of token 0 times the released projection. The CLIP
  backbones are DINO ViTs whose ``pos_drop`` is CLIP's ``ln_pre``, with LayerNorm eps 1e-5 (and QuickGELU for
  OpenAI CLIP), as the package converts them;
* LoRA on every ``qkv`` projection, merged into the weights at load: ``W + (alpha / r) B A`` from the released
  ``adapter_config.json`` / ``adapter_model.{safetensors,bin}``;
* the features of all backbones concatenated, centred and scaled to unit norm, and ``1 - cos`` between the
  embeddings of ``ref`` and ``x`` (the package's ``normalize_embeds=True`` default).

Weights: the variant's release zip from the authors' GitHub (the fine-tuned LoRA adapters and the CLIP / OpenCLIP
backbones converted to DINO's layout) and, for DINO, Facebook's DINO ViT-B/16 checkpoint, which the package gets
through ``torch.hub.load('facebookresearch/dino:main')``. Both are downloaded and cached, never redistributed.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from lit_attacks.metrics.base import EmbeddingDistance, register_learned, to01
from lit_attacks.metrics.vit import IMAGENET, OPENAI_CLIP, ViT, pil_bicubic
from lit_attacks.metrics.weights import _load, load_exactly, released_archive, released_file

# backbone -> (patch size, (mean, std), kind); kind sets the conversion the package applies
BACKBONES: Dict[str, Tuple[int, tuple, str]] = {
    "dino_vitb16": (16, IMAGENET, "dino"),
    "clip_vitb16": (16, OPENAI_CLIP, "clip"),
    "clip_vitb32": (32, OPENAI_CLIP, "clip"),
    "open_clip_vitb16": (16, OPENAI_CLIP, "open_clip"),
    "open_clip_vitb32": (32, OPENAI_CLIP, "open_clip"),
}
# variant -> ((backbone, feature), ...) as the package's dreamsim_args
VARIANTS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "ensemble": (("dino_vitb16", "cls"), ("clip_vitb16", "embedding"), ("open_clip_vitb16", "embedding")),
    "dino_vitb16": (("dino_vitb16", "cls"),),
    "clip_vitb32": (("clip_vitb32", "embedding"),),
    "open_clip_vitb32": (("open_clip_vitb32", "embedding"),),
}
_RELEASE = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/"
DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
DINO_FILE = "dino_vitbase16_pretrain.pth"


def archive_url(variant: str) -> str:
    return f"{_RELEASE}dreamsim_{variant}_checkpoint.zip"


def lora_folder(variant: str) -> str:
    """The adapter folder inside a release: ``ensemble_lora`` or ``<backbone>_single_lora``."""
    return "ensemble_lora" if variant == "ensemble" else f"{variant}_single_lora"


def read_safetensors(path: Path) -> Dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (8-byte little-endian header length, JSON header, raw data)."""
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    data = Path(path).read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            buf = bytearray(data[8 + n + a:8 + n + b])
            dtype = dtypes[info["dtype"]]
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"]).float()
    except Exception as e:  # truncated file, bad JSON, unknown dtype, wrong sizes
        raise RuntimeError(f"could not read safetensors file {str(path)!r}: {type(e).__name__}: {e}") from e
    return out


def lora_update(folder: Path, metric: str) -> Tuple[float, Dict[str, Tensor]]:
    """(alpha / r, adapter tensors with peft's adapter name removed) of a released LoRA adapter folder."""
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    targets = cfg.get("target_modules")
    unsupported = {"target_modules": targets not in (["qkv"], "qkv"), "bias": cfg.get("bias", "none") != "none",
                   "use_dora": bool(cfg.get("use_dora")), "fan_in_fan_out": bool(cfg.get("fan_in_fan_out")),
                   "rank_pattern": bool(cfg.get("rank_pattern")), "alpha_pattern": bool(cfg.get("alpha_pattern"))}
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise RuntimeError(f"{metric}: {cfg_path} sets {', '.join(f'{k}={cfg.get(k)!r}' for k in bad)}; only the "
                           "released DreamSim setting (LoRA on qkv, bias 'none', no DoRA or per-layer patterns) is "
                           "supported")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    st, binary = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if st.is_file():  # peft reads the safetensors file first, as we do
        sd = read_safetensors(st)
    elif binary.is_file():
        sd = _load(binary)
    else:
        raise FileNotFoundError(f"{metric}: no adapter_model.safetensors or adapter_model.bin in {folder}")
    return scaling, {k.replace(".default.", "."): v for k, v in sd.items()}


class DreamSimDistance(EmbeddingDistance):
    """DreamSim: ``1 - cos`` of the centred, unit-norm concatenated ViT features of ``ref`` and ``x``.

    Args:
        variant: "ensemble" (DINO + CLIP + OpenCLIP ViT-B/16, the authors' default), "dino_vitb16",
            "clip_vitb32" or "open_clip_vitb32" (their single-backbone models).
        pretrained: False builds random backbones without LoRA (labelled; tests and timing only).
        weights_dir: folder searched first: ``dreamsim_<variant>/`` (the unzipped release) and DINO's
            ``dino_vitbase16_pretrain.pth``.
    """

    def __init__(self, variant: str = "ensemble", pretrained: bool = True, weights_dir: Optional[str] = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"dreamsim: variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant, self.pretrained = variant, pretrained
        self.spec = VARIANTS[variant]
        self.vits = nn.ModuleList(ViT(BACKBONES[b][0], BACKBONES[b][2]) for b, _ in self.spec)
        for i, (b, _) in enumerate(self.spec):
            mean, std = BACKBONES[b][1]
            self.register_buffer(f"mean{i}", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.load_release(weights_dir)

    @property
    def metric(self) -> str:
        return "dreamsim" if self.variant == "ensemble" else f"dreamsim_{self.variant.split('_vit')[0]}"

    def load_release(self, weights_dir: Optional[str | os.PathLike] = None) -> None:
        """Load the release of ``self.variant`` (found, or downloaded and unpacked, by :func:`released_archive`),
        DINO's backbone where the variant has one, and merge the LoRA adapters."""
        name, lora = self.metric, lora_folder(self.variant)
        folder = released_archive(name, f"dreamsim_{self.variant}", archive_url(self.variant),
                                  f"{lora}/adapter_config.json", weights_dir, flat=True)
        for i, (b, _) in enumerate(self.spec):
            if b.startswith("dino"):
                sd = _load(released_file(name, DINO_FILE, DINO_URL, weights_dir))
            else:
                path = folder / f"{b}_pretrain.pth.tar"
                if not path.is_file():
                    raise FileNotFoundError(f"{name}: {path} is missing from the unpacked release; delete {folder} to "
                                            f"download it again, or unzip {archive_url(self.variant)} there")
                sd = _load(path).get("state_dict")
                if not isinstance(sd, dict):
                    raise RuntimeError(f"{name}: {path} has no 'state_dict' (not a DreamSim backbone file)")
            self._load_backbone(i, sd, name)
        scaling, adapter = lora_update(folder / lora, name)
        self._merge_lora(scaling, adapter, name, folder / lora)

    def _load_backbone(self, i: int, sd: Dict[str, Tensor], name: str) -> None:
        sd = {k: v for k, v in sd.items() if k not in ("head.weight", "head.bias")}  # DINO: an empty classifier
        load_exactly(self.vits[i], sd, f"{name}: {self.spec[i][0]} weights do not match ViT-B")

    def _merge_lora(self, scaling: float, adapter: Dict[str, Tensor], name: str, where: Path) -> None:
        left = dict(adapter)
        with torch.no_grad():
            for i, vit in enumerate(self.vits):
                for j, blk in enumerate(vit.blocks):
                    key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv."
                    try:
                        a, b = left.pop(key + "lora_A.weight"), left.pop(key + "lora_B.weight")
                    except KeyError:
                        raise RuntimeError(f"{name}: {where} has no LoRA weights for {key}") from None
                    blk.attn.qkv.weight += scaling * (b.double() @ a.double()).float()
        if left:
            raise RuntimeError(f"{name}: {where} has adapter tensors for modules DreamSim does not have: "
                               f"{sorted(left)[:5]}")

    def embed224(self, x: Tensor) -> Tensor:
        """(B, D) unit-norm centred embedding of images in [0, 1] at 224 x 224 (the package's ``embed``)."""
        feats: List[Tensor] = []
        for i, (vit, (_, feat)) in enumerate(zip(self.vits, self.spec)):
            tokens = vit((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}"))
            feats.append(tokens[:, 0] if feat == "cls" else vit.clip_embedding(tokens))
        e = torch.cat(feats, dim=-1)
        e = e - e.mean(dim=-1, keepdim=True)
        return e / e.norm(dim=-1, keepdim=True)

    def embed(self, x: Tensor) -> Tensor:
        """(B, D) embedding of images in [-1, 1] of any size."""
        return self.embed224(pil_bicubic(to01(x)))


_CALIBRATED = ("the dreamsim package 0.2.1 (its peft LoRA, its PIL preprocessing) on generated releases of the same "
               "shapes: embeddings within 1e-6 on the same 224 px input, distances within 3e-4 from the 64 px and "
               "256 px images through our resize (PIL's 8-bit rounding, which we skip) (tests/data/dreamsim)")
_DINO = "Facebook's DINO ViT-B/16 checkpoint (Apache-2.0)"


def _register(name: str, variant: str, what: str, contents: str) -> None:
    register_learned(name, lambda pretrained, weights_dir: DreamSimDistance(variant, pretrained, weights_dir),
                     what=what, distance="as is (1 - cosine similarity of the embeddings, in [0, 2])",
                     weights=f"{contents}, downloaded and cached, never redistributed", calibrated=_CALIBRATED)


_register("dreamsim", "ensemble", "DreamSim (Fu et al. 2023): DINO, CLIP and OpenCLIP ViT-B/16 with LoRA tuned on "
          "NIGHTS human judgements; the concatenated embeddings compared by cosine (the authors' default ensemble)",
          f"the authors' release zip (MIT: LoRA adapters, OpenAI CLIP and OpenCLIP backbones converted) and {_DINO}")
_register("dreamsim_dino", "dino_vitb16", "DreamSim, single DINO ViT-B/16 backbone (LoRA-tuned on NIGHTS), CLS token",
          f"the authors' release zip (MIT: LoRA adapters) and {_DINO}")
_register("dreamsim_clip", "clip_vitb32", "DreamSim, single OpenAI CLIP ViT-B/32 backbone (LoRA-tuned on NIGHTS), "
          "projected embedding", "the authors' release zip (MIT: LoRA adapters, the OpenAI CLIP backbone converted)")
_register("dreamsim_open_clip", "open_clip_vitb32", "DreamSim, single OpenCLIP ViT-B/32 (LAION-400M) backbone "
          "(LoRA-tuned on NIGHTS), projected embedding",
          "the authors' release zip (MIT: LoRA adapters, the OpenCLIP backbone converted)")
