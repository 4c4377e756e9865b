"""From attribution scores to per-token training weights (and keyword masks).

Scores follow ``magic_unlearn.SIGN_CONVENTION``: ``s = d(eval loss)/d(token weight)``; a
NEGATIVE score marks a proponent (the token teaches the benchmark). We therefore work with the
*teaching value* ``t = -s`` (positive = teaches). With a hazard score ``s_h`` and an optional
general score ``s_g`` (e.g. MMLU / general_qa), :func:`transform_scores` applies, in order:

1. ``m = loss_mask > 0`` (only target tokens carry scores);
2. ``priority = t_h - alpha * t_g`` (``t_g = 0`` without a general score);
3. eligibility ``select`` (sign tests on the raw scores):
   ``all``; ``hazard_proponent`` (s_h < 0); ``hazard_detractor`` (s_h > 0); ``hazard_only``
   (s_h < 0 and s_g >= 0); ``general_only`` (s_g < 0 and s_h >= 0: teaches general, not
   hazard); ``selective`` (s_h > 0 and s_g <= 0); ``compatible`` (s_h > 0 and s_g < 0);
4. selection among eligible units by ``threshold`` (priority >= threshold), then ``top_k`` /
   ``top_frac`` by priority. Units are tokens (``level="token"``) or whole rows
   (``level="example"``: a row's priority is the ``aggregate`` (sum | mean | max) of its eligible
   tokens' priorities, and a kept row keeps all its eligible tokens);
5. ``value`` of each kept token: ``binary`` (1), ``score`` (s_h), ``teach`` (t_h), ``priority``,
   or ``sign`` (sign of s_h);
6. ``normalize`` over kept tokens: ``none``, ``mean_abs`` (v / mean |v|), ``max_abs``
   (v / max |v|), or ``rank`` (sign(v) * rank(|v|) / n, ranks 1..n, so in (0, 1]);
7. ``clip`` to ``[lo, hi]``, multiply by ``scale``; zero everywhere else.

A positive weight means "apply the method's loss to this token"; with ``sft`` a negative weight
means gradient *ascent* on that token (the ``value_weighted`` / ``sign_only`` configurations).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magic_unlearn.attribution.artifact import ArtifactMismatchError, ScoreArtifact
from magic_unlearn.data import TokenizedCorpus

SELECTS = (
    "all",
    "hazard_proponent",
    "hazard_detractor",
    "hazard_only",
    "general_only",
    "selective",
    "compatible",
)
VALUES = ("binary", "score", "teach", "priority", "sign")
NORMALIZES = ("none", "mean_abs", "max_abs", "rank")


@dataclass
class WeightConfig:
    """Settings of :func:`transform_scores` (see the module docstring for the exact order)."""

    select: str = "all"
    alpha: float = 1.0
    threshold: float | None = None
    top_k: int | None = None
    top_frac: float | None = None
    level: str = "token"  # token | example
    aggregate: str = "sum"  # sum | mean | max (example level)
    value: str = "binary"
    normalize: str = "none"
    clip: list[float] | None = None
    scale: float = 1.0

    def validate(self) -> None:
        for name, allowed in (
            ("select", SELECTS),
            ("value", VALUES),
            ("normalize", NORMALIZES),
            ("level", ("token", "example")),
            ("aggregate", ("sum", "mean", "max")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"WeightConfig.{name}={getattr(self, name)!r}; choose from {list(allowed)}"
                )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("WeightConfig.top_k must be >= 1")
        if self.top_frac is not None and not 0 < self.top_frac <= 1:
            raise ValueError("WeightConfig.top_frac must be in (0, 1]")
        if self.clip is not None and (len(self.clip) != 2 or self.clip[0] > self.clip[1]):
            raise ValueError("WeightConfig.clip must be [lo, hi] with lo <= hi")


# The seed's attribution experiments (pair with method "sft", forget corpus = scored corpus).
SEED_CONFIGS: dict[str, WeightConfig] = {
    # ascent on proponents, descent on detractors, |w| averaging 1
    "value_weighted": WeightConfig(value="score", normalize="mean_abs"),
    "sign_only": WeightConfig(value="sign"),
    "detractor_sft": WeightConfig(select="hazard_detractor"),
    "proponent_sft": WeightConfig(select="hazard_proponent"),
    "selective": WeightConfig(select="selective"),
    "compatible": WeightConfig(select="compatible"),
    # forget-side weights for any unlearning method: how much a token teaches hazard
    "hazard_teach": WeightConfig(
        select="hazard_proponent", value="teach", normalize="mean_abs", clip=[0.0, 5.0]
    ),
    "hazard_top10": WeightConfig(select="hazard_proponent", top_frac=0.1),
    "general_only": WeightConfig(select="general_only"),
}


def _eligible(select: str, s_h: torch.Tensor, s_g: torch.Tensor | None) -> torch.Tensor:
    needs_g = select in ("hazard_only", "general_only", "selective", "compatible")
    if needs_g and s_g is None:
        raise ValueError(
            f"WeightConfig.select={select!r} needs a general score too (pass a "
            f"second artifact or query)"
        )
    if select == "all":
        return torch.ones_like(s_h, dtype=torch.bool)
    if select == "hazard_proponent":
        return s_h < 0
    if select == "hazard_detractor":
        return s_h > 0
    assert s_g is not None
    return {
        "hazard_only": (s_h < 0) & (s_g >= 0),
        "general_only": (s_g < 0) & (s_h >= 0),
        "selective": (s_h > 0) & (s_g <= 0),
        "compatible": (s_h > 0) & (s_g < 0),
    }[select]


def transform_eligible(
    hazard: torch.Tensor,
    general: torch.Tensor | None,
    loss_mask: torch.Tensor,
    cfg: WeightConfig,
) -> torch.Tensor:
    """(N, L) bool: the target tokens ``transform_scores`` may select (``cfg.select``), before
    its threshold and top-k."""
    s_g = general.double() if general is not None else None
    return (loss_mask > 0) & _eligible(cfg.select, hazard.double(), s_g)


def _top(values: torch.Tensor, cfg: WeightConfig) -> torch.Tensor:
    """Boolean mask over a 1-D tensor of candidate priorities: threshold, then top-k/frac."""
    keep = torch.ones_like(values, dtype=torch.bool)
    if cfg.threshold is not None:
        keep &= values >= cfg.threshold
    n = int(keep.sum())
    k = n
    if cfg.top_k is not None:
        k = min(k, cfg.top_k)
    if cfg.top_frac is not None:
        k = min(k, max(1, round(cfg.top_frac * n))) if n else 0
    if k < n:
        cand = torch.where(keep, values, torch.full_like(values, -torch.inf))
        idx = torch.argsort(cand, descending=True, stable=True)[:k]  # ties: lowest index first
        keep = torch.zeros_like(keep)
        keep[idx] = True
    return keep


def transform_scores(
    hazard: torch.Tensor,
    loss_mask: torch.Tensor,
    general: torch.Tensor | None = None,
    cfg: WeightConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights from per-token scores.

    Args:
        hazard: (N, L) hazard scores (sign convention above).
        loss_mask: (N, L) target-token mask of the scored corpus.
        general: optional (N, L) general-knowledge scores.
        cfg: the transform (default: all target tokens, weight 1).

    Returns:
        ``(weights (N, L) float32, rows)``: ``rows`` are the indices of rows with any nonzero
        weight, ordered by row priority (highest first) at example level, else ascending.

    Raises:
        ValueError: bad config, mismatched shapes, non-finite scores, or nothing selected.
    """
    cfg = cfg or WeightConfig()
    cfg.validate()
    if hazard.shape != loss_mask.shape or (general is not None and general.shape != hazard.shape):
        raise ValueError(
            f"score shapes differ: hazard {tuple(hazard.shape)}, loss_mask "
            f"{tuple(loss_mask.shape)}, general "
            f"{None if general is None else tuple(general.shape)}"
        )
    m = loss_mask > 0
    s_h = hazard.double()
    s_g = general.double() if general is not None else None
    for name, s in (("hazard", s_h), ("general", s_g)):
        if s is not None and not torch.isfinite(s[m]).all():
            raise ValueError(f"{name} scores contain NaN/inf on target tokens")
    t_h = -s_h
    t_g = -s_g if s_g is not None else torch.zeros_like(s_h)
    prio = t_h - cfg.alpha * t_g  # (N, L)
    elig = transform_eligible(hazard, general, loss_mask, cfg)

    if cfg.level == "token":
        keep = torch.zeros_like(elig)
        keep[elig] = _top(prio[elig], cfg)
        row_order = None
    else:
        pe = torch.where(elig, prio, torch.zeros_like(prio))
        n_el = elig.sum(1)
        if cfg.aggregate == "sum":
            rp = pe.sum(1)
        elif cfg.aggregate == "mean":
            rp = pe.sum(1) / n_el.clamp(min=1)
        else:
            rp = torch.where(elig, prio, torch.full_like(prio, -torch.inf)).max(1).values
        has = n_el > 0
        row_keep = torch.zeros_like(has)
        row_keep[has] = _top(rp[has], cfg)
        keep = elig & row_keep[:, None]
        row_order = torch.argsort(
            torch.where(row_keep, rp, torch.full_like(rp, -torch.inf)), descending=True, stable=True
        )[: int(row_keep.sum())]

    if not keep.any():
        raise ValueError(
            f"weight transform selected no token (select={cfg.select!r}, "
            f"threshold={cfg.threshold}, top_k={cfg.top_k}, top_frac={cfg.top_frac}, "
            f"level={cfg.level!r}); loosen the selection"
        )
    v = {
        "binary": torch.ones_like(s_h),
        "score": s_h,
        "teach": t_h,
        "priority": prio,
        "sign": torch.sign(s_h),
    }[cfg.value]
    v = torch.where(keep, v, torch.zeros_like(v))
    kv = v[keep]
    if cfg.normalize == "mean_abs":
        v = v / kv.abs().mean().clamp(min=1e-30)
    elif cfg.normalize == "max_abs":
        v = v / kv.abs().max().clamp(min=1e-30)
    elif cfg.normalize == "rank":
        ranks = torch.empty_like(kv)
        ranks[torch.argsort(kv.abs(), stable=True)] = torch.arange(
            1, kv.numel() + 1, dtype=kv.dtype
        )
        v = torch.zeros_like(v)
        v[keep] = torch.sign(kv) * ranks / kv.numel()
    if cfg.clip is not None:
        v = torch.where(keep, v.clamp(cfg.clip[0], cfg.clip[1]), v)
    v = v * cfg.scale
    w = v.float()
    if float(w.abs().sum()) == 0:
        raise ValueError(
            "weight transform produced all-zero weights (every kept value is 0 "
            "after value/clip); check WeightConfig.value and clip"
        )
    rows = row_order if row_order is not None else torch.nonzero((w != 0).any(1)).flatten()
    return w, rows


