"""Score artifact: per-token attribution scores of a corpus for one or more queries.

Folder layout::

    scores.safetensors   scores.<query> (N, L) per query (per="token"), or (N,)
                         (per="example"): float64 for float64 runs, else float32;
                         input_ids, attention_mask,
                         loss_mask, and labels / fact_ids when the corpus has them
    meta.json            method, per, queries, hashes (``scores_file_hash``: of
                         scores.safetensors, checked on load), tokenizer, trajectory config,
                         sign convention, eval losses before/after training, doc_ids, timings;
                         MAGIC adds ``semantics`` (what a score means exactly) and ``trust``
                         (the trust report: verdict, smoothness, precision, replay drift)
    manifest.json        stage "attribute" (``magic_unlearn.io.write_manifest``)

Sign convention (``magic_unlearn.SIGN_CONVENTION``): score = d(eval loss)/d(token weight) at
w = 1; positive = detractor (raises the eval loss), negative = proponent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

import magic_unlearn
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    file_hash,
    read_json,
    read_manifest,
    write_manifest,
)
from magic_unlearn.models import model_hash, model_hash_async  # noqa: F401 - re-exported

METHODS = ("magic", "grad_sim", "random", "keyword")
PERS = ("token", "example")
SCORES_FILE = "scores.safetensors"
META_FILE = "meta.json"


def _score_dtype(s: torch.Tensor) -> torch.Tensor:
    """Scores are stored in float64 when computed in float64, else in float32."""
    return s if s.dtype == torch.float64 else s.float()


class ArtifactMismatchError(ValueError):
    """A score artifact was used with a corpus or tokenizer other than the one it scored."""


class ArtifactCorruptError(ValueError):
    """A score artifact's files are not the ones ``attribute`` wrote (edited, truncated)."""


def tokenizer_vocab_hash(tokenizer: Any) -> str:
    """Stable short hash of a tokenizer's vocabulary (token -> id) and special tokens."""
    vocab = tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=True)
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    h = hashlib.sha256(blob.encode() + json.dumps(special).encode())
    return h.hexdigest()[:16]


def tokenizer_info(tokenizer: Any | None) -> dict[str, Any]:
    """{name, vocab_hash, vocab_size} of a tokenizer (or nulls when not given)."""
    if tokenizer is None:
        return {"name": None, "vocab_hash": None, "vocab_size": None}
    return {
        "name": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
        "vocab_hash": tokenizer_vocab_hash(tokenizer),
        "vocab_size": len(tokenizer),
    }


