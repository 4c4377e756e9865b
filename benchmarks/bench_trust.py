"""Issue 14: the trust report of MAGIC runs, trajectory by trajectory, and fp32 / bf16 against float64.

Each trajectory is attributed in fp32 with the default trust settings (2 random drop-directions
of 10% of the documents, step sizes 0.01 / 0.1 / 1, the default float64 prefix): the verdict,
the worst first-order error per step size, the parameter sign agreement, the linear regime's
extent, the precision check and the cost of the checks next to the run. With ``--reference``
the same trajectory also runs in float64 (the reference) and in fp32 without the float64 prefix
(and in bf16 with and without it, ``--bf16``): Pearson / Spearman of each against float64 per
query, the measure of deliverable 2 (target Pearson >= 0.99). ``--conditioning`` adds float64
reruns with noise of one fp32 (or float64) rounding added to every weight after every step
(``NOISE``): how far the float64 scores themselves move under the perturbation that storing the
weights in fp32 makes, the floor below which no fp32 engine can agree with float64.

Tiny world, CPU (about 5 min on 2 idle cores)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_trust.py --threads 1

Small world, one H200 (under 5 min; the lead runs it)::

    PYTHONPATH=src python benchmarks/bench_trust.py --preset small --device cuda --steps 48 \\
        --max-length 80 --reference --bf16 --budget-s 200 --work /tmp/bench_trust \\
        --runs filtered:adamw1e-4-wu8,filtered:adamw1e-3,filtered:sgd3e-2,base:adamw1e-4-wu8,filtered:sgd0.3

Writes ``trust.json`` (rewritten after every trajectory) and ``trust.log`` to ``$OUT`` when set,
else ``--work``; prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_common import add_args, corr, setup, trajectory  # noqa: E402

TRAJ = {
    "sgd0.3": dict(optimizer="sgd", lr=0.3, warmup_steps=0),
    "sgd3e-2": dict(optimizer="sgd", lr=3e-2, warmup_steps=0),
    "adamw1e-3": dict(optimizer="adamw", lr=1e-3, warmup_steps=0),
    "adamw1e-4": dict(optimizer="adamw", lr=1e-4, warmup_steps=0),
    "adamw1e-4-wu8": dict(optimizer="adamw", lr=1e-4, warmup_steps=8),
    # the same trajectory better conditioned: AdamW's step derivative peaks at 1 / (4 eps)
    "adamw1e-4-wu8-eps1e-6": dict(optimizer="adamw", lr=1e-4, warmup_steps=8, eps=1e-6),
    # the frozen-denominator approximation (no derivative path through v)
    "adamw1e-4-wu8-frozen": dict(
        optimizer="adamw", lr=1e-4, warmup_steps=8, adam_denominator="frozen"
    ),
}
DEFAULT_RUNS = (
    "filtered:sgd0.3,filtered:sgd3e-2,filtered:adamw1e-3,filtered:adamw1e-4,"
    "filtered:adamw1e-4-wu8,base:sgd0.3,base:adamw1e-4-wu8"
)
# --conditioning: float64 reruns with noise of one rounding on every weight after every step
# t >= k (theta_{t+1} *= 1 + r u, u ~ U(-1, 1), fixed per step so replays reproduce it): r = 2^-24
# is what storing the weights in fp32 does, r = 2^-53 what float64 does. The fp32 runs start
# from exact weights (theta_0 is stored in fp32) and round from theta_1 on (the float64 prefix
# redoes only the first reverse steps): if the float64 scores move as much under that noise as
# fp32 scores differ from float64, no engine that keeps the weights in fp32 can agree better,
# and the limit is the trajectory's conditioning, not the arithmetic. Noise from theta_{k+1} is
# what a float64 *forward* prefix of k steps (then fp32) would leave
NOISE = {
    "float64, fp32-sized noise from theta_1": (2.0**-24, 1),
    "float64, fp32-sized noise from theta_3": (2.0**-24, 3),
    "float64, fp32-sized noise from theta_9": (2.0**-24, 9),
    "float64, float64-sized noise from theta_1": (2.0**-53, 1),
}


def noisy_optimizers(r: float, first: int):
    """Patch MAGIC's optimiser factory: each step t with t + 1 >= ``first`` adds the noise."""
    from unittest import mock

    import torch

    from magic_unlearn.attribution import magic
    from magic_unlearn.attribution.optim import make_optimizer

    def make(cfg):
        opt = make_optimizer(cfg)
        step = opt.step

        def noisy(params, bufs, grads, t):
            step(params, bufs, grads, t)
            if t + 1 >= first:
                g = torch.Generator().manual_seed(10_000 + t)
                with torch.no_grad():
                    for p in params:
                        u = torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1
                        p.mul_(1 + r * u.to(p.device, p.dtype))

        opt.step = noisy
        return opt

    return mock.patch.object(magic, "make_optimizer", make)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(ap)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="variant:trajectory, comma-separated")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--reference", action="store_true", help="also float64 and fp32 prefix 0")
    ap.add_argument("--bf16", action="store_true", help="with --reference: bf16 runs too")
    ap.add_argument(
        "--prefixes",
        default="",
        help="with --reference: fp32 runs with these float64 prefix lengths too, e.g. 4,8,16",
    )
    ap.add_argument(
        "--tf32", action="store_true", help="with --reference: a precision 'tf32' run too"
    )
    ap.add_argument(
        "--conditioning",
        action="store_true",
        help="with --reference: float64 reruns with one rounding's noise after every step (NOISE)",
    )
    ap.add_argument("--budget-s", type=float, default=0, help="skip runs that start after this")
    args = ap.parse_args()
    t_start = time.time()
    out_dir = Path(os.environ.get("OUT") or args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_f = (out_dir / "trust.log").open("a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_f.write(msg + "\n")
        log_f.flush()

    import torch

    from magic_unlearn.attribution import attribute
    from magic_unlearn.models import load_model

    runs = [r.split(":") for r in args.runs.split(",")]
    S = setup(args, tuple(dict.fromkeys(v for v, _ in runs)))
    mask = S.corpus.loss_mask > 0
    res: dict = {"device": str(S.device), "args": vars(args), "pretrain_s": S.pretrain_s}
    if S.device.type == "cuda":
        res["card"] = torch.cuda.get_device_name(S.device)
    res["runs"], res["precision"], res["errors"] = [], [], []
    log(f"setup {time.time() - t_start:.1f} s (pretraining {S.pretrain_s:.1f} s) on {S.device}")

    def run(variant: str, tname: str, noise: tuple[float, int] | None = None, **kw):
        model = load_model(S.models[variant], dtype=kw.get("dtype", "float32"), device=S.device)
        cfg = trajectory(steps=args.steps, max_length=args.max_length, **{**TRAJ[tname], **kw})
        t0 = time.time()
        with noisy_optimizers(*noise) if noise else contextlib.nullcontext():
            art = attribute(model, S.corpus, S.measurements, cfg, progress=False)
        return art, time.time() - t0

    def save() -> None:
        res["wall_s"] = time.time() - t_start
        (out_dir / "trust.json").write_text(json.dumps(res, indent=1, default=str))

    def trust_row(variant: str, tname: str, art, secs: float) -> None:
        tr = art.meta["trust"]
        sm = tr["checks"]["smoothness"]
        pq = sm["per_query"]
        errs = [max(r["rel_err"][i] for r in pq.values()) for i in range(len(sm["step_sizes"]))]
        extent = min(r["linear_extent"] for r in pq.values())
        agree = sm.get("param_agreement") or [None]
        t = art.meta["timings"]
        extra = t.get("trust_s", 0) + t.get("float64_prefix_s", 0)
        prec = tr["checks"]["precision"].get("per_step_error")
        row = dict(
            variant=variant,
            traj=tname,
            verdict=tr["verdict"],
            errors=errs,
            param_agreement=sm.get("param_agreement"),
            extent=extent,
            ratio_h1=pq["hazard_qa"]["ratio"][-1],
            precision=prec,
            trust_s=t.get("trust_s"),
            prefix_s=t.get("float64_prefix_s"),
            total_s=secs,
            report=tr,
        )
        res["runs"].append(row)
        log(
            f"| {variant} | {tname} | {tr['verdict']} | "
            + " / ".join(f"{e:.2g}" for e in errs)
            + f" | {'-' if agree[0] is None else f'{agree[0]:.3f}'} | {extent:g} | "
            + f"{row['ratio_h1']:.3g} | "
            + ("-" if prec is None else f"{prec:.1e}")
            + f" | {extra:.1f} / {secs - extra:.1f} |"
        )

    head = (
        "| start | trajectory | verdict | error h=0.01 / 0.1 / 1 (worst query) | param sign "
        "agreement | linear up to h | hazard actual/predicted at h=1 | precision per-step error "
        "| trust s / run s |"
    )
    log(head + "\n|---|---|---|---|---|---|---|---|---|")
    prec_lines = []
    for variant, tname in runs:
        if args.budget_s and time.time() - t_start > args.budget_s:
            log(f"budget {args.budget_s:g} s reached: skipping {variant}:{tname}")
            continue
        try:
            art, secs = run(variant, tname, dtype="float32")
            trust_row(variant, tname, art, secs)
        except Exception:  # keep going: the lead gets the other rows
            res["errors"].append(f"{variant}:{tname} fp32 + trust: {traceback.format_exc()}")
            log(f"| {variant} | {tname} | FAILED (trust.json 'errors') |")
            art = None
        if args.reference:
            try:
                ref, ref_s = run(variant, tname, dtype="float64", trust={"enabled": False})
            except Exception:
                res["errors"].append(f"{variant}:{tname} float64: {traceback.format_exc()}")
                log(f"{variant}:{tname}: the float64 reference failed (trust.json 'errors')")
                save()
                continue
            fp32 = dict(dtype="float32")
            pk = "auto" if art is None else art.meta["semantics"]["float64_prefix_steps"]
            bf16 = dict(dtype="float32", precision="bf16")
            todo = [
                (f"fp32, prefix {pk} (default)", art, fp32),
                ("fp32, prefix 0", None, dict(fp32, float64_prefix=0)),
            ]
            if args.bf16:
                todo += [
                    ("bf16, prefix 0", None, dict(bf16, float64_prefix=0)),
                    ("bf16, default prefix", None, bf16),
                ]
            for k in (int(x) for x in args.prefixes.split(",") if x):
                todo.append((f"fp32, prefix {k}", None, dict(fp32, float64_prefix=k)))
            if args.tf32:
                todo.append(("tf32 (prefix only measures)", None, dict(fp32, precision="tf32")))
            if args.conditioning:
                todo += [
                    (name, None, dict(dtype="float64", noise=nz)) for name, nz in NOISE.items()
                ]
            for name, a, kw in todo:
                try:
                    if a is None:
                        a, _ = run(variant, tname, trust={"enabled": False}, **kw)
                except Exception:
                    res["errors"].append(f"{variant}:{tname} {name}: {traceback.format_exc()}")
                    log(f"{variant}:{tname} {name}: failed (trust.json 'errors')")
                    continue
                for q in S.measurements:
                    c = corr(a.scores[q], ref.scores[q], mask)
                    res["precision"].append(
                        dict(variant=variant, traj=tname, run=name, query=q, float64_s=ref_s, **c)
                    )
                    prec_lines.append(
                        f"| {variant} | {tname} | {name} | {q} | {c['pearson']:.4f} | "
                        f"{c['spearman']:.4f} | {c['rel_l2']:.2e} |"
                    )
        save()
    if prec_lines:
        log("\nScores against the float64 run of the same trajectory:\n")
        log("| start | trajectory | run | query | Pearson | Spearman | rel. L2 error |")
        log("|---|---|---|---|---|---|---|")
        for line in prec_lines:
            log(line)
    save()
    log(f"wrote {out_dir / 'trust.json'} ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
