"""Issue 14, deliverable 1: the trust report of MAGIC runs on the tiny world, trajectory by trajectory.

Each trajectory is attributed once in fp32 with the default trust settings (2 random
drop-directions of 10% of the documents, step sizes 0.01 / 0.1 / 1, float64 prefix of 2 steps);
the table gives the verdict, the worst first-order error per step size, the linear regime's
extent, the float64 prefix's per-step error and the cost of the checks next to the run.

    PYTHONPATH=src python benchmarks/bench_trust.py            # about 3 min on 2 idle cores

Writes ``trust.json`` to ``$OUT`` when set, else ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_common import add_args, setup, trajectory  # noqa: E402

TRAJ = {
    "sgd0.3": dict(optimizer="sgd", lr=0.3, warmup_steps=0),
    "sgd3e-2": dict(optimizer="sgd", lr=3e-2, warmup_steps=0),
    "adamw1e-3": dict(optimizer="adamw", lr=1e-3, warmup_steps=0),
    "adamw1e-4": dict(optimizer="adamw", lr=1e-4, warmup_steps=0),
    "adamw1e-4-wu8": dict(optimizer="adamw", lr=1e-4, warmup_steps=8),
}
DEFAULT_RUNS = (
    "filtered:sgd0.3,filtered:sgd3e-2,filtered:adamw1e-3,filtered:adamw1e-4,"
    "filtered:adamw1e-4-wu8,base:sgd0.3,base:adamw1e-4-wu8"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(ap)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="variant:trajectory, comma-separated")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    from magic_unlearn.attribution import attribute
    from magic_unlearn.models import load_model

    runs = [r.split(":") for r in args.runs.split(",")]
    S = setup(args, tuple(dict.fromkeys(v for v, _ in runs)))
    out_dir = Path(os.environ.get("OUT") or args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(
        "| start | trajectory | verdict | error h=0.01 / 0.1 / 1 (worst query) | linear up to h | "
        "hazard actual/predicted at h=1 | precision per-step error | trust s / run s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, tname in runs:
        model = load_model(S.models[variant], dtype=args.dtype, device=S.device)
        cfg = trajectory(
            steps=args.steps, max_length=args.max_length, dtype=args.dtype, **TRAJ[tname]
        )
        t0 = time.time()
        art = attribute(model, S.corpus, S.measurements, cfg, progress=False)
        secs = time.time() - t0
        tr = art.meta["trust"]
        sm = tr["checks"]["smoothness"]
        pq = sm["per_query"]
        errs = [max(r["rel_err"][i] for r in pq.values()) for i in range(len(sm["step_sizes"]))]
        extent = min(r["linear_extent"] for r in pq.values())
        t = art.meta["timings"]
        extra = t.get("trust_s", 0) + t.get("float64_prefix_s", 0)
        row = dict(
            variant=variant,
            traj=tname,
            verdict=tr["verdict"],
            errors=errs,
            extent=extent,
            ratio_h1=pq["hazard_qa"]["ratio"][-1],
            precision=tr["checks"]["precision"].get("per_step_error"),
            trust_s=t.get("trust_s"),
            prefix_s=t.get("float64_prefix_s"),
            total_s=secs,
            report=tr,
        )
        rows.append(row)
        prec = row["precision"]
        print(
            f"| {variant} | {tname} | {tr['verdict']} | "
            + " / ".join(f"{e:.2g}" for e in errs)
            + f" | {extent:g} | {row['ratio_h1']:.3g} | "
            + ("-" if prec is None else f"{prec:.1e}")
            + f" | {extra:.1f} / {secs - extra:.1f} |",
            flush=True,
        )
    (out_dir / "trust.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"wrote {out_dir / 'trust.json'}")


if __name__ == "__main__":
    main()