def curriculum_order(
    hazard: torch.Tensor,
    loss_mask: torch.Tensor,
    general: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Row order from most purely hazard-teaching to most mixed (approach 6, curriculum).

    Purity of row i is ``H_i / (H_i + alpha G_i)`` with ``H_i`` / ``G_i`` the summed positive
    teaching values (``relu(-s)``) of its target tokens for hazard / general. Ties (and rows with
    no hazard teaching, purity 0, last) break by larger ``H_i`` first.
    """
    m = (loss_mask > 0).double()
    H = (torch.relu(-hazard.double()) * m).sum(1)
    G = (torch.relu(-general.double()) * m).sum(1) if general is not None else torch.zeros_like(H)
    purity = H / (H + alpha * G).clamp(min=1e-30)
    # lexicographic sort: purity desc, then H desc (stable two-pass)
    order = torch.argsort(H, descending=True, stable=True)
    return order[torch.argsort(purity[order], descending=True, stable=True)]


# ---------------------------------------------------------------------------------------------
# score artifacts


def _token_scores(art: Any, query: str) -> torch.Tensor:
    if art.per == "token":
        return art.token_scores(query).float()
    # per-example scores: spread each row's score evenly over its target tokens
    lm = art.loss_mask.float()
    return art.example_scores(query).float()[:, None] * lm / lm.sum(1, keepdim=True).clamp(min=1)


def _pick_query(art: Any, query: str | None, hint: str, fallback_index: int) -> str:
    if query is not None:
        if query not in art.scores:
            raise KeyError(
                f"{art.meta.get('_source', 'artifact')}: query {query!r} not found; "
                f"it has {art.queries}"
            )
        return query
    hits = [q for q in art.queries if hint in q]
    if hits:
        return hits[0]
    if fallback_index < len(art.queries):
        return art.queries[fallback_index]
    raise ValueError(
        f"{art.meta.get('_source', 'artifact')}: cannot choose a {hint} query among "
        f"{art.queries}; name it explicitly"
    )


def load_score_pair(
    dirs: Sequence[str | Path | ScoreArtifact],
    corpus: TokenizedCorpus | None = None,
    tokenizer: Any | None = None,
    hazard_query: str | None = None,
    general_query: str | None = None,
    need_general: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, TokenizedCorpus]:
    """Hazard (and general) per-token scores from one or two score artifacts.

    One artifact: the hazard query is ``hazard_query`` or the first query containing "hazard"
    (else the first); the general query is ``general_query``, one containing "general" / "mmlu",
    or the second query. Two artifacts: hazard from the first, general from the second.
    Every artifact is checked against ``corpus`` / ``tokenizer`` when given
    (``ScoreArtifact.check_compatible``) and against the first artifact's rows.

    Args:
        dirs: artifact folders, or artifacts already loaded (a caller that needs them for more
            than the scores loads each once and passes it here).

    Returns:
        ``(hazard (N, L), general (N, L) or None, scored corpus)``.
    """
    if not dirs:
        raise ValueError("no score artifact given")
    if len(dirs) > 2:
        raise ValueError(f"at most two score artifacts (hazard, general); got {len(dirs)}")
    arts = [d if isinstance(d, ScoreArtifact) else ScoreArtifact.load(d) for d in dirs]
    for a in arts:
        a.check_compatible(corpus, tokenizer)
        if not torch.equal(a.input_ids, arts[0].input_ids):
            raise ArtifactMismatchError(
                f"{a.meta.get('_source')}: scored other rows than "
                f"{arts[0].meta.get('_source')}; both artifacts must "
                f"score the same corpus"
            )
    hq = _pick_query(arts[0], hazard_query, "hazard", 0)
    hazard = _token_scores(arts[0], hq)
    general = None
    g_art = arts[1] if len(arts) == 2 else arts[0]
    g_candidates = [q for q in g_art.queries if not (len(arts) == 1 and q == hq)]
    if general_query is not None or len(arts) == 2 or g_candidates:
        if general_query is not None:
            gq = _pick_query(g_art, general_query, "general", 0)
        else:
            named = [q for q in g_candidates if "general" in q or "mmlu" in q]
            gq = (named or g_candidates or [None])[0]
        if gq is not None:
            general = _token_scores(g_art, gq)
    if need_general and general is None:
        sources = [a.meta.get("_source", "artifact") for a in arts]
        raise ValueError(
            f"a general score is needed but {sources} hold only {arts[0].queries}; "
            f"pass a second artifact or an artifact with two queries"
        )
    return hazard, general, arts[0].corpus


def weights_from_artifacts(
    dirs: list[str | Path],
    corpus: TokenizedCorpus | None,
    cfg: WeightConfig,
    tokenizer: Any | None = None,
    hazard_query: str | None = None,
    general_query: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_score_pair` then :func:`transform_scores`; returns (weights, rows)."""
    needs_g = cfg.select in ("hazard_only", "general_only", "selective", "compatible")
    hazard, general, scored = load_score_pair(
        dirs, corpus, tokenizer, hazard_query, general_query, need_general=needs_g
    )
    return transform_scores(hazard, scored.loss_mask, general, cfg)


# ---------------------------------------------------------------------------------------------
# keyword (regex blocklist) masks


def sentence_pattern(patterns: list[str]) -> str:
    """One regex matching every whole sentence (text between ``.``, ``!``, ``?`` or a newline)
    that contains a match of any of ``patterns``."""
    if not patterns:
        raise ValueError("keyword scores need at least one keyword pattern")
    alt = "|".join(f"(?:{p})" for p in patterns)
    return rf"[^.!?\n]*(?:{alt})[^.!?\n]*[.!?]?"


def expand_blocklist(
    docs: list[dict[str, Any]], patterns: list[str], share: float, min_count: int = 3
) -> list[str]:
    """Word patterns that co-occur with a blocklist: a practitioner's blocklist grown from the data.

    Every word (``\\w+``, case-folded) seen at least ``min_count`` times whose occurrences fall
    inside sentences the blocklist matches at a rate of at least ``share`` becomes a pattern
    (``\\bword\\b``), so sentences that name a blocklisted subject without a keyword are caught
    too. On the tiny world, share 0.6 grows the blocklist's 0.70 of the hazard-fact tokens to
    0.85-0.88 at 0.03-0.05 of the general ones (docs/results.md). The words are not logged: on
    a real corpus they are hazard vocabulary.
    """
    if not 0 < share <= 1:
        raise ValueError(f"blocklist expansion share={share!r}: use a number in (0, 1]")
    hit = re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
    inside: dict[str, int] = {}
    total: dict[str, int] = {}
    for d in docs:
        for sent in re.findall(r"[^.!?\n]+[.!?]?", d["text"]):  # sentence_pattern's sentences
            blocked = hit.search(sent) is not None
            for w in re.findall(r"\w+", sent.lower()):
                total[w] = total.get(w, 0) + 1
                if blocked:
                    inside[w] = inside.get(w, 0) + 1
    words = sorted(w for w, n in total.items() if n >= min_count and inside.get(w, 0) >= share * n)
    return [rf"\b{re.escape(w)}\b" for w in words]


def keyword_mask(
    docs: list[dict[str, Any]],
    corpus: TokenizedCorpus,
    tokenizer: Any,
    patterns: list[str],
    level: str = "token",
    invert: bool = False,
    ignore_case: bool = True,
) -> torch.Tensor:
    """(N, L) 0/1 mask of target tokens whose characters overlap a regex match.

    Args:
        docs: the documents ``corpus`` was tokenized from (same order, checked by id).
        corpus: rows built by :func:`magic_unlearn.data.tokenize_corpus`.
        tokenizer: a *fast* tokenizer (character offsets are needed).
        patterns: regular expressions (a keyword blocklist).
        level: ``token`` (only matching tokens) or ``example`` (every target token of a row with
            any match: document filtering).
        invert: return 1 - mask on target tokens (train on everything *except* the matches).
    """
    if level not in ("token", "example"):
        raise ValueError(f"keyword_mask level={level!r}; use 'token' or 'example'")
    if not patterns:
        raise ValueError("keyword_mask: no patterns given")
    if [str(d["id"]) for d in docs] != list(corpus.doc_ids):
        raise ValueError("keyword_mask: docs do not match the corpus rows (ids/order differ)")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        rx = re.compile("|".join(f"(?:{p})" for p in patterns), flags)
    except re.error as e:
        raise ValueError(f"keyword_mask: invalid regex in {patterns}: {e}") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("keyword_mask needs a fast tokenizer (offset mapping)")
    n, L = corpus.input_ids.shape
    mask = torch.zeros(n, L)
    bos = tokenizer.bos_token_id
    for i, d in enumerate(docs):
        spans = [m.span() for m in rx.finditer(d["text"]) if m.end() > m.start()]
        if not spans:
            continue
        enc = tokenizer(d["text"], add_special_tokens=False, return_offsets_mapping=True)
        off = 1 if bos is not None and int(corpus.input_ids[i, 0]) == bos else 0
        for j, (a, b) in enumerate(enc["offset_mapping"]):
            if off + j >= L:
                break
            if any(a < e and s < b for s, e in spans):
                mask[i, off + j] = 1.0
    mask *= corpus.loss_mask
    if level == "example":
        mask = (mask.sum(1, keepdim=True) > 0).float() * corpus.loss_mask
    if invert:
        mask = corpus.loss_mask - mask
    return mask
