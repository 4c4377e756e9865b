"""Text corpora: load (world, local JSONL/Parquet/JSON, or hub via the ``hf`` extra) and tokenize.

A corpus is a list of documents ``{"id": str, "text": str, ...}``. World documents also carry
per-token ground truth aligned with ``tokenizer(text, add_special_tokens=False).input_ids``:
``labels`` (0 other, 1 general-fact, 2 hazard-fact) and ``fact_ids`` (-1 for none).

``tokenize_corpus`` packs documents into fixed-length rows ``[BOS] tokens [EOS] [PAD]...``.
Position j of a row is *predicted* from positions < j, so the loss of token j (j >= 1) is the
unit that gets a per-token weight and a per-token attribution score; position 0 never has one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

LABEL_OTHER, LABEL_GENERAL, LABEL_HAZARD = 0, 1, 2
LABEL_NAMES = {LABEL_OTHER: "other", LABEL_GENERAL: "general-fact", LABEL_HAZARD: "hazard-fact"}


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    rows = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: invalid JSON ({e.msg})") from e
    return rows


def load_corpus(source: str | Path, text_field: str = "text", limit: int | None = None,
                split: str = "train") -> list[dict[str, Any]]:
    """Load documents from a JSONL/JSON/Parquet file, a world corpus, or a hub dataset.

    Args:
        source: a file path; ``WORLD_DIR:corpus_name`` (e.g. ``runs/world:forget``); or
            ``hf:owner/name[:config]`` (needs the ``hf`` extra and network).
        text_field: the field holding the document text.
        limit: keep at most this many documents.
        split: split name for hub datasets.
    """
    s = str(source)
    if s.startswith("hf:"):
        try:
            import datasets
        except ImportError as e:
            raise ImportError("loading hub corpora needs the `hf` extra: "
                              "pip install 'magic-unlearn[hf]'") from e
        parts = s[3:].split(":")
        ds = datasets.load_dataset(parts[0], parts[1] if len(parts) > 1 else None, split=split)
        docs = [{"id": str(i), "text": r[text_field]} for i, r in enumerate(ds)]
        return docs[:limit] if limit else docs
    if ":" in s and not Path(s).exists():
        world_dir, name = s.rsplit(":", 1)
        s = str(Path(world_dir) / "corpora" / f"{name}.jsonl")
    path = Path(s)
    if not path.exists():
        raise FileNotFoundError(f"corpus {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd  # optional: parquet support comes with pandas+pyarrow

        rows = pd.read_parquet(path).to_dict("records")
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
    else:
        rows = load_jsonl(path)
    docs = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or text_field not in r:
            raise ValueError(f"{path}: record {i + 1} has no '{text_field}' field "
                             f"(each record needs a text field; set text_field= to rename)")
        if not isinstance(r[text_field], str):
            raise ValueError(f"{path}: record {i + 1} field '{text_field}' must be a string")
        d = dict(r)
        d.setdefault("id", str(i))
        d["id"] = str(d["id"])
        if text_field != "text":
            d["text"] = d.pop(text_field)
        docs.append(d)
    if not docs:
        raise ValueError(f"{path}: corpus is empty")
    return docs[:limit] if limit else docs


@dataclass
class TokenizedCorpus:
    """Fixed-length token rows for a corpus.

    Attributes:
        input_ids: (N, L) long.
        attention_mask: (N, L) long, 1 on real tokens (BOS/EOS included).
        loss_mask: (N, L) float, 1 where token j is a training target (j >= 1, not padding).
        labels: (N, L) long ground-truth token labels (world only, else -1); -1 on BOS/EOS/pad.
        fact_ids: (N, L) long fact ids, -1 where none.
        doc_ids: N document ids.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    labels: torch.Tensor
    fact_ids: torch.Tensor
    doc_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def subset(self, idx: list[int] | torch.Tensor) -> TokenizedCorpus:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return TokenizedCorpus(self.input_ids[idx_t], self.attention_mask[idx_t],
                               self.loss_mask[idx_t], self.labels[idx_t], self.fact_ids[idx_t],
                               [self.doc_ids[i] for i in idx_t.tolist()])

    def content_hash(self) -> str:
        from magic_unlearn.io import bytes_hash

        return bytes_hash(self.input_ids.numpy().tobytes() + self.attention_mask.numpy().tobytes())


def tokenize_corpus(docs: list[dict[str, Any]], tokenizer: Any, max_length: int = 128,
                    add_bos: bool = True, add_eos: bool = True) -> TokenizedCorpus:
    """Tokenize documents into (N, max_length) rows, truncating long documents."""
    if not docs:
        raise ValueError("cannot tokenize an empty corpus")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bos = tokenizer.bos_token_id if add_bos else None
    eos = tokenizer.eos_token_id if add_eos else None
    n = len(docs)
    ids = torch.full((n, max_length), pad, dtype=torch.long)
    am = torch.zeros((n, max_length), dtype=torch.long)
    lab = torch.full((n, max_length), -1, dtype=torch.long)
    fid = torch.full((n, max_length), -1, dtype=torch.long)
    enc = tokenizer([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
    for i, (d, toks) in enumerate(zip(docs, enc, strict=True)):
        lbl = d.get("labels")
        fids = d.get("fact_ids")
        if lbl is not None and len(lbl) != len(toks):
            raise ValueError(f"document {d['id']}: {len(lbl)} labels for {len(toks)} tokens; "
                             f"labels must align with the tokenizer that built the world")
        row: list[int] = ([bos] if bos is not None else []) + list(toks)
        off = 1 if bos is not None else 0
        if eos is not None:
            row.append(eos)
        row = row[:max_length]
        L = len(row)
        ids[i, :L] = torch.tensor(row)
        am[i, :L] = 1
        if lbl is not None:
            k = min(len(lbl), max_length - off)
            lab[i, off:off + k] = torch.tensor(lbl[:k])
            if fids is not None:
                fid[i, off:off + k] = torch.tensor(fids[:k])
    loss_mask = am.clone().float()
    loss_mask[:, 0] = 0.0
    return TokenizedCorpus(ids, am, loss_mask, lab, fid, [d["id"] for d in docs])


def per_token_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-position next-token NLL aligned to targets: out[:, j] = -log p(x_j | x_<j); out[:, 0] = 0.

    Returns:
        (B, L) float tensor.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, L-1)
    return torch.cat([torch.zeros_like(nll[:, :1]), nll], dim=1)
