"""MS-SSIM of the piq test images by TensorFlow's tf.image.ssim_multiscale (the reference piq's own MS-SSIM tests
use), with Wang et al.'s weights at 5 scales and the first three renormalised at 3 scales (our 64 px default).
The printed values are the constants of tests/test_metrics.py::test_ms_ssim_matches_tensorflow. Run with
TensorFlow 2.15 (python -m venv /tmp/tfenv2 && /tmp/tfenv2/bin/pip install tensorflow-cpu==2.15.1 "numpy<2" pillow):

    /tmp/tfenv2/bin/python tests/reference/ms_ssim_tensorflow.py
"""
import numpy as np
import tensorflow as tf
from PIL import Image
from pathlib import Path

S = str(Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'images' / 'piq_assets') + '/'
w = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
for a, b, mode in (("goldhill.gif", "goldhill_jpeg.gif", "L"), ("I01.BMP", "i01_01_5.bmp", "RGB")):
    x = np.asarray(Image.open(S + a).convert(mode), dtype=np.float32)
    y = np.asarray(Image.open(S + b).convert(mode), dtype=np.float32)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    for scales in (5, 3):
        v = tf.image.ssim_multiscale(x[None], y[None], max_val=255, power_factors=w[:scales] if scales == 5 else list(np.array(w[:3]) / sum(w[:3])))
        print(a, mode, scales, float(v.numpy()[0]))
