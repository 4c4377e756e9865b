"""What a token-filtering mask catches, fact by fact (issue 13): why MAGIC's mask stops at ~45%.

Reads the score artifacts that ``benchmarks/attribution_regimes.py --regimes smooth --subsets 0``
left under ``--work`` (one folder per world seed) and prints, for the top ``--frac`` of the
corpus's target tokens by hazard-teaching priority (``-score``, as ``unlearn.masks``):

- the share of hazard-fact tokens caught, split by evaluated facts (hazard_qa asks them) and
  transfer facts (it does not), by forget vs pretraining rows, and by position in the value
  span (first / second token of a fact's value);
- per evaluated fact, the share of its pretraining-row tokens caught (quantiles, and how many
  facts are >= 90% covered: a fact stays learnable from the occurrences a mask leaves);
- by training step: the share caught among tokens trained in each third of the run, and a
  mask from priorities standardised within each step (z-scores): does the step a token was
  trained at, rather than what it teaches, decide its rank?
- sentence pooling: the same budget spent on whole sentences ranked by their mean priority
  (sentences split at ``.``, ``!``, ``?`` and newlines), against the per-token mask.

Ground truth comes from the world's labels; only ids, counts and shares are printed. Usage::

    PYTHONPATH=src python benchmarks/mask_anatomy.py --work runs/regimes --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")


def sentence_ids(docs: list[dict], corpus, tok) -> torch.Tensor:
    """(N, L) sentence index of each token (-1 outside any document text)."""
    n, length = corpus.input_ids.shape
    sid = torch.full((n, length), -1, dtype=torch.long)
    nxt = 0
    bos = tok.bos_token_id
    for i, d in enumerate(docs):
        spans = [m.span() for m in SENTENCE.finditer(d["text"])]
        enc = tok(d["text"], add_special_tokens=False, return_offsets_mapping=True)
        off = 1 if bos is not None and int(corpus.input_ids[i, 0]) == bos else 0
        si = 0
        for j, (a, _) in enumerate(enc["offset_mapping"]):
            if off + j >= length:
                break
            while si < len(spans) - 1 and a >= spans[si][1]:
                si += 1
            sid[i, off + j] = nxt + si
        nxt += len(spans)
    return sid


def regime_corpus(world_dir: Path, regime: str, preset: str) -> tuple:
    """``(tokenizer, docs, corpus, regime)``: the rows a regime's run trained on and scored."""
    from magic_unlearn.attribution.regimes import resolve_regime
    from magic_unlearn.data import load_corpus, tokenize_corpus
    from magic_unlearn.world import World

    tok = World.load(world_dir).tokenizer
    rr = resolve_regime(regime, preset)
    docs = load_corpus(f"{world_dir}:forget")
    for m in rr["mix"]:
        docs += load_corpus(f"{world_dir}:{m}")
    return tok, docs, tokenize_corpus(docs, tok, max_length=rr["trajectory"]["max_length"]), rr


def hazard_scores(art, corpus, tok) -> torch.Tensor:
    """(N, L) hazard-query scores of a score artifact on ``corpus``'s rows (documents aligned)."""
    from magic_unlearn.unlearn.weights import load_score_pair

    if list(art.meta.get("doc_ids") or []) != corpus.doc_ids:
        art = art.select_docs(corpus.doc_ids)
    h, _, _ = load_score_pair([art], corpus, tok, None, None, need_general=False)
    return h


def top_mask(scores: torch.Tensor, loss_mask: torch.Tensor, k: int) -> torch.Tensor:
    """The study's mask (``unlearn.masks``, ``source: scores``): the k target tokens that teach
    the hazard query most (``-score``; tokens with ``loss_mask`` 0 are never taken)."""
    from magic_unlearn.unlearn.weights import WeightConfig, transform_scores

    cfg = WeightConfig(select="hazard_proponent", top_k=k)  # as MaskConfig's defaults
    w, _ = transform_scores(scores, loss_mask, None, cfg)
    return (w != 0) & (loss_mask > 0)