@dataclass
class ScoreArtifact:
    """Attribution scores of a tokenized corpus for named queries, plus provenance.

    Attributes:
        scores: query name -> (N, L) per-token scores (per="token") or (N,) per-example;
            float64 when the run was float64, else float32.
        input_ids, attention_mask, loss_mask: the scored corpus rows, (N, L).
        labels, fact_ids: (N, L) ground truth when the corpus has it (else None).
        meta: JSON metadata (see module docstring); ``meta["per"]``, ``meta["method"]``,
            ``meta["doc_ids"]``, ``meta["corpus_hash"]`` are always present.
    """

    scores: dict[str, torch.Tensor]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    labels: torch.Tensor | None = None
    fact_ids: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_corpus(
        cls,
        corpus: TokenizedCorpus,
        scores: dict[str, torch.Tensor],
        *,
        method: str,
        per: str = "token",
        meta: dict[str, Any] | None = None,
        tokenizer: Any | None = None,
    ) -> ScoreArtifact:
        """Build an artifact for ``corpus`` filling the standard metadata fields.

        Args:
            corpus: the scored corpus.
            scores: query -> (N, L) (per="token") or (N,) (per="example") scores.
            method: one of :data:`METHODS`.
            per: "token" | "example".
            meta: extra metadata merged on top (queries, model_hash, trajectory, ...).
            tokenizer: recorded by name and vocab hash when given.
        """
        if method not in METHODS:
            raise ValueError(f"method {method!r} unknown; choose from {METHODS}")
        if per not in PERS:
            raise ValueError(f"per {per!r} unknown; choose from {PERS}")
        has_labels = bool((corpus.labels >= 0).any())
        has_facts = bool((corpus.fact_ids >= 0).any())
        base: dict[str, Any] = {
            "method": method,
            "per": per,
            "queries": {q: {} for q in scores},
            "model_hash": None,
            "corpus_hash": corpus.content_hash(),
            "n_docs": len(corpus),
            "max_length": int(corpus.input_ids.shape[1]),
            "tokenizer": tokenizer_info(tokenizer),
            "trajectory": None,
            "sign_convention": magic_unlearn.SIGN_CONVENTION,
            "eval_losses": {},
            "doc_ids": list(corpus.doc_ids),
            "timings": {},
        }
        for k, v in (meta or {}).items():
            if k == "queries":
                base["queries"].update(v)
            else:
                base[k] = v
        art = cls(
            scores={q: _score_dtype(s.detach()).cpu() for q, s in scores.items()},
            input_ids=corpus.input_ids.cpu(),
            attention_mask=corpus.attention_mask.cpu(),
            loss_mask=corpus.loss_mask.cpu().float(),
            labels=corpus.labels.cpu() if has_labels else None,
            fact_ids=corpus.fact_ids.cpu() if has_facts else None,
            meta=base,
        )
        art.validate()
        return art

    def validate(self) -> None:
        """Check shapes and metadata; raise ValueError naming the field."""
        n, length = self.input_ids.shape
        per = self.meta.get("per", "token")
        for q, s in self.scores.items():
            want = (n, length) if per == "token" else (n,)
            if tuple(s.shape) != want:
                raise ValueError(
                    f"scores.{q}: shape {tuple(s.shape)}, expected {want} for per={per!r}"
                )
        for name in ("attention_mask", "loss_mask", "labels", "fact_ids"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != (n, length):
                raise ValueError(f"{name}: shape {tuple(t.shape)}, expected {(n, length)}")
        doc_ids = self.meta.get("doc_ids")
        if doc_ids is not None and len(doc_ids) != n:
            raise ValueError(f"meta.doc_ids has {len(doc_ids)} entries for {n} rows")

    # ------------------------------------------------------------------ access
    @property
    def queries(self) -> list[str]:
        return list(self.scores)

    @property
    def per(self) -> str:
        return str(self.meta.get("per", "token"))

    @property
    def method(self) -> str:
        return str(self.meta.get("method"))

    @property
    def corpus(self) -> TokenizedCorpus:
        """The scored corpus rebuilt from the stored tensors."""
        n, length = self.input_ids.shape
        neg = torch.full((n, length), -1, dtype=torch.long)
        return TokenizedCorpus(
            input_ids=self.input_ids.clone(),
            attention_mask=self.attention_mask.clone(),
            loss_mask=self.loss_mask.clone(),
            labels=self.labels.clone() if self.labels is not None else neg.clone(),
            fact_ids=self.fact_ids.clone() if self.fact_ids is not None else neg.clone(),
            doc_ids=list(self.meta.get("doc_ids") or [str(i) for i in range(n)]),
        )

    def _check_query(self, query: str) -> None:
        if query not in self.scores:
            raise KeyError(f"query {query!r} not in this artifact; it has {self.queries}")

    def token_scores(self, query: str) -> torch.Tensor:
        """(N, L) per-token scores (zero outside ``loss_mask``); needs per="token"."""
        self._check_query(query)
        if self.per != "token":
            raise ValueError(
                f"artifact holds per-{self.per} scores; no per-token scores for "
                f"{query!r} (rerun attribute with per='token')"
            )
        return self.scores[query]

    def example_scores(self, query: str) -> torch.Tensor:
        """(N,) per-document scores: the sum of its per-token scores (= d f / d w_doc)."""
        self._check_query(query)
        s = self.scores[query]
        if self.per == "example":
            return s
        return (s * self.loss_mask).sum(dim=1)

    def select_docs(self, doc_ids: list[str]) -> ScoreArtifact:
        """The artifact restricted to the rows of ``doc_ids``, in that order.

        An attribution run may train on more than the corpus an unlearning run uses (e.g. the
        forget corpus mixed with pretraining data); the unlearning run takes its rows by id.

        Raises:
            ArtifactMismatchError: a document id was not scored.
        """
        src = self.meta.get("_source", "score artifact")
        have = list(self.meta.get("doc_ids") or [])
        pos = {d: i for i, d in enumerate(have)}
        missing = [d for d in doc_ids if d not in pos]
        if missing:
            raise ArtifactMismatchError(
                f"{src}: {len(missing)} of {len(doc_ids)} documents were not scored (e.g. "
                f"{missing[:3]}); attribute a corpus that contains them"
            )
        rows = torch.tensor([pos[d] for d in doc_ids], dtype=torch.long)
        corpus = self.corpus.subset(rows)
        meta = {k: v for k, v in self.meta.items() if k not in ("corpus_hash", "n_docs", "doc_ids")}
        meta.update(
            corpus_hash=corpus.content_hash(),
            n_docs=len(rows),
            doc_ids=list(doc_ids),
            selected_from=self.meta.get("corpus_hash"),
        )
        art = ScoreArtifact(
            scores={q: s[rows] for q, s in self.scores.items()},
            input_ids=corpus.input_ids,
            attention_mask=corpus.attention_mask,
            loss_mask=corpus.loss_mask,
            labels=self.labels[rows] if self.labels is not None else None,
            fact_ids=self.fact_ids[rows] if self.fact_ids is not None else None,
            meta=meta,
        )
        art.validate()
        return art

    # ------------------------------------------------------------------ checks
    def check_compatible(
        self, corpus: TokenizedCorpus | None = None, tokenizer: Any | None = None
    ) -> None:
        """Raise :class:`ArtifactMismatchError` if corpus/tokenizer differ from the scored ones."""
        src = self.meta.get("_source", "score artifact")
        if corpus is not None:
            want = self.meta.get("corpus_hash")
            got = corpus.content_hash()
            if tuple(corpus.input_ids.shape) != tuple(self.input_ids.shape):
                raise ArtifactMismatchError(
                    f"{src}: corpus shape mismatch: artifact scored {tuple(self.input_ids.shape)} "
                    f"(docs, max_length) but got {tuple(corpus.input_ids.shape)}; tokenize the "
                    f"same corpus with the same max_length, or use `artifact.corpus`"
                )
            if want != got:
                raise ArtifactMismatchError(
                    f"{src}: corpus hash mismatch: artifact scored corpus {want}, got {got}; "
                    f"the token rows differ (other documents, order, tokenizer or max_length)"
                )
        if tokenizer is not None:
            info = self.meta.get("tokenizer") or {}
            want_h = info.get("vocab_hash")
            got_h = tokenizer_vocab_hash(tokenizer)
            if want_h is None:
                raise ArtifactMismatchError(
                    f"{src}: artifact records no tokenizer, cannot check it against "
                    f"{getattr(tokenizer, 'name_or_path', '?')}"
                )
            if want_h != got_h:
                raise ArtifactMismatchError(
                    f"{src}: tokenizer mismatch: artifact was scored with tokenizer "
                    f"{info.get('name')!r} (vocab hash {want_h}), got "
                    f"{getattr(tokenizer, 'name_or_path', '?')!r} (vocab hash {got_h})"
                )

    # ------------------------------------------------------------------ io
    def save(
        self, out: str | Path, overwrite: bool = False, inputs: dict[str, Any] | None = None
    ) -> Path:
        """Write the artifact folder atomically; returns ``out``."""
        self.validate()
        out = Path(out)
        tensors: dict[str, torch.Tensor] = {
            f"scores.{q}": _score_dtype(s).contiguous() for q, s in self.scores.items()
        }
        tensors.update(
            input_ids=self.input_ids.contiguous(),
            attention_mask=self.attention_mask.contiguous(),
            loss_mask=self.loss_mask.float().contiguous(),
        )
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        if self.fact_ids is not None:
            tensors["fact_ids"] = self.fact_ids.contiguous()
        meta = {k: v for k, v in self.meta.items() if not k.startswith("_")}
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / SCORES_FILE), metadata={"format": "magic_unlearn.scores"})
            meta["scores_file_hash"] = file_hash(tmp / SCORES_FILE, n=64)  # checked by load
            atomic_write_json(tmp / META_FILE, meta)
            if meta.get("trajectory") is not None:  # the resolved run config, loadable again
                atomic_write_text(
                    tmp / "config.yaml", yaml.safe_dump(meta["trajectory"], sort_keys=False)
                )
            atomic_write_json(
                tmp / "metrics.json",
                {
                    "eval_losses": meta.get("eval_losses", {}),
                    "timings": meta.get("timings", {}),
                    "score_stats": {
                        q: {
                            "mean": float(s.mean()),
                            "std": float(s.std()),
                            "min": float(s.min()),
                            "max": float(s.max()),
                        }
                        for q, s in self.scores.items()
                    },
                },
            )
            man_inputs = {
                "corpus_hash": meta.get("corpus_hash"),
                "model_hash": meta.get("model_hash"),
                "tokenizer_vocab_hash": (meta.get("tokenizer") or {}).get("vocab_hash"),
            }
            man_inputs.update(inputs or {})
            write_manifest(
                tmp,
                "attribute",
                inputs=man_inputs,
                extra={
                    "method": meta.get("method"),
                    "per": meta.get("per"),
                    "queries": list(self.scores),
                },
            )
        return out

    @classmethod
    def load(cls, folder: str | Path) -> ScoreArtifact:
        """Load a saved artifact, with clear errors for missing or malformed pieces."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"score artifact folder {folder} does not exist "
                f"(create it with `magic-unlearn attribute`)"
            )
        read_manifest(folder, stage="attribute")
        path = folder / SCORES_FILE
        if not path.exists():
            raise FileNotFoundError(f"{folder}: missing {SCORES_FILE}")
        meta = read_json(folder / META_FILE)
        redo = "re-run `magic-unlearn attribute` to recreate it"
        want = meta.get("scores_file_hash")  # absent in artifacts written before it existed
        if want is not None and file_hash(path, n=len(want)) != want:
            raise ArtifactCorruptError(
                f"{path} does not match the hash recorded in {folder / META_FILE} (edited, "
                f"truncated or replaced after it was written); {redo}"
            )
        try:
            t = load_file(str(path))
        except Exception as e:  # safetensors raises its own SafetensorError (not an OSError)
            raise ArtifactCorruptError(
                f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); {redo}"
            ) from e
        for key in ("input_ids", "attention_mask", "loss_mask"):
            if key not in t:
                raise ValueError(f"{folder / SCORES_FILE}: missing tensor {key!r}")
        scores = {k[len("scores.") :]: v for k, v in t.items() if k.startswith("scores.")}
        if not scores:
            raise ValueError(f"{folder / SCORES_FILE}: holds no scores.<query> tensors")
        order = list((meta.get("queries") or {}).keys())
        scores = {q: scores[q] for q in order if q in scores} | scores
        meta["_source"] = str(folder)
        art = cls(
            scores=scores,
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            loss_mask=t["loss_mask"],
            labels=t.get("labels"),
            fact_ids=t.get("fact_ids"),
            meta=meta,
        )
        try:
            art.validate()
        except ValueError as e:
            raise ValueError(f"{folder}: {e}") from e
        return art
