"""Adapter from score artifacts (or plain tensors) to flat numpy score sets.

The analysis code never depends on how the attribution stage stores its results: everything goes
through :class:`ScoreSet`, one (N, L) score matrix for one (method, query) pair, plus the token
ids, the mask of scored units and the world ground truth when present.

Sign convention (``magic_unlearn.SIGN_CONVENTION``): score = d(eval loss)/d(token weight);
NEGATIVE = proponent (the token teaches the benchmark), positive = detractor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.data import TokenizedCorpus

HAZARD_PAT = re.compile(r"hazard|wmdp|bio|forget|cyber|chem", re.I)
GENERAL_PAT = re.compile(r"general|mmlu|retain|wiki", re.I)


@dataclass
class ScoreSet:
    """Per-token scores of one method for one query over one tokenized corpus.

    Attributes:
        name: display name, ``"{method}:{query}"``.
        method: ``magic`` | ``grad_sim`` | ``random`` | anything.
        query: measurement name (e.g. ``hazard_qa``).
        scores: (N, L) float64; only entries under ``mask`` are meaningful.
        mask: (N, L) bool, the units that carry a score (loss_mask > 0).
        input_ids: (N, L) int64 token ids.
        labels: (N, L) int64 world ground truth (0 other, 1 general, 2 hazard, -1 none) or None
            when the corpus has no labels (real data).
        doc_ids: N document ids.
        meta: the artifact metadata (free-form).
        fact_ids: (N, L) world fact ids (-1 for none) or None.
    """

    name: str
    method: str
    query: str
    scores: np.ndarray
    mask: np.ndarray
    input_ids: np.ndarray
    labels: np.ndarray | None = None
    doc_ids: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    fact_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.mask = np.asarray(self.mask).astype(bool)
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64)
        if self.scores.ndim != 2:
            raise ValueError(
                f"score set {self.name}: scores must be (N, L), got {self.scores.shape}"
            )
        for nm in ("mask", "input_ids"):
            if getattr(self, nm).shape != self.scores.shape:
                raise ValueError(
                    f"score set {self.name}: {nm} shape {getattr(self, nm).shape} "
                    f"!= scores shape {self.scores.shape}"
                )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != self.scores.shape:
                raise ValueError(
                    f"score set {self.name}: labels shape {self.labels.shape} "
                    f"!= scores shape {self.scores.shape}"
                )
            if not (self.labels[self.mask] >= 0).any():
                self.labels = None  # a real corpus: labels are all -1
        if not self.doc_ids:
            self.doc_ids = [str(i) for i in range(self.scores.shape[0])]
        if len(self.doc_ids) != self.scores.shape[0]:
            raise ValueError(
                f"score set {self.name}: {len(self.doc_ids)} doc ids for "
                f"{self.scores.shape[0]} rows"
            )
        bad = ~np.isfinite(self.scores[self.mask])
        if bad.any():
            src = self.meta.get("_source")
            raise ValueError(
                f"{src + ': ' if src else ''}score set {self.name}: {int(bad.sum())} NaN/inf "
                f"scores on scored tokens; the attribution run diverged or the file was edited: "
                f"re-run `magic-unlearn attribute` (a smaller lr usually helps)"
            )

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def flat(self) -> np.ndarray:
        """Scores of the scored units, row-major, shape (n_units,)."""
        return self.scores[self.mask]

    def per_example(self) -> np.ndarray:
        """Per-example score = sum of its token scores (the example-weight derivative), (N,)."""
        return np.where(self.mask, self.scores, 0.0).sum(axis=1)


def _np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).numpy()
    return np.asarray(t)


def from_tensors(
    scores: torch.Tensor | np.ndarray,
    corpus: TokenizedCorpus,
    query: str = "query",
    method: str = "custom",
    meta: dict[str, Any] | None = None,
) -> ScoreSet:
    """A :class:`ScoreSet` from a plain (N, L) score tensor over a :class:`TokenizedCorpus`."""
    s = _np(scores)
    if s.shape != tuple(corpus.input_ids.shape):
        raise ValueError(
            f"scores shape {s.shape} does not match corpus input_ids shape "
            f"{tuple(corpus.input_ids.shape)}; they must come from the same corpus"
        )
    return ScoreSet(
        name=f"{method}:{query}",
        method=method,
        query=query,
        scores=s,
        mask=_np(corpus.loss_mask) > 0,
        input_ids=_np(corpus.input_ids),
        labels=_np(corpus.labels),
        doc_ids=list(corpus.doc_ids),
        meta=dict(meta or {}),
        fact_ids=_np(corpus.fact_ids),
    )


def _load_artifact(path: Path) -> Any:
    """Load a score artifact folder with the attribution stage's own loader."""
    return ScoreArtifact.load(path)