def sentence_mask(prio: torch.Tensor, lm: torch.Tensor, sid: torch.Tensor, k: int) -> torch.Tensor:
    """Whole sentences by mean priority of their target tokens, until k tokens are masked."""
    ok = lm & (sid >= 0)
    ns = int(sid.max()) + 1
    tot = torch.zeros(ns, dtype=torch.float64).index_add_(0, sid[ok], prio[ok])
    cnt = torch.zeros(ns, dtype=torch.float64).index_add_(0, sid[ok], torch.ones_like(prio[ok]))
    mean = torch.where(cnt > 0, tot / cnt.clamp(min=1), torch.full_like(tot, -torch.inf))
    order = torch.argsort(mean, descending=True, stable=True)
    sel = torch.zeros(ns, dtype=torch.bool)
    sel[order[torch.cumsum(cnt[order], 0) <= k]] = True
    return sel[sid.clamp(min=0)] & ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="attribution_regimes.py's --work folder")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--preset", default="tiny", help="the world preset the folders were built with")
    ap.add_argument("--regime", default="smooth", help="regime folder name under each seed")
    ap.add_argument("--frac", type=float, default=0.1, help="mask budget (share of targets)")
    ap.add_argument("--methods", default="magic,grad_sim,random")
    args = ap.parse_args()

    from magic_unlearn.attribution.artifact import ScoreArtifact
    from magic_unlearn.attribution.config import TrajectoryConfig
    from magic_unlearn.attribution.trajectory import batch_order
    from magic_unlearn.config import from_dict
    from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD

    def share(sel: torch.Tensor, of: torch.Tensor) -> str:
        return f"{float((sel & of).sum()) / max(1, int(of.sum())):.2f}"

    print(
        "| seed | scores | hazard-fact tokens caught | evaluated / transfer facts | forget / "
        "pretraining rows | value token 1 / 2 | per evaluated fact, pretraining rows: "
        "quartiles (facts >= 90%) | general-fact tokens | by step third | per-step z: hazard / "
        "general | sentence-pooled: hazard / general |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        root = Path(args.work) / f"seed{seed}"
        wd = root / "world"
        facts = [json.loads(line) for line in (wd / "facts.jsonl").open()]
        tok, docs, corpus, _ = regime_corpus(wd, args.regime.split("-")[0], args.preset)
        lm = corpus.loss_mask > 0
        haz = (corpus.labels == LABEL_HAZARD) & lm
        gen = (corpus.labels == LABEL_GENERAL) & lm
        fid = corpus.fact_ids
        evaluated = [f["fact_id"] for f in facts if f["evaluated"]]
        ev = torch.isin(fid, torch.tensor(evaluated)) & haz
        forget = torch.tensor([d.startswith("forget-") for d in corpus.doc_ids])[:, None]
        forget = forget.expand_as(haz)
        first = haz.clone()
        first[:, 1:] &= ~((fid[:, 1:] == fid[:, :-1]) & haz[:, :-1])
        second = haz & ~first
        sid = sentence_ids(docs, corpus, tok)
        k = round(args.frac * int(lm.sum()))
        # the step each row was trained at, from the MAGIC run's own trajectory
        tmeta = ScoreArtifact.load(root / args.regime / "scores_magic").meta["trajectory"]
        fields = TrajectoryConfig.__dataclass_fields__
        tcfg = from_dict(TrajectoryConfig, {a: b for a, b in tmeta.items() if a in fields})
        order = batch_order(len(corpus), tcfg)  # (T, B)
        n_steps = order.shape[0]
        row_step = torch.full((len(corpus),), -1, dtype=torch.long)
        for t in range(n_steps):
            row_step[order[t]] = t
        st = row_step[:, None].expand_as(lm)
        thirds = [(i * n_steps // 3, (i + 1) * n_steps // 3) for i in range(3)]
        for m in args.methods.split(","):
            h = hazard_scores(ScoreArtifact.load(root / args.regime / f"scores_{m}"), corpus, tok)
            prio = -h.double()
            drop = top_mask(h, corpus.loss_mask, k)
            cov = []
            for f in evaluated:
                sel = (fid == f) & haz & ~forget
                if sel.any():
                    cov.append(float((drop & sel).sum()) / int(sel.sum()))
            c = torch.tensor(cov, dtype=torch.float64)
            q = [f"{float(x):.2f}" for x in c.quantile(torch.tensor([0.25, 0.5, 0.75]).double())]
            pooled = sentence_mask(prio, lm, sid, k)
            by_third = " / ".join(share(drop, haz & (st >= a) & (st < b)) for a, b in thirds)
            z = torch.zeros_like(prio)
            for t in range(n_steps):
                s_t = lm & (st == t)
                if s_t.any():
                    x = prio[s_t]
                    z[s_t] = (x - x.mean()) / x.std().clamp(min=1e-30)
            zmask = top_mask(-z, corpus.loss_mask, k)
            print(
                f"| {seed} | {m} | {share(drop, haz)} | {share(drop, ev)} / "
                f"{share(drop, haz & ~ev)} | {share(drop, haz & forget)} / "
                f"{share(drop, haz & ~forget)} | {share(drop, first)} / {share(drop, second)} | "
                f"{' / '.join(q)} ({int((c >= 0.9).sum())} of {len(c)}) | {share(drop, gen)} | "
                f"{by_third} | {share(zmask, haz)} / {share(zmask, gen)} | "
                f"{share(pooled, haz)} / {share(pooled, gen)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
