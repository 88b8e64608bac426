"""Every attack against its hardware ceiling: the metric's own throughput at the attack's batch size.

    python benchmarks/ceiling.py [--metrics lpips_alex,lpips_vgg,dists,ssim] [--scale 1] [--device cpu]
                                 [--repeats 2] [--json results/ceiling.json] [--host 64,512,4096]

Per metric, in one process and on the same built-in samples:
- the ceiling: forward (no gradient, reference features bound once) and forward+backward throughput of
  the bound metric, in images per second, at the batch size the attacks use (the run's batch; one-pixel
  at its chunk of candidate images);
- per attack: wall time, and every metric evaluation it made, counted at the metric (images through the
  bound or plain distance, with or without a gradient). Its *fraction of the ceiling* is the time those
  evaluations take at the ceiling rates, divided by the attack's wall time: 1.0 means the attack spends
  all its time in the metric at full batch; the rest is overhead (Python per-step work, compaction,
  re-binding, rescoring). One-pixel with local evaluation scores candidates without a full forward, so
  its fraction is relative to the full-forward ceiling and can exceed 1.
- one-pixel, three ways on the same samples and settings: the per-sample scipy loop (``backend=scipy``),
  the batched torch DE scoring whole images (``local=false``) and with local evaluation: candidates per
  second, the speed-ups over the scipy loop, and flip counts (different random streams: equal within noise).

Timings alternate between the ways within each repeat; the table gives the median and the min over repeats
(this machine is shared and noisy). Projections for the paper's full presets (12,227 samples) follow from
the measured per-sample costs and are labelled as projections.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lit_attacks.attacks import create_attack  # noqa: E402
from lit_attacks.datamodules.bapps import BappsDataModule  # noqa: E402
from lit_attacks.metrics import create_metric  # noqa: E402

N_PAPER = 12227
# samples per metric at --scale 1 (2 CPU cores: the VGG metrics cost ~30x AlexNet's)
SAMPLES = {"lpips_alex": 32, "ssim": 32, "lpips_vgg": 4, "dists": 4}
HEAVY = {"lpips_vgg", "dists"}  # one-pixel runs 1 generation after the initial population on these
ATTACKS = {
    "pgd": {},
    "fgsm": {},
    "stadv": {"iterations": 20},
    "flowadv": {"width": 32, "iterations": 10, "restarts": 1},
    "onepixel/scipy": {"backend": "scipy", "population": 400, "generations": 3},
    "onepixel/torch": {"backend": "torch", "local": False, "population": 400, "generations": 3},
    "onepixel/torch+local": {"backend": "torch", "local": True, "population": 400, "generations": 3},
}


class Counter:
    """Counts the images a metric scores, split by whether a gradient is being taken."""

    def __init__(self, metric) -> None:
        self.fwd = self.fwd_bwd = 0
        self.calls = []  # (batch, with gradient) of every call
        self.depth = 0  # a bound call that runs the plain distance inside counts once
        for name in ("_distance", "_distance_prepared"):
            orig = getattr(metric, name)

            def counted(ctx, x, _orig=orig):
                if self.depth == 0:
                    grad = torch.is_grad_enabled() and x.requires_grad
                    if grad:
                        self.fwd_bwd += x.shape[0]
                    else:
                        self.fwd += x.shape[0]
                    self.calls.append((x.shape[0], grad))
                self.depth += 1
                try:
                    return _orig(ctx, x)
                finally:
                    self.depth -= 1

            setattr(metric, name, counted)

    def reset(self) -> None:
        self.fwd = self.fwd_bwd = 0
        self.calls = []


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ceiling(metric, ref: torch.Tensor, x: torch.Tensor, device: str, repeats: int = 3,
            modes=("fwd", "fwd_bwd")) -> dict:
    """Images per second of the bound metric at this batch: forward, and forward+backward."""
    bound = metric.bind(ref)
    out = {}
    for mode in modes:
        best = float("inf")
        for _ in range(repeats + 1):  # the first call warms up
            xi = x.clone().requires_grad_(mode == "fwd_bwd")
            sync(device)
            t = time.perf_counter()
            with torch.set_grad_enabled(mode == "fwd_bwd"):
                s = bound(xi)
                if mode == "fwd_bwd":
                    s.sum().backward()
            sync(device)
            best = min(best, time.perf_counter() - t) if _ else best
        out[mode] = x.shape[0] / best
    return out


def ceiling_curve(metric, ref: torch.Tensor, x: torch.Tensor, device: str) -> dict:
    """Seconds per call of the bound metric at batch 1, 2, 4, ... and the full batch, per mode."""
    n = x.shape[0]
    sizes = sorted({min(2 ** k, n) for k in range(n.bit_length() + 1)})
    out = {"fwd": {}, "fwd_bwd": {}}
    for b in sizes:
        rates = ceiling(metric, ref[:b], x[:b], device, repeats=2)
        for mode in out:
            out[mode][b] = b / rates[mode]
    return out


def call_time(curve: dict, b: int) -> float:
    """Seconds of one call at batch ``b``: linear between the measured batch sizes (beyond: per image)."""
    sizes = sorted(curve)
    if b in curve:
        return curve[b]
    hi = next((s for s in sizes if s >= b), None)
    if hi is None:
        return curve[sizes[-1]] * b / sizes[-1]
    lo = max(s for s in sizes if s <= b) if sizes[0] <= b else None
    if lo is None:
        return curve[hi]
    return curve[lo] + (curve[hi] - curve[lo]) * (b - lo) / (hi - lo)


def run_metric(name: str, n: int, device: str, repeats: int, attacks: list) -> dict:
    torch.manual_seed(0)
    batch = next(iter(BappsDataModule(batch_size=n, builtin_n=max(8, n // 5 + 4)).predict_dataloader()))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    metric = create_metric(name).to(device)
    counter = Counter(metric)
    ceil = ceiling(metric, batch["ref"], batch["p0"], device)
    curve = ceiling_curve(metric, batch["ref"], batch["p0"], device)
    # one-pixel's candidates against the plain forward at batch 400 (the population) and at the best batch
    op_batches = {b: ceiling(metric, batch["ref"][:1].expand(b, -1, -1, -1).contiguous(),
                             batch["p0"][:1].expand(b, -1, -1, -1).contiguous(), device, 1, ("fwd",))["fwd"]
                  for b in ((64, 128, 256, 400) if name in HEAVY else (64, 128, 256, 400, 512, 1024))}
    ceil_op = op_batches[400]
    runs = {a: [] for a in attacks}
    for _ in range(repeats):
        for a in attacks:  # alternate the ways within each repeat
            kind = a.split("/")[0]
            params = dict(ATTACKS[a], **({"generations": 1} if kind == "onepixel" and name in HEAVY else {}))
            atk = create_attack(kind, name, **params)
            atk.metric = metric
            atk.to(device)
            counter.reset()
            sync(device)
            t = time.perf_counter()
            rows = atk.predict_step(batch).rows()
            sync(device)
            seconds = time.perf_counter() - t
            queries = sum(r["queries"] for r in rows) if kind == "onepixel" else 0
            # local scoring never calls the metric on whole images: its candidates count as forward evaluations
            fwd = counter.fwd + queries if kind == "onepixel" and counter.fwd < queries else counter.fwd
            ideal = fwd / (ceil_op if kind == "onepixel" else ceil["fwd"]) + counter.fwd_bwd / ceil["fwd_bwd"]
            # the same calls at the ceiling of the batch sizes they had (compaction shrinks them): the rest of
            # the wall time is the attack's own overhead
            at_batch = sum(call_time(curve["fwd_bwd" if g else "fwd"], b) for b, g in counter.calls)
            if kind == "onepixel" and fwd > counter.fwd:
                at_batch += queries / ceil_op
            runs[a].append({"seconds": seconds, "fwd": fwd, "fwd_bwd": counter.fwd_bwd, "queries": queries,
                            "fraction": ideal / seconds, "fraction_at_batch": at_batch / seconds,
                            "calls": len(counter.calls), "flips": sum(r["flipped"] for r in rows)})
    out = {"metric": name, "samples": n, "device": device, "ceiling_fwd": ceil["fwd"],
           "ceiling_fwd_bwd": ceil["fwd_bwd"], "ceiling_fwd_onepixel_400": ceil_op,
           "ceiling_fwd_best_batch": max(op_batches.values()), "ceiling_fwd_by_batch": op_batches, "attacks": {}}
    for a, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        out["attacks"][a] = {**rs[0], "seconds_median": statistics.median(secs), "seconds_min": min(secs),
                             "fraction_median": statistics.median(r["fraction"] for r in rs),
                             "fraction_min": min(r["fraction"] for r in rs),
                             "fraction_at_batch_median": statistics.median(r["fraction_at_batch"] for r in rs),
                             "samples_per_s": n / statistics.median(secs)}
    return out


def report(results: list) -> str:
    lines = ["| metric | ceiling fwd img/s | ceiling fwd+bwd img/s | attack | samples | s (median / min) | "
             "evaluations fwd / fwd+bwd (calls) | fraction of ceiling (median / min) | fraction of ceiling at the batch sizes used | samples/s | flips |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for a, x in r["attacks"].items():
            lines.append(f"| {r['metric']} | {r['ceiling_fwd']:.0f} | {r['ceiling_fwd_bwd']:.0f} | {a} | {r['samples']} | "
                         f"{x['seconds_median']:.2f} / {x['seconds_min']:.2f} | {x['fwd']} / {x['fwd_bwd']} ({x['calls']}) | "
                         f"{x['fraction_median']:.2f} / {x['fraction_min']:.2f} | {x['fraction_at_batch_median']:.2f} | "
                         f"{x['samples_per_s']:.2f} | {x['flips']} |")
    lines += ["", "One-pixel (population 400; 3 generations, 1 on lpips_vgg and dists; chunk measured at start), "
              "candidates per second, speed-up over the scipy loop, and the batched torch DE's candidate rate over "
              "the plain forward ceiling at batch 400 and at the best batch (64-1024; 64-400 on lpips_vgg and "
              "dists):", "",
              "| metric | scipy loop | torch batched | torch batched + local | speed-up batched "
              "| speed-up batched + local "
              "| best / ceiling at 400 | best / best-batch ceiling |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        q = {a: x["queries"] / x["seconds_median"] for a, x in r["attacks"].items() if a.startswith("onepixel")}
        if "onepixel/torch" in q and "onepixel/torch+local" in q:
            s, t, loc = q.get("onepixel/scipy", float("nan")), q["onepixel/torch"], q["onepixel/torch+local"]
            best = max(t, loc)
            lines.append(f"| {r['metric']} | {s:.0f} | {t:.0f} | {loc:.0f} | {t / s:.2f}x | {loc / s:.2f}x | "
                         f"{best / r['ceiling_fwd_onepixel_400']:.2f}x | {best / r['ceiling_fwd_best_batch']:.2f}x |")
    lines += ["", f"Projections for {N_PAPER} samples (measured per-sample cost x {N_PAPER}; one-pixel: the paper's "
              "upper bound of 40,400 candidates per unflipped sample at the measured candidate rate):", "",
              "| metric | PGD(30) h | FGSM h | stAdv(20 it) h | one-pixel upper bound h (scipy / torch + local) |",
              "|---|---|---|---|---|"]
    for r in results:
        A = r["attacks"]
        h = lambda a: N_PAPER / A[a]["samples_per_s"] / 3600 if a in A else float("nan")  # noqa: E731
        op = {a: A[a]["queries"] / A[a]["seconds_median"] for a in ("onepixel/scipy", "onepixel/torch+local") if a in A}
        ub = " / ".join(f"{N_PAPER * 40400 / v / 3600:.0f}" for v in op.values()) or "-"
        lines.append(f"| {r['metric']} | {h('pgd'):.2f} | {h('fgsm'):.2f} | {h('stadv'):.2f} | {ub} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- host overhead
HOST_STEPS = 20
HOST_ATTACKS = {  # every sample runs every step (budgets too small to flip): steps per sample = HOST_STEPS
    "pgd": {"eps": 1e-4, "steps": HOST_STEPS},
    "fgsm": {"step": 1e-6, "max_eps": HOST_STEPS * 1e-6},
    "apgd": {"eps": 1e-4, "steps": HOST_STEPS},
    "square/linf": {"eps": 1e-4, "queries": HOST_STEPS},
    "square/l2": {"eps": 1e-4, "norm": "l2", "queries": HOST_STEPS},
    "onepixel": {"population": 20, "generations": HOST_STEPS - 1, "chunk": 1 << 20},
    "stadv": {"iterations": HOST_STEPS},
    "flowadv": {"width": 4, "head": 4, "depth": 2, "iterations": HOST_STEPS, "restarts": 1},
    "certify": {"sigma": 0.1, "n0": 8, "n": 8 * (HOST_STEPS - 1), "chunk": 8},
}


def host_batch(B: int, size: int, device: str) -> dict:
    """B triplets of ``size`` x ``size`` images: p0 next to the reference, p1 the image farthest from it in every
    pixel (-1 where the reference is positive, else 1). No attack here flips: the budgets are tiny, and a warp of
    p0 (stAdv, FlowAdv: no budget) moves each pixel at most 0.8 + 0.01 from the reference, p1 is 1 + |ref| away."""
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(B, 3, size, size, generator=g) * 1.6 - 0.8
    p0 = ref + 0.01 * (torch.rand(B, 3, size, size, generator=g) * 2 - 1)
    p1 = torch.where(ref > 0, -1.0, 1.0)
    return {"ref": ref.to(device), "p0": p0.to(device), "p1": p1.to(device), "judge": torch.zeros(B, device=device),
            "key": [f"val/host/{i:06d}" for i in range(B)], "category": ["host"] * B}


def host_overhead(sizes=(64, 512, 4096), image: int = 8, device: str = "cpu", repeats: int = 2) -> list:
    """Microseconds of wall time per sample-step of each attack on the near-free ``l2`` metric at ``image`` px: what
    is left is the attack's own per-step work (Python, proposal building, bookkeeping), which a GPU cannot hide."""
    from lit_attacks.certify import CertifyModule

    rows = []
    for name, params in HOST_ATTACKS.items():
        kind, _, norm = name.partition("/")
        for B in sizes:
            batch = host_batch(B, image, device)
            best, flips = float("inf"), 0
            atk = CertifyModule("l2", max_images=2 * 8 * B, **params) if kind == "certify" else \
                create_attack(kind, "l2", **params)
            atk.to(device)
            for r in range(repeats + 1):  # the first call warms up
                sync(device)
                t0 = time.perf_counter()
                out = atk.predict_step(batch)
                sync(device)
                best = min(best, time.perf_counter() - t0) if r else best
                flips = int(out.flipped.sum()) if hasattr(out, "flipped") else 0
            rows.append({"attack": name, "samples": B, "seconds": best,
                         "us_per_sample_step": best / (B * HOST_STEPS) * 1e6, "flips": flips})
            print(f"host {name} {B}: {rows[-1]['us_per_sample_step']:.2f} us", file=sys.stderr, flush=True)
    return rows


