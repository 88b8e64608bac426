"""Speed of the batched attacks against the plain per-sample references of tests/test_attacks.py.

    python benchmarks/attack_speed.py [--n 32] [--metric lpips_alex] [--pretrained false]

Each phase runs in a fresh process (so its peak RSS is its own); all phases attack the same built-in
samples. Reported: samples/s, speed-up ratios measured in this one run, peak memory, and whether the
results are identical (PGD adv images to 1e-5, iterations and flips; FGSM epsilons).
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _batch(n: int):
    from datamodules.bapps import BappsDataModule

    dm = BappsDataModule(batch_size=n, builtin_n=max(8, n // 5 + 4))
    return next(iter(dm.predict_dataloader()))


def _phase(name: str, args: dict, q) -> None:
    import torch

    torch.set_num_threads(args["threads"])
    from lit_attacks.attacks import create_attack
    from lit_attacks.metrics import create_metric

    batch = _batch(args["n"])
    m = create_metric(args["metric"], pretrained=args["pretrained"])
    invariant = name.endswith("invariant") or name.startswith("reference")
    ctx = torch.backends.mkldnn.flags(enabled=not invariant)
    with ctx:
        t = time.perf_counter()
        if name.startswith("pgd") or name == "reference_pgd":
            if name == "reference_pgd":
                from test_attacks import reference_pgd

                out = [reference_pgd(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1], batch["p1"][i:i + 1],
                                     0.03, 0.001, 30) for i in range(args["n"])]
                result = {"iterations": [it for _, it in out], "adv": torch.cat([a for a, _ in out]).tolist()}
            else:
                a = create_attack("pgd", args["metric"], pretrained=args["pretrained"], batch_invariant=invariant)
                a.metric = m
                from lit_attacks.attacks.objectives import split_prey
                from lit_attacks.attacks.pgd import pgd

                with torch.no_grad():
                    s0, s1 = m(batch["ref"], batch["p0"]), m(batch["ref"], batch["p1"])
                prey, _, _, s_other = split_prey(batch["p0"], batch["p1"], s0, s1)
                adv, iters, _ = pgd(m.bind(batch["ref"]), prey, s_other)
                result = {"iterations": iters.tolist(), "adv": adv.tolist()}
        elif name == "reference_fgsm":
            from test_attacks import reference_fgsm

            result = {"eps": [reference_fgsm(m, batch["ref"][i:i + 1], batch["p0"][i:i + 1],
                                             batch["p1"][i:i + 1])[0] for i in range(args["n"])]}
        else:
            a = create_attack("fgsm", args["metric"], pretrained=args["pretrained"], batch_invariant=invariant)
            a.metric = m
            recs = a.predict_step(batch)
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
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--metric", default="lpips_alex")
    ap.add_argument("--pretrained", default="false", choices=["true", "false"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    args = {"n": a.n, "metric": a.metric, "pretrained": a.pretrained == "true", "threads": a.threads}
    _batch(a.n)  # build the built-in set once, outside the timings
    res = {p: run(p, args) for p in ("reference_pgd", "pgd", "pgd_invariant", "reference_fgsm", "fgsm", "fgsm_invariant")}
    import torch

    ref_adv = torch.tensor(res["reference_pgd"]["adv"])
    rows = []
    for name, ref in (("pgd", "reference_pgd"), ("pgd_invariant", "reference_pgd"), ("fgsm", "reference_fgsm"),
                      ("fgsm_invariant", "reference_fgsm")):
        r = res[name]
        if name.startswith("pgd"):
            same_iters = r["iterations"] == res[ref]["iterations"]
            max_diff = (torch.tensor(r["adv"]) - ref_adv).abs().max().item()
            identical = same_iters and max_diff <= 1e-5
            detail = f"iterations equal: {same_iters}, max |adv diff| {max_diff:.2e}"
        else:
            eq = [x == y or (x is not None and y is not None and abs(x - y) < 1e-9) for x, y in zip(r["eps"], res[ref]["eps"])]
            identical = all(eq)
            detail = f"epsilons equal on {sum(eq)}/{len(eq)} samples"
        rows.append({"phase": name, "samples_per_s": r["samples_per_s"], "reference_samples_per_s": res[ref]["samples_per_s"],
                     "speedup": r["samples_per_s"] / res[ref]["samples_per_s"], "identical": identical,
                     "peak_rss_mb": r["peak_rss_mb"], "reference_peak_rss_mb": res[ref]["peak_rss_mb"], "detail": detail})
    print(f"{a.metric} ({'pretrained' if args['pretrained'] else 'random backbone'}), {a.n} samples at 64x64, "
          f"{a.threads} threads\n")
    print("| attack | batched samples/s | reference samples/s | speed-up | identical | peak RSS MB (batched / ref) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['samples_per_s']:.1f} | {r['reference_samples_per_s']:.2f} | {r['speedup']:.1f}x | "
              f"{r['identical']} ({r['detail']}) | {r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