def as_score_sets(obj: Any, queries: list[str] | None = None) -> list[ScoreSet]:
    """Turn an artifact folder path, a loaded artifact, a ScoreSet or a list of those into
    ScoreSets (one per query, optionally only ``queries``)."""
    if isinstance(obj, ScoreSet):
        return [obj] if queries is None or obj.query in queries else []
    if isinstance(obj, (list, tuple)):
        return [s for o in obj for s in as_score_sets(o, queries)]
    src = str(obj) if isinstance(obj, (str, Path)) else type(obj).__name__
    if isinstance(obj, (str, Path)):
        obj = _load_artifact(Path(obj))
    if not all(hasattr(obj, a) for a in ("scores", "corpus")):
        raise TypeError(f"{src}: expected a score artifact folder, ScoreArtifact or ScoreSet")
    meta = dict(getattr(obj, "meta", {}) or {})
    method = str(meta.get("method", "unknown"))
    out = []
    per = str(meta.get("per", "token"))
    for q, s in obj.scores.items():
        if queries is not None and q not in queries:
            continue
        if per != "token" or s.ndim != 2:
            raise ValueError(
                f"{src}: query {q!r} holds per-{per} scores of shape "
                f"{tuple(s.shape)}; the analysis needs per-token (N, L) scores "
                f"(rerun `magic-unlearn attribute` with per-token output)"
            )
        ss = from_tensors(s, obj.corpus, query=q, method=method, meta=meta)
        ss.meta["source"] = src
        out.append(ss)
    return out


def check_same_units(a: ScoreSet, b: ScoreSet) -> None:
    """Raise if two score sets do not score the same tokens of the same corpus."""
    if a.scores.shape != b.scores.shape:
        raise ValueError(
            f"{a.name} ({a.meta.get('source', '?')}) has shape {a.scores.shape} but "
            f"{b.name} ({b.meta.get('source', '?')}) has {b.scores.shape}: score sets "
            f"must cover the same tokenized corpus"
        )
    if not np.array_equal(a.input_ids, b.input_ids):
        raise ValueError(
            f"{a.name} and {b.name} were computed on different token ids: attribute "
            f"both queries over the same corpus and tokenizer"
        )
    if not np.array_equal(a.mask, b.mask):
        raise ValueError(f"{a.name} and {b.name} score different token masks")


def pick_pair(
    sets: list[ScoreSet],
    hazard_query: str | None = None,
    general_query: str | None = None,
    method: str | None = None,
) -> tuple[ScoreSet, ScoreSet]:
    """Choose the (hazard, general) pair to analyse.

    Order of rules: explicit query names; else query names matching hazard/general keywords
    (``hazard|wmdp|bio|...`` vs ``general|mmlu|retain|...``); else the first two sets in order.
    Only sets of ``method`` (default: the method of the first set) are considered.
    """
    if not sets:
        raise ValueError(
            "no score sets given; pass --scores DIR (a `magic-unlearn attribute` output)"
        )
    method = method or sets[0].method
    cand = [s for s in sets if s.method == method]
    if len(cand) < 2:
        raise ValueError(
            f"need two queries (hazard and general) of method '{method}', got "
            f"{[s.name for s in cand]}; pass two artifacts or one with two queries"
        )

    def find(name: str | None, pat: re.Pattern[str], other: ScoreSet | None) -> ScoreSet | None:
        pool = [s for s in cand if s is not other]
        if name is not None:
            hit = [s for s in pool if s.query == name]
            if not hit:
                raise ValueError(f"query '{name}' not found; available: {[s.query for s in cand]}")
            return hit[0]
        hit = [s for s in pool if pat.search(s.query)]
        return hit[0] if len(hit) == 1 else None

    hz = find(hazard_query, HAZARD_PAT, None)
    gn = find(general_query, GENERAL_PAT, hz)
    if hz is None:
        hz = next(s for s in cand if s is not gn)
    if gn is None:
        gn = next(s for s in cand if s is not hz)
    check_same_units(hz, gn)
    return hz, gn
