"""Write tests/data/elpips/reference.json with the E-LPIPS authors' TensorFlow code (mkettune/elpips at 9192007,
BSD-2; not a dependency of this project), run under TensorFlow 2.15's v1 compatibility mode.

Their ``elpips.Metric(elpips_vgg(batch_size=1))`` with dropout disabled and ``custom_sample_ensemble`` returning
fixed transformation parameters (their hook "for deterministic input transformations"), on the VGG16 features of
``../shared/data/weights`` transposed to their HWIO layout (``custom_net_weights``) and their vgg_full_avg.npy.
Recorded: the network distance with every transformation disabled, and the distance under each of the parameter
sets in PARAMS, for three image pairs (64 px and 256 px).

Two steps (the first needs torch, the second TensorFlow):

    python tests/reference/make_elpips_fixture.py prepare            # writes /tmp/elpips_inputs.npz
    python -m venv /tmp/tfenv2 && /tmp/tfenv2/bin/pip install tensorflow-cpu==2.15.1 "numpy<2"
    mkdir -p /tmp/elpips_src/elpips && (cd <checkout of mkettune/elpips> && cp elpips/*.py elpips/vgg_full_avg.npy /tmp/elpips_src/elpips/)
    /tmp/tfenv2/bin/python tests/reference/make_elpips_fixture.py run  # writes tests/data/elpips/reference.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
IMAGES = ["images/lpips_examples/ex_ref.png", "images/lpips_examples/ex_p0.png", "images/lpips_examples/ex_p1.png",
          "images/dists_examples/r0.png", "images/dists_examples/r1.png"]
PAIRS = [(0, 1), (0, 2), (3, 4)]
PARAMS = [  # (scale, scale_offset (y, x), offset (y, x), flip, swap, perm, colour)
    (1, (0, 0), (2, 5), 0, 0, (2, 0, 1), (0.3, 0.9, 0.6)),
    (2, (1, 0), (7, 0), 1, 1, (1, 2, 0), (1.0, 0.2, 0.5)),
    (8, (3, 6), (0, 3), 2, 0, (0, 2, 1), (0.8, 0.8, 0.25)),
    (3, (2, 2), (4, 4), 3, 1, (2, 1, 0), (0.5, 0.7, 0.9)),
]
INPUTS = Path("/tmp/elpips_inputs.npz")


def prepare() -> None:
    import torch
    from PIL import Image

    sd = torch.load(SHARED / "weights" / "vgg16_features_tv_IMAGENET1K_V1.pth", weights_only=True)
    arrays = {f"w/{k}": (v.permute(2, 3, 1, 0) if v.dim() == 4 else v).numpy() for k, v in sd.items()}
    for i, f in enumerate(IMAGES):
        arrays[f"img/{i}"] = np.asarray(Image.open(SHARED / f).convert("RGB"), dtype=np.float32)[None] / 255
    np.savez(INPUTS, **arrays)


def run() -> None:
    import tensorflow.compat.v1 as tf

    tf.disable_v2_behavior()
    sys.modules["tensorflow"] = tf  # their modules import tensorflow as TF1
    sys.path.insert(0, "/tmp/elpips_src")
    import elpips

    data = np.load(INPUTS)
    weights = {k[2:]: data[k] for k in data.files if k.startswith("w/")}

    def fixed(params):
        s, so, off, flip, swap, perm, color = params
        return lambda config: (tf.constant([off], tf.int32), tf.constant([flip], tf.int32), tf.constant(swap, tf.int32),
                               tf.constant(np.array(color, np.float32).reshape(1, 1, 1, 3)),
                               tf.constant(perm, tf.int32), tf.constant(so, tf.int32), tf.constant(s, tf.int32))

    out = {"images": IMAGES, "pairs": PAIRS, "params": PARAMS, "tensorflow": tf.__version__, "elpips_commit": "9192007"}
    results = {"network": [], "transformed": [[] for _ in PARAMS]}
    for a, b in PAIRS:
        x, r = data[f"img/{a}"], data[f"img/{b}"]
        for k, params in enumerate([None] + PARAMS):
            tf.reset_default_graph()
            config = elpips.elpips_vgg(batch_size=1)
            config.enable_dropout = False
            if params is None:
                for flag in ("offset", "flip", "swap", "color_permutation", "color_multiplication", "scale"):
                    setattr(config, f"enable_{flag}", False)
            metric = elpips.Metric(config, custom_net_weights=dict(weights), custom_sample_ensemble=fixed(params) if params else None)
            X = tf.placeholder(tf.float32, x.shape)
            R = tf.placeholder(tf.float32, r.shape)
            d = metric.forward(X, R)
            with tf.Session() as sess:
                v = float(sess.run(d, {X: x, R: r})[0])
            (results["network"] if params is None else results["transformed"][k - 1]).append(v)
        print((a, b), results["network"][-1], [t[-1] for t in results["transformed"]])
    out.update(results)
    dest = ROOT / "tests" / "data" / "elpips"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    {"prepare": prepare, "run": run}[sys.argv[1]]()
