"""Attribution regimes compared: LDS, token / document AUC and the four questions (issue 13).

For each regime (``magic_unlearn.attribution.regimes``: ``seed`` = fine-tune the base model on
the forget corpus, ``filtered`` = fine-tune the filtered model on it, ``acquire`` = the filtered
model learning the facts from forget + pretraining data), on one world seed:

- hazard_qa / general_qa accuracy before and after the differentiated run (does it learn?);
- MAGIC, gradient-similarity (TracIn, last checkpoint) and random scores for hazard_qa and
  general_qa over every trained row;
- LDS (Spearman over ``--subsets`` retrains each dropping 10% of the trained documents);
- ground truth: hazard-fact token AUC on the forget rows and on every row, document AUC
  (hazard documents vs the rest; only defined when the run trains on both kinds);
- the four questions of the brief on the forget rows (``analysis.analyze``).

Every stage is cached under ``--work`` (world, models, score artifacts, LDS retrains), so an
interrupted run resumes. Usage (CPU, tiny world; ~40 min for acquire on a quiet 2-core box)::

    PYTHONPATH=src python benchmarks/attribution_regimes.py --work runs/regimes \\
        --world-seed 0 --regimes seed,filtered,acquire

Mask quality only (no LDS retrains), the smooth regime with AdamW eps 1e-6: what share of the
hazard-fact / general-fact tokens each score set's top 10% / 20% token-filtering mask catches::

    PYTHONPATH=src python benchmarks/attribution_regimes.py --work runs/regimes --world-seed 0 \
        --regimes smooth --subsets 0 --mask-fracs 0.1,0.2 --traj eps=1e-6

GPU (small world; one H200)::

    python benchmarks/attribution_regimes.py --work $OUT/regimes --preset small --device cuda \\
        --regimes filtered,acquire --subsets 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/regimes")
    ap.add_argument("--preset", default="tiny", help="world / pretrain / regime preset")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--world", default=None, help="an existing world folder (skips the build)")
    ap.add_argument("--base", default=None, help="an existing base model folder")
    ap.add_argument("--filtered", default=None, help="an existing filtered model folder")
    ap.add_argument("--regimes", default="seed,filtered,acquire")
    ap.add_argument("--subsets", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--traj",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a trajectory field of every regime, e.g. --traj eps=1e-6 (the run "
        "folder and the summary key get the suffix)",
    )
    ap.add_argument(
        "--mask-fracs",
        default="",
        help="e.g. 0.1,0.2: the token-filtering masks of each score set at these fractions "
        "(unlearn.masks.corpus_mask): share of hazard-fact / general-fact tokens masked",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from magic_unlearn.analysis import analyze, ground_truth, lds
    from magic_unlearn.attribution import (
        ScoreArtifact,
        TrajectoryConfig,
        attribute,
        build_measurements,
        grad_similarity,
        random_scores,
        train_trajectory,
    )
    from magic_unlearn.attribution.regimes import resolve_regime
    from magic_unlearn.config import apply_overrides, from_dict
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.evaluation import evaluate, load_task
    from magic_unlearn.io import atomic_write_json
    from magic_unlearn.models import load_model
    from magic_unlearn.pretrain import pretrain
    from magic_unlearn.unlearn.masks import MaskConfig, corpus_mask
    from magic_unlearn.world import World, build_world

    work = Path(args.work) / f"seed{args.world_seed}"
    work.mkdir(parents=True, exist_ok=True)
    world_dir = Path(args.world) if args.world else work / "world"
    if not (world_dir / "world.json").exists():
        build_world(args.preset, world_dir, overrides={"seed": args.world_seed})
    models = {}
    for v in ("base", "filtered"):
        given = getattr(args, v)
        if given:
            models[v] = Path(given)
            continue
        from magic_unlearn.pipeline.stages import pretrain_config_from_section

        pcfg = pretrain_config_from_section(
            {"preset": args.preset, "config": {"seed": args.world_seed, "threads": args.threads}},
            args.device,
            "bench",
        )
        models[v] = pretrain(world_dir, v, pcfg, progress=False)
    world = World.load(world_dir)
    tok = world.tokenizer
    dev = torch.device(args.device)
    tasks = {q: load_task(q, world=world_dir) for q in ("hazard_qa", "general_qa")}

    def accs(model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            return {q: evaluate(model, tok, t, fmt="cloze").acc for q, t in tasks.items()}

    # KEY=VALUE as the CLI's --set parses it, typed by the config (YAML reads 1e-6 as a string)
    over = apply_overrides({}, args.traj)
    typed = from_dict(TrajectoryConfig, over, source="--traj")
    over = {k: getattr(typed, k) for k in over}
    suffix = "".join(f"-{k}{v}" for k, v in over.items())
    out_json = work / f"summary{suffix}.json"
    summary: dict = {"world_seed": args.world_seed, "preset": args.preset, "regimes": {}}
    if out_json.exists():
        summary = json.loads(out_json.read_text())
    for regime in args.regimes.split(","):
        rr = resolve_regime(regime, args.preset)
        rr["trajectory"].update(over)
        cfg = TrajectoryConfig(**{**rr["trajectory"], "storage": "cpu"})
        run = work / f"{regime}{suffix}"
        run.mkdir(exist_ok=True)
        docs = load_corpus(f"{world_dir}:forget")
        for m in rr["mix"]:
            docs += load_corpus(f"{world_dir}:{m}")
        corpus = tokenize_corpus(docs, tok, max_length=cfg.max_length)
        forget_ids = [d for d in corpus.doc_ids if d.startswith("forget-")]
        start = load_model(models[rr["start"]], dtype=cfg.dtype, device=dev)
        meas = build_measurements(tok, list(tasks), world=str(world_dir), model=start, device=dev)
        timings = {}
        arts = {}
        for method in ("magic", "grad_sim", "random"):
            p = run / f"scores_{method}"
            t0 = time.time()
            if not p.exists():
                if method == "magic":
                    attribute(start, corpus, meas, cfg, out=p, tokenizer=tok, progress=False)
                elif method == "grad_sim":
                    grad_similarity(start, corpus, meas, cfg, out=p, tokenizer=tok)
                else:
                    random_scores(corpus, list(meas), seed=0, out=p, tokenizer=tok)
                timings[f"{method}_s"] = time.time() - t0
            arts[method] = ScoreArtifact.load(p)
        acc_path = run / "accuracy.json"
        if not acc_path.exists():
            trained = train_trajectory(start, corpus, cfg)
            atomic_write_json(acc_path, {"before": accs(start), "after": accs(trained)})
            del trained
        acc = json.loads(acc_path.read_text())
        masks = {}
        for frac in (float(x) for x in args.mask_fracs.split(",") if x):
            for m in arts:
                _, info = corpus_mask(
                    MaskConfig(source="scores", frac=frac),
                    docs,
                    corpus,
                    tok,
                    str(run / f"scores_{m}"),
                )
                masks[f"{m}@{frac:g}"] = {
                    k: info.get(k) for k in ("hazard_fact_masked_frac", "general_fact_masked_frac")
                }
            print(f"[{regime}{suffix}] masks: {masks}", flush=True)
        gt_all = ground_truth(list(arts.values()))["per_score_set"]
        if args.subsets == 0:
            summary["regimes"][regime + suffix] = {
                "trajectory": rr["trajectory"],
                "accuracy": acc,
                "masks": masks,
                "token_auc_all": {
                    k: v["auc_hazard_vs_rest"] for k, v in gt_all.items() if "hazard" in k
                },
                "trust": arts["magic"].meta.get("trust", {}).get("verdict"),
                "timings": timings,
            }
            atomic_write_json(out_json, summary)
            continue
        t0 = time.time()
        res = lds(
            start,
            corpus,
            meas,
            cfg,
            {f"{m}:{q}": a.token_scores(q) for m, a in arts.items() for q in meas},
            alpha=args.alpha,
            n_subsets=args.subsets,
            seed=0,
            out=run / "lds",
            progress=False,
        )
        timings["lds_s"] = time.time() - t0
        forget_arts = [a.select_docs(forget_ids) for a in arts.values()]
        gt_forget = ground_truth(forget_arts)["per_score_set"]
        an_dir = run / "analysis_forget"
        if not an_dir.exists():
            analyze(forget_arts, an_dir, tokenizer=tok, is_world=True)
        an = json.loads((an_dir / "metrics.json").read_text())
        q2 = an["q2_quadrants"]
        summary["regimes"][regime + suffix] = {
            "masks": masks,
            "start": rr["start"],
            "mix": rr["mix"],
            "trajectory": {k: rr["trajectory"][k] for k in ("lr", "steps", "batch_size")},
            "rows": len(corpus),
            "accuracy": acc,
            "eval_losses": arts["magic"].meta.get("eval_losses"),
            "lds": {
                k: {"spearman": v["spearman"], "ci": v["ci"]} for k, v in res["results"].items()
            },
            "token_auc_forget": {
                k: v["auc_hazard_vs_rest"] for k, v in gt_forget.items() if "hazard" in k
            },
            "token_auc_all": {
                k: v["auc_hazard_vs_rest"] for k, v in gt_all.items() if "hazard" in k
            },
            "doc_auc_all": {
                k: v["auc_hazard_doc_vs_rest"] for k, v in gt_all.items() if "hazard" in k
            },
            "four_questions_magic_forget": {
                "q1_correlation": an["q1_correlation"],
                "q2_quadrants_t0": q2["t0"],
                "q2_quadrants_noise": q2["noise"],
                "q3_frac_examples_teach_hazard_not_general": an["q3_examples"][
                    "frac_teach_hazard_not_general"
                ],
                "q3_n_pure_mass_ge_0.9": an["q3_examples"]["n_pure_mass_ge_0.9_noise"],
                "q4_magnitude_ratio": an["q4_magnitude_ratio"],
            },
            "timings": timings,
        }
        atomic_write_json(out_json, summary)
        s = summary["regimes"][regime + suffix]
        print(
            f"[{regime}] acc {acc['before']} -> {acc['after']}; LDS hazard "
            f"magic {s['lds']['magic:hazard_qa']['spearman']:.3f} grad_sim "
            f"{s['lds']['grad_sim:hazard_qa']['spearman']:.3f} random "
            f"{s['lds']['random:hazard_qa']['spearman']:.3f}; token AUC (forget) "
            f"{s['token_auc_forget']}; doc AUC {s['doc_auc_all']}",
            flush=True,
        )
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
