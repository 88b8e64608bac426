"""Write tests/data/dreamsim/reference.npz with the authors' DreamSim package (not a dependency of this project).

For each variant, a release with generated weights of the real shapes (tests/helpers.py:write_dreamsim_release,
deterministic in its seed) is loaded by ``dreamsim.dreamsim(pretrained=True, cache_dir=...)``, i.e. the package's
own PerceptualModel, peft LoRA and PIL preprocessing. The package gets DINO through
``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``, which needs the network; here that call is
answered with what DINO's hubconf builds (the package's copy of DINO's ``vit_base(patch_size=16, num_classes=0)``)
loaded strictly from the generated hub checkpoint. Recorded: the embeddings of five real images and the distances
of four pairs, each computed the way the package's README does (``preprocess(PIL image)``, one pair per call).

Run once, in an environment with the package (it pulls peft, open_clip, timm, transformers):

    python -m venv --system-site-packages /tmp/dsenv && /tmp/dsenv/bin/pip install dreamsim==0.2.1
    /tmp/dsenv/bin/python tests/reference/make_dreamsim_fixture.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import write_dreamsim_release  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "images"
IMAGES = ["lpips_examples/ex_ref.png", "lpips_examples/ex_p0.png", "lpips_examples/ex_p1.png",
          "dists_examples/r0.png", "dists_examples/r1.png"]
PAIRS = [(0, 1), (0, 2), (1, 2), (3, 4)]
VARIANTS = ["ensemble", "dino_vitb16", "clip_vitb32", "open_clip_vitb32"]
SEED = 0


def main() -> None:
    import dreamsim
    import peft
    from dreamsim.feature_extraction.vision_transformer import vit_base

    out = ROOT / "tests" / "data" / "dreamsim"
    out.mkdir(parents=True, exist_ok=True)
    arrays, meta = {}, {"dreamsim": getattr(dreamsim, "__version__", "0.2.1"), "peft": peft.__version__,
                        "torch": torch.__version__, "seed": SEED, "images": IMAGES, "pairs": PAIRS}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            release = write_dreamsim_release(tmp, variant, seed=SEED, dino_head=True)

            def hub_load(repo, name, *a, **k):
                assert (repo, name) == ("facebookresearch/dino:main", "dino_vitb16"), (repo, name)
                vit = vit_base(patch_size=16, num_classes=0)
                vit.load_state_dict(torch.load(Path(tmp) / "dino_vitbase16_pretrain.pth", weights_only=True), strict=True)
                return vit

            torch.hub.load = hub_load
            model, preprocess = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(release),
                                                  dreamsim_type=variant)
            # the adapters the package loaded are the generated ones (none missing, none left at peft's init)
            adapter = torch.load(next(release.glob("*_lora")) / "adapter_model.bin", weights_only=True)
            loaded = {k.replace(".default", ""): v for k, v in model.named_parameters() if "lora_" in k}
            assert len(loaded) == len(adapter), (len(loaded), len(adapter))
            for k, v in adapter.items():
                torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
            with torch.no_grad():
                imgs = [preprocess(Image.open(SHARED / f)) for f in IMAGES]
                arrays[f"{variant}/embeddings"] = torch.cat([model.embed(x) for x in imgs]).numpy()
                arrays[f"{variant}/distances"] = np.array([model(imgs[i], imgs[j]).item() for i, j in PAIRS])
            print(variant, arrays[f"{variant}/distances"])
    np.savez_compressed(out / "reference.npz", **arrays)
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
