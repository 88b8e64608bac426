"""Make the PIM test fixture with the authors' TensorFlow implementation (google-research/perceptual-quality).

Not part of the test suite (it needs TensorFlow); its output, ``tests/data/pim``, is committed, and
``tests/test_pim.py`` checks our torch port against it. To regenerate (about a minute on 2 CPU cores)::

    python -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-probability==0.23.0
    git clone https://github.com/google-research/perceptual-quality /tmp/pq   # tested at 478157a
    /tmp/tfenv/bin/python tests/reference/make_pim_fixture.py --pq /tmp/pq --out tests/data/pim

For each of two models with the authors' architecture at a reduced width (``num_filters`` [8, 8, 3] instead of
[64, 64, 64, 3], so the checkpoints stay small; ``nmix`` 1 and 5, as PIM-1 and PIM-5), random weights from a
fixed seed, it writes the layout of the authors' released archives (``<model>/config.json`` and the TensorFlow
checkpoint ``<model>/weights.index`` + ``weights.data-00000-of-00001``, written by Keras ``save_weights`` as the
authors' ``load_weights`` reads it) and ``reference.npz`` with the input images and, per model, what the authors'
code computes on them:

* ``<model>_distance`` (B,): ``model(x, y)`` (PIM-1: exact; PIM-5: not stored, it is a one-sample estimate),
* ``<model>_lp_xx``, ``_lp_xy``, ``_lp_yx`` (B,): the encoder densities of x and y at their means
  (``q_x.log_prob(mean_y)`` ...), deterministic evaluations of every learned part,
* ``<model>_kl`` and ``<model>_kl_se`` (B,): the symmetrised KL estimated with 4000 samples, and its standard error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pq", required=True, help="a checkout of google-research/perceptual-quality")
    ap.add_argument("--out", required=True, help="output folder (tests/data/pim)")
    args = ap.parse_args()
    sys.path.insert(0, args.pq)
    import tensorflow as tf

    from perceptual_quality.pim import config, models

    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Two pairs of 32x32 images: a smooth random field and a noisy, shifted version of it; uint8 like real images.
    base = rng.uniform(0, 255, size=(2, 8, 8, 3))
    base = np.kron(base, np.ones((1, 4, 4, 1)))
    x = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
    y = np.clip(np.roll(base, 1, axis=2) + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    out = {"x": x, "y": y}
    xf, yf = tf.constant(x / 255.0, tf.float32), tf.constant(y / 255.0, tf.float32)
    for name, nmix in (("pim-1", 1), ("pim-5", 5)):
        params = config.get_params(num_filters=[8, 8, 3], num_marginal_encoder_mixtures=nmix)
        model = models.PIM(params)
        model(xf, yf)  # builds every variable the distance uses
        # Keras' initialisation leaves the encoder means nearly constant (distances ~1e-4); redraw every variable
        # with twice the He scale and non-zero biases, so each learned part moves the numbers the test compares.
        for v in model.variables:
            fan_in = int(np.prod(v.shape[:-1])) if len(v.shape) > 1 else 0
            std = 2.0 * np.sqrt(2.0 / fan_in) if fan_in else 0.1
            v.assign(rng.normal(0, std, size=v.shape).astype(np.float32))
        d = model(xf, yf)
        folder = os.path.join(args.out, name)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(params, f, indent=1)
        model.save_weights(os.path.join(folder, "weights"))
        for stale in ("checkpoint",):  # Keras' bookkeeping file, not part of the authors' archives
            if os.path.exists(os.path.join(folder, stale)):
                os.remove(os.path.join(folder, stale))
        key = name.replace("-", "")
        if nmix == 1:
            out[f"{key}_distance"] = d.numpy()
        qx, qy = model(xf), model(yf)
        out[f"{key}_lp_xx"] = qx.log_prob(qx.mean()).numpy()
        out[f"{key}_lp_xy"] = qx.log_prob(qy.mean()).numpy()
        out[f"{key}_lp_yx"] = qy.log_prob(qx.mean()).numpy()
        n = 4000
        sx, sy = qx.sample(n), qy.sample(n)
        per = (qx.log_prob(sx) - qy.log_prob(sx)) + (qy.log_prob(sy) - qx.log_prob(sy))  # (n, B)
        out[f"{key}_kl"] = tf.reduce_mean(per, 0).numpy()
        out[f"{key}_kl_se"] = (tf.math.reduce_std(per, 0) / np.sqrt(n)).numpy()
    out["tensorflow"] = np.array(tf.__version__)
    np.savez_compressed(os.path.join(args.out, "reference.npz"), **out)
    print({k: v for k, v in out.items() if k not in ("x", "y")})


if __name__ == "__main__":
    main()
