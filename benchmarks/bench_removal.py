"""Issue 14, deliverable 3: do the scores hold for large changes, and what makes them hold better?

On the tiny world (filtered start, forget corpus, 24-step trajectories, fp32 with the float64
prefix) each trajectory is attributed, then judged by retraining:

- LDS at alpha 0.1 / 0.3 / 0.5 (random document subsets dropped; Spearman of predicted and
  actual change over the subsets, ``analysis/lds.py``);
- removal curves: drop the top-k proponent documents / tokens (k = 1% .. 20%), retrain, compare
  actual and predicted change, next to a random drop of the same size (``analysis/removal.py``).

Score sets on the main trajectory (AdamW 1e-4, warmup 8): MAGIC (one run), an ensemble (mean of
MAGIC over ``--ensemble`` data-order seeds), AdamW with a frozen denominator (absolute,
approximate semantics, ``adam_denominator=frozen``) and gradient similarity. Other trajectories
(``--others``): smoother or absolute ones, MAGIC only. ``--heldout-seed`` also scores LDS on the
main trajectory with another data order (does a score set predict a run it was not computed on?).

    PYTHONPATH=src python benchmarks/bench_removal.py     # about 15 min on 2 idle cores

Every retrain is cached under ``--work`` (interrupted runs resume). Writes ``removal.json`` and
``removal.md`` to ``$OUT`` when set, else ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from trust_common import add_args, setup, trajectory  # noqa: E402

TRAJ = {
    "adamw1e-4-wu8": dict(optimizer="adamw", lr=1e-4, warmup_steps=8),
    "adamw1e-4-wu8-eps1e-6": dict(optimizer="adamw", lr=1e-4, warmup_steps=8, eps=1e-6),
    "adamw1e-4-wu24": dict(optimizer="adamw", lr=1e-4, warmup_steps=24),
    "sgd3e-2-wu8": dict(optimizer="sgd", lr=3e-2, warmup_steps=8),
    "sgd1e-2": dict(optimizer="sgd", lr=1e-2, warmup_steps=0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_args(ap)
    ap.add_argument("--main", default="adamw1e-4-wu8")
    ap.add_argument("--others", default="adamw1e-4-wu8-eps1e-6,sgd3e-2-wu8")
    ap.add_argument("--ensemble", type=int, default=4, help="seeds in the ensemble (0..n-1)")
    ap.add_argument("--alphas", default="0.1,0.3,0.5")
    ap.add_argument("--subsets", type=int, default=24)
    ap.add_argument("--fractions", default="0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--units", default="doc,token")
    ap.add_argument("--heldout-seed", type=int, default=99, help="-1: skip")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument(
        "--sets", default="ensemble,frozen,grad_sim", help="score sets besides MAGIC (main only)"
    )
    args = ap.parse_args()
    from magic_unlearn.analysis.lds import lds
    from magic_unlearn.analysis.removal import removal_curves, removal_markdown
    from magic_unlearn.attribution import ScoreArtifact, attribute, grad_similarity
    from magic_unlearn.attribution.ensemble import attribute_ensemble
    from magic_unlearn.models import load_model

    S = setup(args, ("filtered",))
    work = Path(args.work)
    out_dir = Path(os.environ.get("OUT") or args.work)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_model(S.models["filtered"], dtype="float32", device=S.device)
    alphas = [float(a) for a in args.alphas.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    queries = list(S.measurements)
    summary: dict = {"trajectories": {}}
    md = ["# Scores at large changes (bench_removal.py)", ""]

    def cached(path: Path, make) -> ScoreArtifact:
        if not path.exists():
            make(path)
        return ScoreArtifact.load(path)

    for tname in [args.main, *[t for t in args.others.split(",") if t]]:
        t0 = time.time()
        cfg = trajectory(
            steps=args.steps, max_length=args.max_length, trust={"enabled": False}, **TRAJ[tname]
        )
        run = work / f"removal-{tname}"
        run.mkdir(parents=True, exist_ok=True)
        arts = {
            "magic": cached(
                run / "scores_magic",
                lambda p, cfg=cfg: attribute(
                    base, S.corpus, S.measurements, cfg, out=p, progress=False
                ),
            )
        }
        sets = set(args.sets.split(","))
        if tname == args.main:
            if args.ensemble > 1 and "ensemble" in sets:
                arts[f"ensemble{args.ensemble}"] = cached(
                    run / f"scores_ensemble{args.ensemble}",
                    lambda p, cfg=cfg: attribute_ensemble(
                        base,
                        S.corpus,
                        S.measurements,
                        cfg,
                        range(args.ensemble),
                        out=p,
                        progress=False,
                    ),
                )
            if cfg.optimizer == "adamw" and "frozen" in sets:
                fcfg = dataclasses.replace(cfg, adam_denominator="frozen")
                arts["frozen"] = cached(
                    run / "scores_frozen",
                    lambda p, fcfg=fcfg: attribute(
                        base, S.corpus, S.measurements, fcfg, out=p, progress=False
                    ),
                )
            if "grad_sim" in sets:
                arts["grad_sim"] = cached(
                    run / "scores_grad_sim",
                    lambda p, cfg=cfg: grad_similarity(base, S.corpus, S.measurements, cfg, out=p),
                )
        scores = {f"{m}:{q}": a.token_scores(q) for m, a in arts.items() for q in queries}
        smap = {n: n.split(":")[1] for n in scores}
        sums = {
            n: {"sum": float(s.sum()), "sum_abs": float(s.abs().sum())} for n, s in scores.items()
        }
        tres: dict = {"lds": {}, "removal": {}, "score_sums": sums}
        md += [f"## {tname}", ""]
        lds_rows = []
        for alpha in alphas:
            r = lds(
                base,
                S.corpus,
                S.measurements,
                cfg,
                scores,
                alpha=alpha,
                n_subsets=args.subsets,
                unit="doc",
                seed=0,
                bootstrap=1000,
                out=run / f"lds_a{alpha:g}",
                score_measurement=smap,
                progress=False,
            )
            tres["lds"][alpha] = {
                n: {k: v[k] for k in ("spearman", "ci", "pearson")} for n, v in r["results"].items()
            }
            for n, v in r["results"].items():
                pred = np.array(v["predicted"])
                act = np.array(r["actual"][v["measurement"]])[: len(pred)]
                tres["lds"][alpha][n]["median_ratio"] = float(np.median(act / pred))
                tres["lds"][alpha][n]["sign_agree"] = float(np.mean(act * pred > 0))
            lds_rows.append((alpha, r))
        md += [
            "LDS (documents, Spearman [95% CI]; median actual / predicted; sign right):",
            "",
            "| score set | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |",
            "|---|" + "---|" * len(alphas),
        ]
        for n in scores:
            cells = []
            for a in alphas:
                v = tres["lds"][a][n]
                cells.append(
                    f"{v['spearman']:.3f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]; "
                    f"{v['median_ratio']:.2g}; {100 * v['sign_agree']:.0f}%"
                )
            md.append(f"| {n} | " + " | ".join(cells) + " |")
        md.append("")
        for unit in args.units.split(","):
            r = removal_curves(
                base,
                S.corpus,
                S.measurements,
                cfg,
                scores,
                smap,
                fractions=fractions,
                unit=unit,
                out=run / f"removal_{unit}",
                progress=False,
            )
            tres["removal"][unit] = r
            md += [removal_markdown(r), ""]
        if tname == args.main and args.heldout_seed >= 0:
            hcfg = dataclasses.replace(cfg, seed=args.heldout_seed)
            own = cached(
                run / f"scores_magic_seed{args.heldout_seed}",
                lambda p, hcfg=hcfg: attribute(
                    base, S.corpus, S.measurements, hcfg, out=p, progress=False
                ),
            )
            hs = {n: s for n, s in scores.items() if not n.startswith("grad_sim")}
            hs.update({f"magic_seed{args.heldout_seed}:{q}": own.token_scores(q) for q in queries})
            hmap = {n: n.split(":")[1] for n in hs}
            tres["heldout"] = {}
            md += [
                f"LDS on the same trajectory with data-order seed {args.heldout_seed} "
                f"(not among the scored runs, except the last row's):",
                "",
                "| score set | " + " | ".join(f"alpha {a:g}" for a in alphas[:2]) + " |",
                "|---|" + "---|" * len(alphas[:2]),
            ]
            for alpha in alphas[:2]:
                r = lds(
                    base,
                    S.corpus,
                    S.measurements,
                    hcfg,
                    hs,
                    alpha=alpha,
                    n_subsets=args.subsets,
                    unit="doc",
                    seed=0,
                    bootstrap=1000,
                    out=run / f"lds_heldout{args.heldout_seed}_a{alpha:g}",
                    score_measurement=hmap,
                    progress=False,
                )
                tres["heldout"][alpha] = {
                    n: {k: v[k] for k in ("spearman", "ci")} for n, v in r["results"].items()
                }
            for n in hs:
                md.append(
                    f"| {n} | "
                    + " | ".join(
                        f"{tres['heldout'][a][n]['spearman']:.3f} "
                        f"[{tres['heldout'][a][n]['ci'][0]:.2f}, {tres['heldout'][a][n]['ci'][1]:.2f}]"
                        for a in alphas[:2]
                    )
                    + " |"
                )
            md.append("")
        md += [
            "Score sums (sum / sum of |score|): "
            + "; ".join(f"{n} {v['sum']:+.2e} / {v['sum_abs']:.2e}" for n, v in sums.items()),
            "",
        ]
        tres["wall_s"] = time.time() - t0
        summary["trajectories"][tname] = tres
        print("\n".join(md), flush=True)
        (out_dir / "removal.json").write_text(json.dumps(summary, indent=1, default=str))
        (out_dir / "removal.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out_dir / 'removal.md'}")


if __name__ == "__main__":
    main()
