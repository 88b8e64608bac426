"""Write tests/data/rclip/reference.npz with OpenCLIP (not a dependency of this project), the way the R-CLIP
authors' eval.py uses it: ``open_clip.create_model_and_transforms('ViT-B-16' or 'convnext_base_w')``, the
checkpoint loaded with ``model.visual.load_state_dict(ckpt, strict=True)``, OpenCLIP's eval preprocessing (for
ConvNeXt with its crop replaced by ``CenterCrop(224)``, as theirs) with the normalisation moved into the forward
pass, and the image embedding ``model.visual(normalize(x))``. The checkpoints are generated
(tests/helpers.py:write_open_clip_visual / write_open_clip_convnext, deterministic in their seed) with the real
shapes. Recorded per tower: embeddings of seven real images (64, 256 and 512x384 px) and the cosine distances of
five pairs.

    python -m venv --system-site-packages /tmp/dsenv && /tmp/dsenv/bin/pip install open_clip_torch
    /tmp/dsenv/bin/python tests/reference/make_rclip_fixture.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import write_open_clip_convnext, write_open_clip_visual  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "images"
IMAGES = ["lpips_examples/ex_ref.png", "lpips_examples/ex_p0.png", "lpips_examples/ex_p1.png",
          "dists_examples/r0.png", "dists_examples/r1.png", "piq_assets/I01.BMP", "piq_assets/i01_01_5.bmp"]
PAIRS = [(0, 1), (0, 2), (1, 2), (3, 4), (5, 6)]
SEED = 0


def main() -> None:
    import open_clip
    from torchvision import transforms

    out = ROOT / "tests" / "data" / "rclip"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for arch, name, write in (("vit", "ViT-B-16", write_open_clip_visual), ("convnext", "convnext_base_w", write_open_clip_convnext)):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = torch.load(write(Path(tmp) / "tower.pt", seed=SEED), map_location="cpu")
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
        model.visual.load_state_dict(ckpt, strict=True)
        model.eval()
        if arch == "convnext":  # eval.py: "The original model was trained at 256px."
            preprocess.transforms[1] = transforms.CenterCrop(224)
        norm = preprocess.transforms[-1]
        assert isinstance(norm, transforms.Normalize)
        preprocess.transforms = preprocess.transforms[:-1]  # as eval.py: normalisation in the forward pass
        with torch.no_grad():
            x = torch.stack([preprocess(Image.open(SHARED / f)) for f in IMAGES])
            emb = torch.cat([model.visual(norm(x[i:i + 1])) for i in range(len(x))])
            dist = np.array([1 - F.cosine_similarity(emb[i:i + 1], emb[j:j + 1]).item() for i, j in PAIRS])
        print(arch, preprocess, dist)
        arrays[f"{arch}/embeddings"], arrays[f"{arch}/distances"] = emb.numpy(), dist
    np.savez_compressed(out / "reference.npz", **arrays)
    meta = {"open_clip": open_clip.__version__, "torch": torch.__version__, "seed": SEED, "images": IMAGES,
            "pairs": PAIRS}
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
