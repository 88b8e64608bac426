"""Speed of the batched attacks against the official per-sample loops (benchmarks/official_loop.py).

    python benchmarks/attack_speed.py [--n 64] [--n64 16] [--metric lpips_alex] [--pretrained false]

Each phase runs in a fresh process (so its peak RSS is its own); all phases attack the same built-in
samples (one batch of n, as bench.py's default batch size). Reported: samples/s, speed-up ratios
measured in this one run, peak memory, and whether results are identical (PGD adv images to 1e-5
and iterations; FGSM epsilons). In float32, batched kernels differ from batch-1 kernels at the 1e-8
level and PGD's sign() can amplify that into a different adversarial image, so identity is checked
again in float64 (``batch_invariant=True``) on n64 samples.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]


def _batch(n: int):
    from lit_attacks.datamodules.bapps import BappsDataModule

    dm = BappsDataModule(batch_size=n, builtin_n=max(8, n // 5 + 4))
    return next(iter(dm.predict_dataloader()))


def _phase(name: str, args: dict, q) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    from lit_attacks.attacks import create_attack
    from lit_attacks.metrics import create_metric

    f64 = name.endswith("64")
    n = args["n64"] if f64 else args["n"]
    batch = _batch(args["n"])
    batch = {k: (v[:n].double() if f64 else v[:n]) if torch.is_tensor(v) else v[:n] for k, v in batch.items()}
    m = create_metric(args["metric"], pretrained=args["pretrained"])
    m = m.double() if f64 else m
    args = dict(args, n=n)
    if True:
        t = time.perf_counter()
        if "pgd" in name:
            if name.startswith("reference_pgd"):
                from official_loop import official_pgd

                out = [official_pgd(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1], batch["p1"][i:i + 1],
                                     0.03, 0.001, 30) for i in range(args["n"])]
                result = {"iterations": [it for _, it in out], "adv": torch.cat([a for a, _ in out]).tolist()}
            else:
                from lit_attacks.attacks.objectives import split_prey
                from lit_attacks.attacks.pgd import pgd

                with torch.no_grad():
                    s0, s1 = m(batch["ref"], batch["p0"]), m(batch["ref"], batch["p1"])
                prey, _, _, s_other = split_prey(batch["p0"], batch["p1"], s0, s1)
                adv, iters, _ = pgd(m.bind(batch["ref"]), prey, s_other)
                result = {"iterations": iters.tolist(), "adv": adv.tolist()}
        elif name == "reference_fgsm":
            from official_loop import official_fgsm

            result = {"eps": [official_fgsm(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1],
                                             batch["p1"][i:i + 1])[0] for i in range(args["n"])]}
        else:
            a = create_attack("fgsm", args["metric"], pretrained=args["pretrained"])
            a.metric = m
            recs = a.predict_step(batch).rows()
            result = {"eps": [None if r["eps"] != r["eps"] else r["eps"] for r in recs]}
        seconds = time.perf_counter() - t
    q.put({"phase": name, "seconds": seconds, "samples_per_s": args["n"] / seconds,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **result})


def run(name: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_phase, args=(name, args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--n64", type=int, default=16, help="samples for the float64 identity check of PGD")
    ap.add_argument("--metric", default="lpips_alex")
    ap.add_argument("--pretrained", default="false", choices=["true", "false"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    args = {"n": a.n, "n64": a.n64, "metric": a.metric, "pretrained": a.pretrained == "true", "threads": a.threads}
    _batch(a.n)  # build the built-in set once, outside the timings
    res = {p: run(p, args) for p in ("reference_pgd", "pgd", "reference_pgd64", "pgd64", "reference_fgsm", "fgsm")}
    import torch

    rows = []
    for name, ref in (("pgd", "reference_pgd"), ("pgd64", "reference_pgd64"), ("fgsm", "reference_fgsm")):
        r = res[name]
        if name.startswith("pgd"):
            it_a, it_b = r["iterations"], res[ref]["iterations"]
            diff = (torch.tensor(r["adv"]) - torch.tensor(res[ref]["adv"])).flatten(1).abs().amax(1)
            same = sum(x == y and d <= 1e-5 for x, y, d in zip(it_a, it_b, diff.tolist()))
            identical = same == len(it_a)
            detail = f"same iterations and adv (1e-5) on {same}/{len(it_a)} samples"
        else:
            eq = [x == y or (x is not None and y is not None and abs(x - y) < 1e-9) for x, y in zip(r["eps"], res[ref]["eps"])]
            identical = all(eq)
            detail = f"epsilons equal on {sum(eq)}/{len(eq)} samples"
        rows.append({"phase": name, "samples_per_s": r["samples_per_s"], "reference_samples_per_s": res[ref]["samples_per_s"],
                     "speedup": r["samples_per_s"] / res[ref]["samples_per_s"], "identical": identical,
                     "peak_rss_mb": r["peak_rss_mb"], "reference_peak_rss_mb": res[ref]["peak_rss_mb"], "detail": detail})
    print(f"{a.metric} ({'pretrained' if args['pretrained'] else 'random backbone'}), {a.n} samples at 64x64 "
          f"(pgd64: {a.n64} samples in float64), {a.threads} threads\n")
    print("| attack | batched samples/s | reference samples/s | speed-up | identical | peak RSS MB (batched / ref) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['samples_per_s']:.1f} | {r['reference_samples_per_s']:.2f} | {r['speedup']:.1f}x | "
              f"{r['identical']} ({r['detail']}) | {r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
