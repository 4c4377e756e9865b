"""Baseline attributions written in the same artifact format as MAGIC.

- ``grad_similarity``: TracIn at the final checkpoint (Pruthi et al. 2020, "Estimating Training
  Data Influence by Tracing Gradient Descent"): s_i = -lr * grad l_i(theta_T) . grad f(theta_T),
  i.e. the first-order change of f from one extra SGD step on token i. Same sign convention as
  MAGIC (positive = detractor).
- ``random_scores``: i.i.d. standard normal scores on the target tokens.
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
