"""Iterated attribution for token filtering (issue 13): does re-scoring after masking catch more?

MAGIC's scores are local: they rank tokens by their effect with every other token in place.
Once the top tokens are masked, the occurrences left may become the ones that teach a fact. So
spend the mask budget in rounds: mask the top ``frac / rounds`` of the target tokens, rerun the
attribution with those tokens' loss weight at 0 (the same smooth trajectory), mask the next
top share among the rest, and so on. Compared with one round at the same total budget, by the
share of hazard-fact / general-fact tokens caught (the world's labels; counts only). grad-sim
runs the same rounds as its twin.

Reads the world, models and round-1 scores that ``benchmarks/attribution_regimes.py --regimes
smooth --subsets 0`` left under ``--work``; writes each round's artifacts there. Usage (CPU,
tiny world; ~2 min per MAGIC round and seed with one thread)::

    PYTHONPATH=src python benchmarks/iterative_mask.py --work runs/regimes --seeds 0,1,2 \\
        --frac 0.1 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="attribution_regimes.py's --work folder")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--frac", type=float, default=0.1, help="total mask budget")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="magic,grad_sim")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mask_anatomy import hazard_scores, regime_corpus, top_mask  # benchmarks/mask_anatomy.py

    from magic_unlearn.attribution import (
        ScoreArtifact,
        TrajectoryConfig,
        attribute,
        build_measurements,
        grad_similarity,
    )
    from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD
    from magic_unlearn.models import load_model

    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        root = Path(args.work) / f"seed{seed}"
        wd = root / "world"
        tok, _, corpus, rr = regime_corpus(wd, "smooth", args.preset)
        cfg = TrajectoryConfig(**{**rr["trajectory"], "storage": "cpu"})
        lm = corpus.loss_mask > 0
        haz = (corpus.labels == LABEL_HAZARD) & lm
        gen = (corpus.labels == LABEL_GENERAL) & lm
        k_total = round(args.frac * int(lm.sum()))
        start_dir = sorted((wd / "models").glob(f"{rr['start']}-*"))[0]
        start = load_model(start_dir, dtype=cfg.dtype, device=torch.device("cpu"))
        tasks = ["hazard_qa", "general_qa"]
        meas = build_measurements(tok, tasks, world=str(wd), model=start, device="cpu")

        for method in args.methods.split(","):
            masked = torch.zeros_like(lm)
            per_round = []
            for r in range(args.rounds):
                k = round(k_total * (r + 1) / args.rounds) - int(masked.sum())
                path = (
                    root
                    / "smooth"
                    / (
                        f"scores_{method}"
                        if r == 0
                        else f"scores_{method}_iter{r}of{args.rounds}_f{args.frac:g}"
                    )
                )
                c = corpus
                if r:
                    # the masked tokens leave the attributed run: loss weight 0, as retraining does
                    keep = (~masked).to(corpus.loss_mask.dtype)
                    c = dataclasses.replace(corpus, loss_mask=corpus.loss_mask * keep)
                    if not path.exists():
                        if method == "magic":
                            attribute(start, c, meas, cfg, out=path, tokenizer=tok, progress=False)
                        else:
                            grad_similarity(start, c, meas, cfg, out=path, tokenizer=tok)
                # masked tokens have loss weight 0 in c, so top_mask never takes them again
                masked |= top_mask(hazard_scores(ScoreArtifact.load(path), c, tok), c.loss_mask, k)
                per_round.append(
                    f"{float((masked & haz).sum()) / int(haz.sum()):.2f} / "
                    f"{float((masked & gen).sum()) / int(gen.sum()):.2f}"
                )
            # one round at the whole budget, from the round-1 scores
            h0 = hazard_scores(
                ScoreArtifact.load(root / "smooth" / f"scores_{method}"), corpus, tok
            )
            one = top_mask(h0, corpus.loss_mask, k_total)
            row = {
                "seed": seed,
                "method": method,
                "one_round": f"{float((one & haz).sum()) / int(haz.sum()):.2f} / "
                f"{float((one & gen).sum()) / int(gen.sum()):.2f}",
                "rounds": per_round,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\n| seed | scores | one round at {args.frac:g}: hazard / general caught | "
        + " | ".join(f"after round {r + 1}" for r in range(args.rounds))
        + " |"
    )
    print("|---|---|---|" + "---|" * args.rounds)
    for row in rows:
        print(
            f"| {row['seed']} | {row['method']} | {row['one_round']} | "
            + " | ".join(row["rounds"])
            + " |"
        )


if __name__ == "__main__":
    main()
