"""MAGIC scores averaged over trajectories that differ only in their seed (data order, LoRA init).

A single run's scores are exact derivatives of *that* run: which batch a token lands in, and
next to which others, shapes its score, and so does the run's noise at O(1) weight changes.
Averaging over seeds estimates the derivative of the seed-averaged eval loss, E_seed f(w), which
is the quantity an unlearning method that retrains on its own data order can hope to move
(Ilyas & Engstrom 2025, "MAGIC", average over training randomness; Park et al. 2023, "TRAK",
ensembles). docs/benchmarks.md ("Issue 14") measures whether it helps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.magic import attribute
from magic_unlearn.attribution.measurements import MeasureFn
from magic_unlearn.attribution.trust import worst
from magic_unlearn.data import TokenizedCorpus

logger = logging.getLogger(__name__)


def attribute_ensemble(
    model: nn.Module,
    corpus: TokenizedCorpus,
    measurements: dict[str, MeasureFn],
    cfg: TrajectoryConfig,
    seeds: Sequence[int],
    per: str = "token",
    out: str | Path | None = None,
    overwrite: bool = False,
    **kw: Any,
) -> ScoreArtifact:
    """The mean of :func:`attribute` over ``cfg`` with each seed of ``seeds``.

    Args:
        model, corpus, measurements, per: as for :func:`attribute` (``model`` is copied).
        cfg: the trajectory; its ``seed`` is replaced by each of ``seeds``.
        seeds: at least one seed.
        out: artifact folder of the averaged scores.
        overwrite: replace an existing ``out``.
        **kw: passed to :func:`attribute` (``tokenizer``, ``progress``, ...).

    Returns:
        The averaged scores; ``meta["ensemble"]`` lists the members (seed, eval losses, trust
        verdict), ``meta["trust"]`` is the first member's report with the worst verdict of
        all members.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("attribute_ensemble needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"attribute_ensemble: seeds {seeds} repeat")
    out_p = Path(out) if out is not None else None
    if out_p is not None and out_p.exists() and not overwrite:
        raise FileExistsError(f"{out_p} already exists; pass overwrite=True")
    arts = []
    for s in seeds:
        logger.info("ensemble member seed %d (%d of %d)", s, len(arts) + 1, len(seeds))
        arts.append(
            attribute(model, corpus, measurements, dataclasses.replace(cfg, seed=s), per=per, **kw)
        )
    first = arts[0]
    mean = {q: torch.stack([a.scores[q] for a in arts]).mean(0) for q in first.queries}
    members = [
        {
            "seed": s,
            "eval_losses": a.meta.get("eval_losses"),
            "trust_verdict": (a.meta.get("trust") or {}).get("verdict"),
        }
        for s, a in zip(seeds, arts, strict=True)
    ]
    meta = {k: v for k, v in first.meta.items() if not k.startswith("_")}
    trust = dict(meta.get("trust") or {})
    verdicts = [
        m["trust_verdict"]
        for m in members
        if m["trust_verdict"] in ("reliable", "doubtful", "unreliable")
    ]
    if trust and verdicts:
        trust["verdict"] = worst(verdicts)
        trust["summary"] = (
            f"ensemble of {len(seeds)} seeds, member verdicts {[m['trust_verdict'] for m in members]}; "
            f"first member: {trust.get('summary', '')}"
        )
    meta.update(
        trust=trust,
        ensemble={
            "seeds": seeds,
            "members": members,
            "scores": "mean over the members of their exact per-run scores",
        },
    )
    art = ScoreArtifact.from_corpus(
        first.corpus, mean, method="magic", per=per, meta=meta, tokenizer=kw.get("tokenizer")
    )
    if out_p is not None:
        art.save(out_p, overwrite=overwrite)
    return art


__all__ = ["attribute_ensemble"]
