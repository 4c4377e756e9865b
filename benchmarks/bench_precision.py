"""Issue 14, deliverable 2: fp32 / bf16 MAGIC scores against float64, with and without the float64
prefix (the first reverse steps recomputed in float64, ``TrajectoryConfig.float64_prefix``).

For each start model and trajectory: one float64 reference run, then runs in the lower precision
with ``float64_prefix`` 0 (off) and 2 (the default); Pearson / Spearman / relative L2 error of the
scores against float64 per query, and the per-step errors the precision check measured.
``--vjp-variants`` (CPU) also runs the optimiser VJP in float64 and in a cancellation-free
(eps-aware) form, prefix off: the candidate fixes that do not help.

The tests' 6-step model, CPU (seconds)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_precision.py --toy

CPU, tiny world (about 10 min on 2 idle cores)::

    PYTHONPATH=src python benchmarks/bench_precision.py --vjp-variants

GPU, small world (one H200, about 3 min including pretraining the filtered model)::

    PYTHONPATH=src python benchmarks/bench_precision.py --preset small --device cuda \\
        --steps 48 --max-length 80 --dtypes float32,bf16 --trust-timing --budget-s 170

Writes ``precision.json`` (and the log) to ``$OUT`` when set, else ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_common import add_args, corr, setup, trajectory  # noqa: E402

# named trajectories (the issue's): AdamW 1e-4 with warmup 8, AdamW 1e-3 without warmup
TRAJ = {
    "adamw1e-4-wu8": dict(optimizer="adamw", lr=1e-4, warmup_steps=8),
    "adamw1e-3": dict(optimizer="adamw", lr=1e-3, warmup_steps=0),
    "sgd3e-2": dict(optimizer="sgd", lr=3e-2, warmup_steps=0),
}


def _vjp_variant(kind: str):
    """AdamW.vjp computed in float64 ("f64") or in the eps-aware form ("eps_aware")."""
    from magic_unlearn.attribution.optim import lr_at

    @torch.no_grad()
    def vjp(self, params, bufs, grads, t, adj_p, adj_b, out=None):
        cfg = self.cfg
        lr, wd = lr_at(cfg, t), cfg.weight_decay
        b1, b2 = cfg.betas
        bc1, bc2 = self._bias(t)
        a, b = (1 - b1) / bc1, (1 - b2) / bc2
        gbar = []
        for i, (m, v, g, ap, am, av) in enumerate(
            zip(bufs[0], bufs[1], grads, adj_p, adj_b[0], adj_b[1], strict=True)
        ):
            cd = torch.float64 if kind == "f64" else ap.dtype
            m, v, g = m.to(cd), v.to(cd), g.to(cd)
            apc, amc, avc = ap.to(cd), am.to(cd), av.to(cd)
            m1, v1 = m * b1 + g * (1 - b1), v * b2 + g * g * (1 - b2)
            sv = (v1 / bc2).sqrt_()
            d = sv + cfg.eps
            ubar = apc * (-lr)
            pos = sv > 0
            safe = sv.clamp_min(torch.finfo(sv.dtype).tiny)
            big_m = amc + ubar / (d * bc1)
            inv2s = torch.where(pos, 0.5 / safe, torch.zeros_like(sv))
            big_v = avc + ubar * (-(m1 / bc1) / (d * d)) * inv2s / bc2
            if kind == "eps_aware":
                # (1-b1)/(d bc1) - (1-b2) g m_hat / (d^2 sqrt(v_hat) bc2)
                #   = [(a r - b g q) / sqrt(v_hat) + a eps] / d^2, q = b1 m / bc1, r = b2 v / bc2:
                # the g^2 terms that cancel (catastrophically at step 0) are gone
                q, r = m * (b1 / bc1), v * (b2 / bc2)
                num = torch.where(pos, (r * a - g * q * b) / safe, torch.zeros_like(sv))
                gb = (
                    amc * (1 - b1) + avc * g * (2 * (1 - b2)) + ubar * (num + a * cfg.eps) / (d * d)
                )
            else:
                gb = big_m * (1 - b1) + big_v * g * (2 * (1 - b2))
            gbar.append(out[i].copy_(gb) if out is not None else gb.to(ap.dtype))
            am.copy_(big_m * b1)
            av.copy_(big_v * b2)
            if wd:
                ap.mul_(1 - lr * wd)
        return gbar

    return vjp


def toy(eps_values: list[float]) -> None:
    """The tests' 6-step AdamW model (``tests/test_attribution.py``), fp32 against float64:
    plain, optimiser VJP in float64, eps-aware VJP, float64 prefix of 1 and 2 steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from magic_unlearn.attribution import attribute
    from magic_unlearn.attribution.optim import AdamW
    from magic_unlearn.models import build_model
    from test_attribution import TINY, V, cfg_for, f_heldout, make_corpus

    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    corpus = make_corpus()
    mask = corpus.loss_mask > 0
    legacy = AdamW.vjp
    print("| eps | run | Pearson | rel. L2 error |\n|---|---|---|---|")
    for eps in eps_values:
        kw = dict(steps=6, checkpointing="sqrt", storage="cpu", eps=eps)
        ref = attribute(model, corpus, {"f": f_heldout}, cfg_for("adamw", **kw), progress=False)
        for name, k, vjp in (
            ("fp32", 0, None),
            ("fp32, VJP in float64", 0, "f64"),
            ("fp32, eps-aware VJP", 0, "eps_aware"),
            ("fp32, float64 prefix 1", 1, None),
            ("fp32, float64 prefix 2", 2, None),
        ):
            AdamW.vjp = legacy if vjp is None else _vjp_variant(vjp)
            try:
                cfg = cfg_for("adamw", dtype="float32", float64_prefix=k, **kw)
                art = attribute(model, corpus, {"f": f_heldout}, cfg, progress=False)
            finally:
                AdamW.vjp = legacy
            c = corr(art.scores["f"], ref.scores["f"], mask)
            print(f"| {eps:g} | {name} | {c['pearson']:.8f} | {c['rel_l2']:.2e} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(ap)
    ap.add_argument("--toy", action="store_true", help="only the tests' model (seconds, CPU)")
    ap.add_argument("--variants", default="filtered", help="start models, comma-separated")
    ap.add_argument("--traj", default="adamw1e-4-wu8,adamw1e-3", help=f"of {list(TRAJ)}")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--dtypes", default="float32", help="float32 and/or bf16 (autocast)")
    ap.add_argument("--prefixes", default="0,2")
    ap.add_argument("--vjp-variants", action="store_true")
    ap.add_argument("--trust-timing", action="store_true", help="time one default trust report")
    ap.add_argument("--budget-s", type=float, default=0, help="skip what starts after this")
    args = ap.parse_args()
    if args.toy:
        toy([1e-8, 1e-10])
        return
    t_start = time.time()
    from magic_unlearn.attribution import attribute
    from magic_unlearn.attribution.optim import AdamW
    from magic_unlearn.models import load_model

    variants = tuple(args.variants.split(","))
    S = setup(args, variants)
    mask = S.corpus.loss_mask > 0
    out_dir = Path(os.environ.get("OUT") or args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, res = [], {"pretrain_s": S.pretrain_s, "device": str(S.device), "runs": []}
    if S.device.type == "cuda":
        res["card"] = torch.cuda.get_device_name(S.device)
    print(f"setup {time.time() - t_start:.1f} s (pretraining {S.pretrain_s:.1f} s)", flush=True)

    def run(variant: str, **kw):
        dt = kw.get("dtype", "float32")
        model = load_model(S.models[variant], dtype=dt, device=S.device)
        cfg = trajectory(steps=args.steps, max_length=args.max_length, **kw)
        t0 = time.time()
        art = attribute(model, S.corpus, S.measurements, cfg, progress=False)
        return art, time.time() - t0

    over = lambda: args.budget_s and time.time() - t_start > args.budget_s  # noqa: E731
    legacy = AdamW.vjp
    for variant in variants:
        for tname in args.traj.split(","):
            if over():
                print(f"budget reached: skipping {variant} {tname}", flush=True)
                continue
            tk = TRAJ[tname]
            ref, ref_s = run(variant, dtype="float64", trust={"enabled": False}, **tk)
            print(f"{variant} {tname} float64: {ref_s:.1f} s", flush=True)
            todo = [
                (d, p, "exact")
                for d in args.dtypes.split(",")
                for p in (int(x) for x in args.prefixes.split(","))
            ]
            if args.vjp_variants and tk["optimizer"] == "adamw":
                todo += [("float32", 0, "f64"), ("float32", 0, "eps_aware")]
            for dname, prefix, vjp in todo:
                if over():
                    break
                kw = dict(float64_prefix=prefix, trust={"enabled": False}, **tk)
                kw.update(dtype="float32", precision="bf16" if dname == "bf16" else "fp32")
                AdamW.vjp = legacy if vjp == "exact" else _vjp_variant(vjp)
                try:
                    art, secs = run(variant, **kw)
                finally:
                    AdamW.vjp = legacy
                prec = art.meta["trust"]["checks"]["precision"]
                for q in S.measurements:
                    c = corr(art.scores[q], ref.scores[q], mask)
                    steps = (prec.get("queries") or {}).get(q, {}).get("step_rel_err")
                    row = dict(
                        variant=variant,
                        traj=tname,
                        dtype=dname,
                        prefix=prefix,
                        vjp=vjp,
                        query=q,
                        seconds=secs,
                        step_rel_err=steps,
                        **c,
                    )
                    rows.append(row)
                    print(
                        f"| {variant} | {tname} | {dname} | {prefix} | {vjp} | {q} | "
                        f"{c['pearson']:.4f} | {c['spearman']:.4f} | {c['rel_l2']:.2e} | "
                        f"{'-' if steps is None else ', '.join(f'{e:.1e}' for e in steps)} | "
                        f"{secs:.1f} |",
                        flush=True,
                    )
    if args.trust_timing and not over():
        v = variants[0]
        art, secs = run(v, float64_prefix=2, **TRAJ["adamw1e-4-wu8"])
        t = art.meta["timings"]
        res["trust_timing"] = {
            "total_s": secs,
            "trust_s": t.get("trust_s"),
            "float64_prefix_s": t.get("float64_prefix_s"),
            "forward_s": t.get("forward_s"),
            "reverse_s": t.get("reverse_s"),
            "summary": art.meta["trust"]["summary"],
        }
        print("trust timing:", json.dumps(res["trust_timing"]), flush=True)
    res["runs"] = rows
    res["wall_s"] = time.time() - t_start
    (out_dir / "precision.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out_dir / 'precision.json'} ({res['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
