"""Write tests/data/lipsim/reference.npz with the LipSim authors' own network code (SaraGhazanfari/lipsim at
58fe73e; not a dependency of this project: only its l2_lip and dists model files are needed), the way their
evaluate.py uses it: ``DataParallel(NormalizedModel(L2LipschitzNetwork(small, 1792), mean 0, std 1))`` loaded with
the checkpoint's ``model_state_dict``, their NIGHTS preprocessing (``Resize((224, 224), BICUBIC)``, ``ToTensor``),
and ``PerceptualMetric(requires_bias=False)``. The checkpoint is generated (tests/helpers.py:
write_lipsim_checkpoint, deterministic in its seed) with the real shapes. Recorded: embeddings of five real images
and the distances of three pairs.

    mkdir -p /tmp/lipsim_src && cd <a checkout of SaraGhazanfari/lipsim> && for f in lipsim/__init__.py \
      lipsim/core/__init__.py lipsim/core/models/__init__.py lipsim/core/models/l2_lip/{__init__,model,layers}.py \
      lipsim/core/models/dists/{__init__,dists_model}.py; do mkdir -p /tmp/lipsim_src/$(dirname $f); \
      git show HEAD:$f > /tmp/lipsim_src/$f; done
    LIPSIM_SRC=/tmp/lipsim_src python tests/reference/make_lipsim_fixture.py
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import write_lipsim_checkpoint  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "images"
IMAGES = ["lpips_examples/ex_ref.png", "lpips_examples/ex_p0.png", "lpips_examples/ex_p1.png",
          "dists_examples/r0.png", "dists_examples/r1.png"]
TRIPLETS = [(0, 1, 2), (3, 4, 4)]  # (ref, left, right) -> d(ref, left), d(ref, right)
SEED = 0


class Small:  # main.py's override_args for --model-name small, and the default conv_size
    depth, num_channels, depth_linear, n_features, conv_size = 20, 45, 7, 1024, 5


def main() -> None:
    sys.path.insert(0, os.environ.get("LIPSIM_SRC", "/tmp/lipsim_src"))
    from torchvision import transforms

    from lipsim.core.models.l2_lip.model import L2LipschitzNetwork, NormalizedModel, PerceptualMetric

    model = torch.nn.DataParallel(NormalizedModel(L2LipschitzNetwork(Small, 1792), (0.0,) * 3, (1.0,) * 3))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = torch.load(write_lipsim_checkpoint(Path(tmp) / "model.ckpt-1.pth", seed=SEED), weights_only=True)
    msg = model.load_state_dict(ckpt["model_state_dict"], strict=False)
    assert not msg.missing_keys and not msg.unexpected_keys, msg
    model.eval()
    metric = PerceptualMetric(backbone=model, requires_bias=False)
    t = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                            transforms.ToTensor()])
    with torch.no_grad():
        x = torch.stack([t(Image.open(SHARED / f).convert("RGB")) for f in IMAGES])
        emb = metric.get_embedding_per_image(x, False, False)
        dist = []
        for r, a, b in TRIPLETS:
            d0, d1, _ = metric.get_distance_between_images(x[r:r + 1], x[a:a + 1], x[b:b + 1], requires_normalization=True)
            dist += [d0.item(), d1.item()]
    print(emb.shape, dist)
    out = ROOT / "tests" / "data" / "lipsim"
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "reference.npz", embeddings=emb.numpy(), distances=np.array(dist))
    meta = {"lipsim_commit": "58fe73e", "torch": torch.__version__, "seed": SEED, "images": IMAGES,
            "triplets": TRIPLETS}
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
