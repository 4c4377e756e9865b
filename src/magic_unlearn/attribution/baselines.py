"""Baseline attributions written in the same artifact format as MAGIC.

- ``grad_similarity``: TracIn at the final checkpoint (Pruthi et al. 2020, "Estimating Training
  Data Influence by Tracing Gradient Descent"): s_i = -lr * grad l_i(theta_T) . grad f(theta_T),
  i.e. the first-order change of f from one extra SGD step on token i. Same sign convention as
  MAGIC (positive = detractor).
- ``random_scores``: i.i.d. standard normal scores on the target tokens.
- ``keyword_scores``: a keyword blocklist (no model, no ground truth): -1 on the target tokens a
  keyword match covers for the first (hazard) query, -1 on the other target tokens for the
  rest, 0 elsewhere. Keyword filtering is what data filtering does without attribution (Deep
  Ignorance, O'Brien et al. 2025, filters pretraining documents with a blocklist), so it is the
  cheap guidance MAGIC must beat.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from magic_unlearn.attribution.artifact import ScoreArtifact, model_hash
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.measurements import MeasureFn, queries_info
from magic_unlearn.attribution.trajectory import (
    autocast_ctx,
    check_corpus,
    per_token_loss,
    prepare_model,
    train_trajectory,
)
from magic_unlearn.config import to_dict
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.weights import keyword_mask, sentence_pattern

KEYWORD_LEVELS = ("token", "sentence", "example")


def grad_similarity(
    model: nn.Module,
    corpus: TokenizedCorpus,
    measurements: dict[str, MeasureFn],
    cfg: TrajectoryConfig,
    per: str = "token",
    train: bool = True,
    batch_size: int | None = None,
    out: str | Path | None = None,
    tokenizer: Any | None = None,
    query_info: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> ScoreArtifact:
    """TracIn-style per-token scores at the final checkpoint: -lr * grad l_i . grad f.

    Args:
        model: the model at theta_0 (``train=True``: fine-tuned first with ``train_trajectory``)
            or already at the final checkpoint (``train=False``; LoRA is then not added).
        corpus, measurements, cfg, per, out, tokenizer, query_info: as in ``attribute``.
        batch_size: rows per gradient pass (default ``cfg.batch_size``).

    The per-token products grad l_i . v come from one double backward per batch:
    d/dw_i <d/dtheta sum_j w_j l_j, v> = grad l_i . v for all tokens at once.
    """
    check_corpus(corpus, cfg)
    t_start = time.perf_counter()
    if train:
        model = train_trajectory(model, corpus, cfg, progress=progress)
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        model, params = prepare_model(
            model, cfg.__class__(**{**to_dict(cfg), "lora": None}) if cfg.lora is not None else cfg
        )
    device, dtype = params[0].device, params[0].dtype
    vs: dict[str, list[Tensor]] = {}
    after = {}
    for q, fn in measurements.items():
        val = fn(model)
        grads = torch.autograd.grad(val, params, allow_unused=True)
        vs[q] = [
            torch.zeros_like(p) if g is None else g.detach()
            for p, g in zip(params, grads, strict=True)
        ]
        after[q] = float(val.detach())
    n, length = corpus.input_ids.shape
    sdtype = torch.float64 if dtype == torch.float64 else torch.float32
    scores = {q: torch.zeros(n, length, dtype=sdtype) for q in measurements}
    bs = batch_size or cfg.batch_size
    for s in range(0, n, bs):
        ids = corpus.input_ids[s : s + bs].to(device)
        am = corpus.attention_mask[s : s + bs].to(device)
        lm = corpus.loss_mask[s : s + bs].to(device, dtype)
        w = torch.ones_like(lm, requires_grad=True)
        with autocast_ctx(cfg, device), sdpa_kernel([SDPBackend.MATH]):
            lt = per_token_loss(model, ids, am)
        g = torch.autograd.grad((lt * lm * w).sum(), params, create_graph=True)
        qs = list(measurements)
        for qi, q in enumerate(qs):
            live = [i for i, gi in enumerate(g) if gi.requires_grad]
            (gw,) = torch.autograd.grad(
                [g[i] for i in live],
                [w],
                grad_outputs=[vs[q][i].to(g[i].dtype) for i in live],
                retain_graph=qi < len(qs) - 1,
            )
            scores[q][s : s + bs] = (-cfg.lr * gw * lm).detach().to("cpu", sdtype)
    final = {q: v.float() for q, v in scores.items()}
    if per == "example":
        final = {q: v.sum(dim=1) for q, v in final.items()}
    meta = {
        "queries": queries_info(measurements, query_info),
        "model_hash": model_hash(model),
        "trajectory": to_dict(cfg),
        "eval_losses": {"after": after},
        "timings": {"total_s": time.perf_counter() - t_start},
        "baseline": "tracin_final_checkpoint",
    }
    art = ScoreArtifact.from_corpus(
        corpus, final, method="grad_sim", per=per, meta=meta, tokenizer=tokenizer
    )
    if out is not None:
        art.save(out, overwrite=overwrite)
    return art


def random_scores(
    corpus: TokenizedCorpus,
    queries: list[str],
    seed: int = 0,
    per: str = "token",
    out: str | Path | None = None,
    tokenizer: Any | None = None,
    overwrite: bool = False,
) -> ScoreArtifact:
    """Standard-normal scores on target tokens (zero elsewhere), one independent draw per query."""
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for q in queries:
        s = torch.randn(corpus.input_ids.shape, generator=gen) * corpus.loss_mask
        scores[q] = s if per == "token" else s.sum(dim=1)
    art = ScoreArtifact.from_corpus(
        corpus, scores, method="random", per=per, meta={"seed": seed}, tokenizer=tokenizer
    )
    if out is not None:
        art.save(out, overwrite=overwrite)
    return art


def keyword_scores(
    docs: list[dict[str, Any]],
    corpus: TokenizedCorpus,
    queries: list[str],
    patterns: list[str],
    level: str = "sentence",
    tokenizer: Any | None = None,
    per: str = "token",
    out: str | Path | None = None,
    overwrite: bool = False,
) -> ScoreArtifact:
    """Keyword-blocklist scores in the artifact format (sign convention: -1 = teaches).

    Args:
        docs: the documents ``corpus`` was tokenized from (same order).
        corpus: the scored rows.
        queries: query names; the first is the hazard query (scored -1 on keyword tokens), every
            other one a general query (scored -1 on the remaining target tokens).
        patterns: keyword regexes (case-insensitive), e.g. ``World.hazard_keywords()``.
        level: ``token`` (the matched characters' tokens), ``sentence`` (every token of a
            sentence with a match) or ``example`` (every token of a document with a match).
        tokenizer: the fast tokenizer of ``corpus`` (character offsets).

    Ties: every keyword token scores the same, so a top-k selection over these scores keeps
    the first rows (``transform_scores`` breaks ties by position).
    """
    if level not in KEYWORD_LEVELS:
        raise ValueError(f"keyword level {level!r}; choose from {list(KEYWORD_LEVELS)}")
    if tokenizer is None:
        raise ValueError("keyword scores need the corpus tokenizer (character offsets)")
    if level == "sentence":
        mask = keyword_mask(docs, corpus, tokenizer, [sentence_pattern(patterns)], level="token")
    else:
        mask = keyword_mask(docs, corpus, tokenizer, patterns, level=level)
    rest = corpus.loss_mask.float() - mask  # (N, L) target tokens without a match
    scores = {q: -(mask if i == 0 else rest) for i, q in enumerate(queries)}
    if per == "example":
        scores = {q: v.sum(dim=1) for q, v in scores.items()}
    meta = {
        "keywords": list(patterns),
        "keyword_level": level,
        "baseline": "keyword_blocklist",
        "keyword_token_frac": float(mask.sum() / corpus.loss_mask.sum().clamp(min=1)),
    }
    art = ScoreArtifact.from_corpus(
        corpus, scores, method="keyword", per=per, meta=meta, tokenizer=tokenizer
    )
    if out is not None:
        art.save(out, overwrite=overwrite)
    return art
