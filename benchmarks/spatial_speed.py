"""Batched FlowAdv / stAdv against a loop over single samples, and the cost of the full FlowAdv.

    python benchmarks/spatial_speed.py [--n 32] [--width 16] [--metric lpips_alex]

Both ways run the same code (``flowadv`` / ``stadv``) on the same built-in samples in one process;
"loop" calls it with one sample at a time. Reported: samples/s, the ratio, how many samples got the
same flip result (float32; see the README on batch-composition noise), and the FLOPs per sample of the
paper's 256-channel FlowAdv with the projected time of the 12,227-sample run on one H200.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lit_attacks.datamodules.bapps import BappsDataModule  # noqa: E402
from lit_attacks.attacks.flowadv import flops_per_sample, flowadv  # noqa: E402
from lit_attacks.attacks.objectives import split_prey  # noqa: E402
from lit_attacks.attacks.stadv import stadv  # noqa: E402
from lit_attacks.metrics import create_metric  # noqa: E402

H200_FP32, H200_TF32_DENSE = 67e12, 495e12  # FLOP/s (datasheet; TF32 dense tensor cores)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--metric", default="lpips_alex")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    b = next(iter(BappsDataModule(batch_size=a.n, builtin_n=max(8, a.n // 5 + 4)).predict_dataloader()))
    m = create_metric(a.metric, pretrained=False)
    with torch.no_grad():
        prey, _, _, so = split_prey(b["p0"], b["p1"], m(b["ref"], b["p0"]), m(b["ref"], b["p1"]))
    keys = b["key"]
    runs = {
        "flowadv": lambda idx: flowadv(m.bind(b["ref"][idx]), prey[idx], so[idx], [keys[i] for i in idx],
                                       width=a.width, head=max(2, a.width // 2))[0],
        "stadv": lambda idx: stadv(m.bind(b["ref"][idx]), prey[idx], so[idx])[0],
    }
    print(f"{a.metric} (random backbone), {a.n} built-in samples at 64x64, FlowAdv width {a.width}, "
          f"{a.threads} threads\n")
    print("| attack | batched samples/s | loop samples/s | speed-up | same flip result |")
    print("|---|---|---|---|---|")
    for name, fn in runs.items():
        t = time.perf_counter()
        adv_b = fn(list(range(a.n)))
        tb = time.perf_counter() - t
        t = time.perf_counter()
        adv_l = torch.cat([fn([i]) for i in range(a.n)])
        tl = time.perf_counter() - t
        with torch.no_grad():
            fb, fl = m(b["ref"], adv_b) > so, m(b["ref"], adv_l) > so
        print(f"| {name} | {a.n / tb:.2f} | {a.n / tl:.2f} | {tl / tb:.1f}x | {int((fb == fl).sum())}/{a.n} "
              f"(flips {int(fb.sum())} / {int(fl.sum())}) |")
    cnn = flops_per_sample(64, 64)  # 256 x 5, one iteration, forward + backward
    metric = 0.237e9  # LPIPS-alex forward + backward per sample-iteration at 64x64 (NOTES.md, torch flop counter)
    its = 100  # worst case: 50 iterations x 2 restarts
    total = 12227 * its * (cnn + metric)
    print(f"\nFull FlowAdv (5 x 256 channels): {cnn / 1e9:.1f} GFLOP per sample-iteration for the CNN "
          f"(forward + backward) + {metric / 1e9:.2f} for LPIPS-alex; worst case {its} iterations: "
          f"{its * (cnn + metric) / 1e12:.2f} TFLOP per sample, {total / 1e15:.0f} PFLOP for 12,227 samples.")
    print(f"Projected on one H200: {total / H200_FP32 / 60:.0f} min at the FP32 peak (67 TFLOP/s), "
          f"{total / (0.4 * H200_TF32_DENSE) / 60:.0f} min at 40% of the TF32 tensor-core peak (495 TFLOP/s); "
          "early success makes real runs shorter.")


if __name__ == "__main__":
    main()
