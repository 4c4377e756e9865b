"""LDS and ground-truth AUC of MAGIC vs baselines on the hazard world (CPU for the tiny preset).

Pipeline: world (``build_world``) -> base model (``pretrain``) -> a fine-tuning trajectory on the
``forget`` corpus -> scores for ``hazard_qa`` and ``general_qa`` by MAGIC, gradient similarity
(TracIn at the final checkpoint) and random -> LDS (retraining on random document subsets) and
hazard-fact token AUC. Every stage is cached under ``--work``; the LDS retrains resume.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_lds.py --work runs/bench_lds --preset tiny

Targets (issue 4): MAGIC LDS >= 0.9 and clearly above grad_sim; hazard-fact AUC >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/bench_lds", help="cache folder for every stage")
    ap.add_argument("--preset", default="tiny", help="world / pretrain preset")
    ap.add_argument("--variant", default="base", help="starting model: base | filtered")
    ap.add_argument("--model", default=None, help="use this model folder instead of pretraining")
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=0, help="linear warmup steps (smooths AdamW)")
    ap.add_argument("--eps", type=float, default=1e-8, help="AdamW eps")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--subsets", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--unit", default="doc")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from magic_unlearn.analysis import analyze, ground_truth, ground_truth_markdown, lds
    from magic_unlearn.analysis.lds import lds_markdown
    from magic_unlearn.attribution import (
        ScoreArtifact,
        TrajectoryConfig,
        attribute,
        grad_similarity,
        random_scores,
    )
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.evaluation.measure import Measurement
    from magic_unlearn.evaluation.tasks import load_task
    from magic_unlearn.io import atomic_write_json, atomic_write_text
    from magic_unlearn.models import load_model
    from magic_unlearn.pretrain import pretrain
    from magic_unlearn.world import World, build_world

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.time()
    world_dir = work / "world"
    if not (world_dir / "world.json").exists():
        build_world(args.preset, world_dir)
    timings["world_s"] = time.time() - t0
    t0 = time.time()
    model_dir = args.model or pretrain(world_dir, args.variant, cfg=args.preset, progress=True)
    timings["pretrain_s"] = time.time() - t0

    world = World.load(world_dir)
    tok = world.tokenizer
    dev = torch.device(args.device)
    base = load_model(model_dir, dtype=args.dtype, device=dev)
    corpus = tokenize_corpus(load_corpus(f"{world_dir}:forget"), tok, max_length=args.max_length)
    meas = {
        q: Measurement.from_task(tok, load_task(q, world=world_dir), name=q).to(dev)
        for q in ("hazard_qa", "general_qa")
    }
    cfg = TrajectoryConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        checkpointing="sqrt",
        storage="cpu",
        seed=0,
        schedule="warmup" if args.warmup else "constant",
        warmup_steps=args.warmup,
        eps=args.eps,
    )
    tag = (
        f"{args.variant}-{args.optimizer}-lr{args.lr:g}-T{args.steps}-B{args.batch_size}"
        f"-L{args.max_length}-{args.dtype}"
        + (f"-wu{args.warmup}" if args.warmup else "")
        + (f"-eps{args.eps:g}" if args.eps != 1e-8 else "")
    )
    run = work / tag
    arts = {}
    for method in ("magic", "grad_sim", "random"):
        p = run / f"scores_{method}"
        t0 = time.time()
        if not p.exists():
            if method == "magic":
                attribute(base, corpus, meas, cfg, out=p, tokenizer=tok, progress=True)
            elif method == "grad_sim":
                grad_similarity(base, corpus, meas, cfg, out=p, tokenizer=tok)
            else:
                random_scores(corpus, list(meas), seed=0, out=p, tokenizer=tok)
            timings[f"{method}_s"] = time.time() - t0
        arts[method] = ScoreArtifact.load(p)

    gt = ground_truth(list(arts.values()))
    out_an = run / "analysis"
    if not out_an.exists():
        analyze(
            [arts["magic"], arts["grad_sim"], arts["random"]], out_an, tokenizer=tok, is_world=True
        )
    scores = {f"{m}:{q}": a.token_scores(q) for m, a in arts.items() for q in meas}
    t0 = time.time()
    res = lds(
        base,
        corpus,
        meas,
        cfg,
        scores,
        alpha=args.alpha,
        n_subsets=args.subsets,
        unit=args.unit,
        seed=0,
        bootstrap=1000,
        out=run / f"lds_{args.unit}_a{args.alpha:g}",
    )
    timings["lds_s"] = time.time() - t0

    summary = {
        "preset": args.preset,
        "variant": args.variant,
        "model": str(model_dir),
        "trajectory": tag,
        "n_docs": len(corpus),
        "n_tokens": int(corpus.loss_mask.sum()),
        "eval_losses": arts["magic"].meta.get("eval_losses"),
        "lds": {
            k: {"spearman": v["spearman"], "ci": v["ci"], "pearson": v["pearson"]}
            for k, v in res["results"].items()
        },
        "base_losses": res["base_losses"],
        "actual_change_std": {k: float(torch.tensor(v).std()) for k, v in res["actual"].items()},
        "auc": {
            k: {
                "auc_hazard_vs_rest": v["auc_hazard_vs_rest"],
                "auc_hazard_vs_general": v["auc_hazard_vs_general"],
                "p@R_hazard": v["p@R_hazard"],
            }
            for k, v in gt["per_score_set"].items()
        },
        "combination": gt["combination"],
        "timings": timings,
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }
    md = (
        f"# bench_lds: {args.preset} world, {tag}\n\n{lds_markdown(res)}\n"
        f"{ground_truth_markdown(gt)}\n"
    )
    stem = f"bench_lds_{args.unit}_a{args.alpha:g}"
    summary["unit"], summary["alpha"] = args.unit, args.alpha
    atomic_write_json(run / f"{stem}.json", summary)
    atomic_write_text(run / f"{stem}.md", md)
    print(md)
    print(json.dumps({"timings": timings, "eval_losses": summary["eval_losses"]}, indent=1))


if __name__ == "__main__":
    main()
