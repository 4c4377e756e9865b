"""Token masks of a training corpus: which tokens to take out of a training set.

Token-level filtering (Rathi & Radford 2026: masking the loss of hazard tokens during
pretraining slowed relearning up to 7,000x, against ~30x for document filtering) retrains with
these tokens' loss weight at 0; the attribution-guided UNDO drops them from the distillation
data. A mask comes from one of:

- ``scores``: a score artifact that scored every document of the corpus (e.g. the ``acquire``
  regime's, which trains on forget + pretraining data): the top ``frac`` of the corpus's target
  tokens by hazard-teaching priority ``t_h - alpha t_g`` (``t = -score``) among the eligible
  ones (``select``, as in ``weights.WeightConfig``);
- ``random``: ``frac`` of the target tokens, uniformly (the unguided twin at the same masked
  fraction);
- ``keyword``: a regex blocklist (``weights.keyword_mask``);
- ``labels``: the world's ground-truth hazard-fact tokens (an oracle, for reference only).

``blocklist`` adds a keyword blocklist in front of any source: every target token of a sentence
it matches is masked first, and the source's ``frac`` budget is then spent among the tokens
left. Attribution then finds what the blocklist misses. On the tiny world the world's
blocklist covers 2/3 of the hazard-fact tokens and no general-fact token, and token filtering
needs near-complete recall (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.data import LABEL_GENERAL, LABEL_HAZARD, TokenizedCorpus
from magic_unlearn.unlearn.weights import (
    WeightConfig,
    expand_blocklist,
    keyword_mask,
    load_score_pair,
    sentence_pattern,
    transform_eligible,
    transform_scores,
)

SOURCES = ("scores", "random", "keyword", "labels")


@dataclass
class MaskConfig:
    """Which tokens of a corpus to mask (see the module docstring).

    Attributes:
        source: ``scores`` | ``random`` | ``keyword`` | ``labels``.
        scores: the score artifact folder (``source: scores``); None: the unlearning run's first
            ``token_weights`` artifact.
        frac: fraction of the corpus's target tokens to mask (``scores``, ``random``).
        select: which tokens are eligible (``WeightConfig.select``; ``hazard_proponent``:
            every token that teaches hazard).
        alpha: general weight of the priority ``t_h - alpha t_g`` (0: hazard teaching alone).
        hazard_query, general_query: the artifact's query names (None: inferred).
        keywords: regex blocklist (``source: keyword``).
        seed: seed of ``random``.
        blocklist: regexes whose matching sentences are masked before the source's budget is
            spent (``"world"``: the world's hazard keyword list, ``World.hazard_keywords``);
            None: no blocklist.
        blocklist_expand: grow the blocklist from the corpus first: add every word whose
            occurrences fall inside blocklisted sentences at least this often
            (``weights.expand_blocklist``; a text-only baseline); None: as given.
    """

    source: str = "scores"
    scores: str | None = None
    frac: float | None = 0.1
    select: str = "hazard_proponent"
    alpha: float = 0.0
    hazard_query: str | None = None
    general_query: str | None = None
    keywords: list[str] | None = None
    seed: int = 0
    blocklist: list[str] | str | None = None
    blocklist_expand: float | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"MaskConfig.source={self.source!r}; choose from {list(SOURCES)}")
        if self.source in ("scores", "random") and not (
            self.frac is not None and 0 < self.frac < 1
        ):
            raise ValueError(
                f"MaskConfig.frac={self.frac!r}: source {self.source!r} needs a fraction in (0, 1)"
            )
        if self.source == "keyword" and not self.keywords:
            raise ValueError("MaskConfig.source='keyword' needs keywords (a regex list)")
        if self.blocklist_expand is not None and (
            self.blocklist is None or not 0 < self.blocklist_expand <= 1
        ):
            raise ValueError(
                f"MaskConfig.blocklist_expand={self.blocklist_expand!r}: needs a blocklist and a "
                "share in (0, 1]"
            )
        if isinstance(self.blocklist, str) and self.blocklist != "world":
            raise ValueError(
                f"MaskConfig.blocklist={self.blocklist!r}: use 'world' or a list of regexes"
            )


def corpus_mask(
    cfg: MaskConfig,
    docs: list[dict[str, Any]],
    corpus: TokenizedCorpus,
    tokenizer: Any,
    scores: str | None = None,
    world_keywords: list[str] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Keep-weights of a corpus: 0 on masked target tokens, 1 elsewhere, plus statistics.

    Args:
        cfg: the mask.
        docs: the documents ``corpus`` was tokenized from (keyword masks read their text).
        corpus: the corpus rows (one document per row).
        tokenizer: the corpus's tokenizer (artifact and keyword checks).
        scores: the artifact folder when ``cfg.scores`` is None.
        world_keywords: the world's hazard keyword list (``cfg.blocklist: world``).

    Returns:
        ``(keep (N, L) float32, info)``; ``info`` holds the masked fraction and, on a world
        corpus, the share of hazard-fact / general-fact tokens masked.

    Raises:
        ValueError: no artifact for ``source: scores``, no keywords for ``blocklist: world``, or
            nothing masked.
        ArtifactMismatchError: the artifact did not score this corpus's documents.
    """
    lm = corpus.loss_mask > 0
    n_target = int(lm.sum())
    k = max(1, round((cfg.frac or 0.0) * n_target))
    first = torch.zeros_like(lm)  # the blocklist's sentences, masked before the budget
    n_grown = None  # words the blocklist grew by (blocklist_expand)
    if cfg.blocklist is not None:
        pats = world_keywords if cfg.blocklist == "world" else list(cfg.blocklist)
        if not pats:
            raise ValueError(
                "MaskConfig.blocklist='world' needs the world's hazard keywords (a world corpus); "
                "or give the regexes as a list"
            )
        if cfg.blocklist_expand is not None:
            grown = expand_blocklist(docs, pats, cfg.blocklist_expand)
            n_grown = len(grown)
            pats = [*pats, *grown]
        first = (keyword_mask(docs, corpus, tokenizer, [sentence_pattern(pats)]) > 0) & lm
    lm_rest = lm & ~first  # what the source's budget chooses from
    if cfg.source == "scores":
        path = cfg.scores or scores
        if not path:
            raise ValueError(
                "MaskConfig.source='scores' needs a score artifact (mask.scores, or "
                "token_weights of the unlearning config)"
            )
        art = ScoreArtifact.load(path)
        if list(art.meta.get("doc_ids") or []) != corpus.doc_ids:
            art = art.select_docs(corpus.doc_ids)
        needs_g = cfg.alpha != 0 or cfg.select in (
            "hazard_only",
            "general_only",
            "selective",
            "compatible",
        )
        hazard, general, _ = load_score_pair(
            [art], corpus, tokenizer, cfg.hazard_query, cfg.general_query, need_general=needs_g
        )
        rest = corpus.loss_mask * lm_rest.to(corpus.loss_mask.dtype)
        wcfg = WeightConfig(select=cfg.select, alpha=cfg.alpha, top_k=k)
        if bool(first.any()) and not bool(transform_eligible(hazard, general, rest, wcfg).any()):
            drop = torch.zeros_like(lm)  # the blocklist took every token these scores select
        else:
            w, _ = transform_scores(hazard, rest, general, wcfg)
            drop = (w != 0) & lm_rest
    elif cfg.source == "random":
        g = torch.Generator().manual_seed(cfg.seed)
        flat = torch.nonzero(lm_rest.flatten()).flatten()
        pick = flat[torch.randperm(len(flat), generator=g)[:k]]
        drop = torch.zeros(lm.numel(), dtype=torch.bool)
        drop[pick] = True
        drop = drop.view_as(lm)
    elif cfg.source == "keyword":
        drop = (keyword_mask(docs, corpus, tokenizer, list(cfg.keywords or [])) > 0) & lm
    else:
        if not bool((corpus.labels >= 0).any()):
            raise ValueError("MaskConfig.source='labels' needs a world corpus (token labels)")
        drop = (corpus.labels == LABEL_HAZARD) & lm
    drop = drop | first
    if not bool(drop.any()):
        raise ValueError(f"mask ({cfg.source}) selects no token of the corpus")
    info: dict[str, Any] = {
        "source": cfg.source,
        "n_target": n_target,
        "n_masked": int(drop.sum()),
        "masked_frac": float(drop.sum()) / max(1, n_target),
    }
    if cfg.blocklist is not None:
        info["blocklist_masked_frac"] = float(first.sum()) / max(1, n_target)
        if n_grown is not None:
            info["blocklist_words_added"] = n_grown
    if bool((corpus.labels >= 0).any()):
        for name, lab in (("hazard_fact", LABEL_HAZARD), ("general_fact", LABEL_GENERAL)):
            is_l = (corpus.labels == lab) & lm
            info[f"{name}_masked_frac"] = float((drop & is_l).sum()) / max(1, int(is_l.sum()))
        info["masked_hazard_fact_precision"] = float(
            (drop & (corpus.labels == LABEL_HAZARD)).sum()
        ) / max(1, int(drop.sum()))
    return (~drop).float(), info


__all__ = ["SOURCES", "MaskConfig", "corpus_mask"]