def host_split(cells: dict) -> tuple:
    """(fixed us per step, us per sample-step that grows with the samples) from the two smallest batches:
    ``time per step = fixed + samples * slope``. The fixed part is Python and dispatch, paid once per step
    whatever the batch; the slope is tensor arithmetic (on a GPU, device time that runs behind the host). The two
    smallest batches: at thousands of samples CPU caches bend the line (the arithmetic's own cost, not the host's)."""
    lo, hi = sorted(cells)[:2]
    t = {b: cells[b]["seconds"] / HOST_STEPS * 1e6 for b in (lo, hi)}
    slope = (t[hi] - t[lo]) / (hi - lo)
    return t[lo] - slope * lo, slope


def host_report(rows: list, image: int) -> str:
    sizes = sorted({r["samples"] for r in rows})
    big = sizes[-1]
    lines = [f"Host overhead: microseconds of wall time per sample-step on the near-free l2 metric at "
             f"{image}x{image} px "
             f"({HOST_STEPS} steps per sample; every sample runs every step). Split: time per step = fixed + "
             f"samples x slope (from {sizes[0]} and {sizes[1]} samples); fixed / {big}: the per-sample-step host work "
             f"left when the arithmetic runs on a device (a projection):", "",
             "| attack | " + " | ".join(f"{b} samples" for b in sizes) +
             f" | fixed us per step | slope us per sample-step | fixed / {big} |",
             "|---|" + "---|" * (len(sizes) + 3)]
    for name in dict.fromkeys(r["attack"] for r in rows):
        cells = {r["samples"]: r for r in rows if r["attack"] == name}
        fixed, slope = host_split(cells)
        lines.append(f"| {name} | " + " | ".join(f"{cells[b]['us_per_sample_step']:.2f}" for b in sizes) +
                     f" | {fixed:.0f} | {slope:.2f} | {fixed / big:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", default="lpips_alex,lpips_vgg,dists,ssim")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the samples per metric")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--host", default="64,512,4096", help="sample counts of the host-overhead section ('' skips it)")
    ap.add_argument("--host-image", type=int, default=8, help="image size of the host-overhead section")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    attacks = [x for x in a.attacks.split(",") if x]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        ap.error(f"--attacks: unknown {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    host = [int(b) for b in a.host.split(",") if b]
    host_rows = host_overhead(host, a.host_image, a.device, a.repeats) if host else []
    results = []
    for m in [m for m in a.metrics.split(",") if m]:
        n = max(2, int(SAMPLES.get(m, 16) * a.scale))
        results.append(run_metric(m, n, a.device, a.repeats, attacks))
        print(f"done {m}", file=sys.stderr, flush=True)
    print(f"device: {device_name}; torch {torch.__version__}\n")
    if results:
        print(report(results))
    if host_rows:
        print("\n" + host_report(host_rows, a.host_image))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"device": device_name, "results": results, "host": host_rows}, indent=1))


if __name__ == "__main__":
    main()
