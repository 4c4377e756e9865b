"""Blocklist + attribution top-up (issue 13): score the tokens the blocklist leaves *given* it.

The study's ``token_filter_scratch_blocklist`` masks the blocklist's sentences, then the top 5%
of the remaining target tokens by scores computed with every token in place. MAGIC's scores are
local: a fact taught by many occurrences spreads its effect over all of them, and the blocklist
takes 2/3 of them. Conditional scores rerun the attribution with the blocklisted tokens' loss
weight at 0 (as the retraining will have them), so the occurrences left carry the whole effect.
Compared here by what each top-up catches (the world's labels; counts only, no text), for
MAGIC and its grad-sim twin, no retraining. ``--expand-ngrams 2,3,4`` also measures growing the
study's top-up to every occurrence of the n-grams (the token and the n-1 before it) that end at
its tokens: a fact is repeated, so its other occurrences may share the flagged n-gram.
``--cooccurrence 0.7,0.6,0.5`` measures a text-only twin with no scores: the blocklist grown by
every sentence holding a word (seen >= 3 times) whose share of occurrences inside blocklisted
sentences is at least the threshold (a practitioner's blocklist expanded by co-occurrence).

Reads a study folder (``magic-unlearn study --preset tiny ... --methods
token_filter_scratch_blocklist``): per seed the world, the filtered model and the smooth
regime's score artifacts. Writes the conditional artifacts under ``--work``. Usage (CPU, tiny
world, ~2 min per seed for MAGIC with one thread)::

    PYTHONPATH=src python benchmarks/conditional_topup.py --study runs/tf_keyword_tiny \\
        --seeds 0,1,2 --frac 0.05 --work runs/conditional_topup
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import yaml


def find_artifact(study: Path, seed: int, method: str, regime: str) -> Path:
    """The newest attribute stage folder of ``method`` under ``regime`` for world seed ``seed``."""
    runs = sorted(
        (study / "runs" / "attribute").glob(f"s{seed}-{method}-{regime}-*"),
        key=lambda p: p.stat().st_mtime,
    )
    runs = [r for r in runs if (r / "attribute" / "scores").exists()]
    if not runs:
        raise FileNotFoundError(
            f"{study}/runs/attribute/s{seed}-{method}-{regime}-*: no finished attribution; run "
            "the study's token_filter_scratch_blocklist entry for this seed first"
        )
    return runs[-1]


def ngram_matches(ids: torch.Tensor, sel: torch.Tensor, n: int) -> torch.Tensor:
    """(N, L) bool: positions whose n-gram (the token and the n-1 before it, -1 past a row's
    start) is one of those ending at a ``sel`` position."""
    g = torch.full((*ids.shape, n), -1, dtype=torch.long)  # (N, L, n)
    for j in range(n):
        g[:, j:, n - 1 - j] = ids[:, : ids.shape[1] - j]
    keys = {tuple(x) for x in g[sel].tolist()}
    flat = [tuple(x) in keys for x in g.reshape(-1, n).tolist()]
    return torch.tensor(flat, dtype=torch.bool).reshape(ids.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", required=True, help="a study's --out folder")
    ap.add_argument("--work", required=True, help="where the conditional artifacts go")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--regime", default="smooth")
    ap.add_argument("--frac", type=float, default=0.05, help="top-up, share of target tokens")
    ap.add_argument("--methods", default="magic,grad_sim")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--expand-ngrams", default="", help="e.g. 2,3,4: n-gram expansion of the top-up"
    )
    ap.add_argument("--cooccurrence", default="", help="e.g. 0.7,0.6,0.5: blocklist expansion")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mask_anatomy import (
        hazard_scores,
        regime_corpus,
        sentence_ids,
        top_mask,
    )  # benchmarks/mask_anatomy.py

    from magic_unlearn.attribution import (
        ScoreArtifact,
        TrajectoryConfig,
        attribute,
        build_measurements,
        grad_similarity,
    )
    from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD
    from magic_unlearn.models import load_model
    from magic_unlearn.unlearn.masks import MaskConfig, corpus_mask
    from magic_unlearn.unlearn.weights import sentence_pattern
    from magic_unlearn.world import World

    study, work = Path(args.study), Path(args.work)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        first_run = find_artifact(study, seed, "magic", args.regime)
        conf = yaml.safe_load((first_run / "config.yaml").read_text())
        wd, model_dir = Path(conf["world"]), Path(conf["model"])
        tok, docs, corpus, _ = regime_corpus(wd, args.regime, args.preset)
        cfg = TrajectoryConfig(**{**conf["params"]["attribute"]["trajectory"], "storage": "cpu"})
        lm = corpus.loss_mask > 0
        haz = (corpus.labels == LABEL_HAZARD) & lm
        gen = (corpus.labels == LABEL_GENERAL) & lm
        k = round(args.frac * int(lm.sum()))
        # the blocklist's sentences, exactly as MaskConfig.blocklist="world" masks them
        kws = World.load(wd).hazard_keywords()
        kw_keep, _ = corpus_mask(
            MaskConfig(source="keyword", keywords=[sentence_pattern(kws)]), docs, corpus, tok
        )
        blocked = (kw_keep == 0) & lm
        keep = (~blocked).to(corpus.loss_mask.dtype)
        cond = dataclasses.replace(corpus, loss_mask=corpus.loss_mask * keep)
        start = load_model(model_dir, dtype=cfg.dtype, device=torch.device("cpu"))
        meas = build_measurements(
            tok, conf["params"]["attribute"]["queries"], world=str(wd), model=start, device="cpu"
        )

        def caught(sel: torch.Tensor, haz=haz, gen=gen) -> tuple[float, float]:
            """Shares of the hazard-fact and general-fact tokens in ``sel``."""
            return (
                float((sel & haz).sum()) / int(haz.sum()),
                float((sel & gen).sum()) / int(gen.sum()),
            )

        # where the misses are: facts hazard_qa asks (evaluated) or not (transfer), in forget
        # rows or pretraining rows
        facts = [json.loads(line) for line in (wd / "facts.jsonl").open()]
        asked = torch.tensor([f["fact_id"] for f in facts if f["evaluated"]])
        ev = torch.isin(corpus.fact_ids, asked) & haz
        fgt = torch.tensor([d.startswith("forget-") for d in corpus.doc_ids])[:, None]
        parts = {
            "evaluated, forget rows": ev & fgt,
            "evaluated, pretraining rows": ev & ~fgt,
            "transfer": haz & ~ev,
        }

        def split(sel: torch.Tensor, parts=parts) -> dict[str, float]:
            """Share of each part's hazard-fact tokens in ``sel``."""
            return {n: float((sel & m).sum()) / max(1, int(m.sum())) for n, m in parts.items()}

        row = {"seed": seed, "blocklist": caught(blocked), "top_up": {}, "split": {}}
        row["split"]["blocklist"] = split(blocked)
        if args.cooccurrence:
            row["cooccurrence"] = {}
            sid = sentence_ids(docs, corpus, tok)  # (N, L), -1 outside the text
            ids, valid = corpus.input_ids, sid >= 0
            vocab = int(ids.max()) + 1
            c_in = torch.bincount(ids[blocked & valid], minlength=vocab).double()
            c_all = torch.bincount(ids[valid], minlength=vocab).double()
            for thr in (float(x) for x in args.cooccurrence.split(",")):
                words = (c_in / c_all.clamp(min=1) >= thr) & (c_all >= 3)
                sents = torch.unique(sid[words[ids] & valid])
                grown = blocked | (torch.isin(sid, sents) & lm)
                row["cooccurrence"][f"{thr:g}"] = {
                    "words": int(words.sum()),
                    "caught": caught(grown),
                }
        for method in args.methods.split(","):
            uncond = ScoreArtifact.load(
                find_artifact(study, seed, method, args.regime) / "attribute" / "scores"
            )
            # the study's top-up: unconditional scores, blocked tokens never taken
            sel_u = top_mask(hazard_scores(uncond, corpus, tok), cond.loss_mask, k)
            path = work / f"seed{seed}" / f"scores_{method}_given_blocklist"
            if not path.exists():
                if method == "magic":
                    attribute(start, cond, meas, cfg, out=path, tokenizer=tok, progress=False)
                else:
                    grad_similarity(start, cond, meas, cfg, out=path, tokenizer=tok)
            art_c = ScoreArtifact.load(path)
            sel_c = top_mask(hazard_scores(art_c, cond, tok), cond.loss_mask, k)
            row["top_up"][method] = {
                "unconditional": caught(blocked | sel_u),
                "conditional": caught(blocked | sel_c),
                "trust": (art_c.meta.get("trust") or {}).get("verdict"),
            }
            row["split"][f"+ {method}"] = split(blocked | sel_u)
            row["split"][f"+ {method} given the blocklist"] = split(blocked | sel_c)
            for n in (int(x) for x in args.expand_ngrams.split(",") if x):
                grown = ngram_matches(corpus.input_ids, sel_u, n) & lm
                row["top_up"][method][f"unconditional+{n}gram"] = caught(blocked | sel_u | grown)
        rows.append(row)
        print(json.dumps(row), flush=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "conditional_topup.json").write_text(json.dumps(rows, indent=1))
    print(
        f"\nHazard-fact / general-fact tokens masked: the blocklist, then {args.frac:g} of the "
        "target tokens more\n"
    )
    methods = args.methods.split(",")
    print(
        "| seed | blocklist alone | "
        + " | ".join(f"+ {m} (all in place) | + {m} (given the blocklist)" for m in methods)
        + " |"
    )
    print("|---|---|" + "---|---|" * len(methods))
    for r in rows:

        def f(x: tuple[float, float]) -> str:
            return f"{x[0]:.3f} / {x[1]:.3f}"

        print(
            f"| {r['seed']} | {f(r['blocklist'])} | "
            + " | ".join(
                f"{f(r['top_up'][m]['unconditional'])} | {f(r['top_up'][m]['conditional'])}"
                for m in methods
            )
            + " |"
        )
    if args.cooccurrence:
        print(
            "\nThe blocklist grown by co-occurrence (no scores): words, hazard / general caught\n"
        )
        thrs = list(rows[0]["cooccurrence"])
        print("| seed | " + " | ".join(f"share >= {t}" for t in thrs) + " |")
        print("|---|" + "---|" * len(thrs))
        for r in rows:
            cells = [
                f"{c['words']}: {c['caught'][0]:.3f} / {c['caught'][1]:.3f}"
                for c in r["cooccurrence"].values()
            ]
            print(f"| {r['seed']} | " + " | ".join(cells) + " |")
    print("\nShare of the hazard-fact tokens masked, by where they are\n")
    names = list(rows[0]["split"]["blocklist"])
    print("| seed | mask | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r in rows:
        for mask, sh in r["split"].items():
            print(f"| {r['seed']} | {mask} | " + " | ".join(f"{sh[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
