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
from torch import Tensor

from magic_unlearn.io import bytes_hash

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


def world_of(source: str | Path | None) -> str | None:
    """The world folder of a ``WORLD_DIR:corpus_name`` source (one holding ``world.json``),
    else None: what world tasks default to when a command names only the corpus."""
    s = str(source or "")
    if ":" in s and not s.startswith("hf:") and not Path(s).exists():
        d = s.rsplit(":", 1)[0]
        if (Path(d) / "world.json").exists():
            return d
    return None


def load_corpus(
    source: str | Path, text_field: str = "text", limit: int | None = None, split: str = "train"
) -> list[dict[str, Any]]:
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
        try:  # optional (the `hf` extra), and slow to import
            import datasets
        except ImportError as e:
            raise ImportError(
                "loading hub corpora needs the `hf` extra: pip install 'magic-unlearn[hf]'"
            ) from e
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
            raise ValueError(
                f"{path}: record {i + 1} has no '{text_field}' field "
                f"(each record needs a text field; set text_field= to rename)"
            )
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
        return TokenizedCorpus(
            self.input_ids[idx_t],
            self.attention_mask[idx_t],
            self.loss_mask[idx_t],
            self.labels[idx_t],
            self.fact_ids[idx_t],
            [self.doc_ids[i] for i in idx_t.tolist()],
        )

    def content_hash(self) -> str:
        return bytes_hash(self.input_ids.numpy().tobytes() + self.attention_mask.numpy().tobytes())


def tokenize_corpus(
    docs: list[dict[str, Any]],
    tokenizer: Any,
    max_length: int = 128,
    add_bos: bool = True,
    add_eos: bool = True,
) -> TokenizedCorpus:
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
            raise ValueError(
                f"document {d['id']}: {len(lbl)} labels for {len(toks)} tokens; "
                f"labels must align with the tokenizer that built the world"
            )
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
            lab[i, off : off + k] = torch.tensor(lbl[:k])
            if fids is not None:
                fid[i, off : off + k] = torch.tensor(fids[:k])
    loss_mask = am.clone().float()
    loss_mask[:, 0] = 0.0
    return TokenizedCorpus(ids, am, loss_mask, lab, fid, [d["id"] for d in docs])


class TokenNLL(torch.autograd.Function):
    """Per-row NLL ``l_i = logsumexp(z_i) - z_{i, y_i}`` of logits z (n, V), twice differentiable.

    Autograd's generic double backward of ``cross_entropy(z.float())`` makes ~20 passes over the
    (n, V) logits (casts, log-softmax backward of backward, zero-filled slice grads); this one
    makes ~5 with the closed forms (see ``_TokenNLLGrad``). Accumulates in float32 (float64 for
    float64 logits); gradients come back in z's dtype, as autograd's cast would give them.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor) -> Tensor:
        acc = torch.promote_types(z.dtype, torch.float32)
        lse = torch.logsumexp(z.to(acc), dim=-1)  # (n,)
        nll = lse - z.gather(-1, y[:, None]).squeeze(-1).to(acc)
        ctx.save_for_backward(z, y, lse)
        return nll

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        z, y, lse = ctx.saved_tensors
        return _TokenNLLGrad.apply(z, y, lse, g), None


class _TokenNLLGrad(torch.autograd.Function):
    """dz = g_i (softmax(z_i) - e_{y_i}) and its VJP (the double backward of ``TokenNLL``).

    With p = softmax(z_i) and u the cotangent of dz_i: d/dz_i = g_i p (u - <p, u>) (the softmax
    Jacobian, which already includes the dependence through logsumexp, so ``lse`` is treated as
    a constant) and d/dg_i = <p, u> - u_{y_i}.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor, lse: Tensor, g: Tensor) -> Tensor:
        p = (z - lse[:, None]).exp_()  # (n, V) in lse's (accumulation) dtype
        p.mul_(g[:, None])
        p.scatter_add_(-1, y[:, None], -g[:, None].to(p.dtype))
        ctx.save_for_backward(z, y, lse, g)
        return p.to(z.dtype)

    @staticmethod
    def backward(ctx: Any, u: Tensor) -> tuple[Tensor, None, None, Tensor]:
        z, y, lse, g = ctx.saved_tensors
        p = (z - lse[:, None]).exp_()  # (n, V)
        pu = (p * u).sum(-1)  # (n,) <p, u>
        dg = pu - u.gather(-1, y[:, None]).squeeze(-1).to(pu.dtype)
        dz = (u - pu[:, None]).mul_(p).mul_(g[:, None])
        return dz.to(z.dtype), None, None, dg.to(g.dtype)


def per_token_nll(model: Any, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, L) next-token NLL aligned to targets: out[:, j] = -log p(x_j | x_<j); out[:, 0] = 0.

    Computed in float32 from half or float32 logits and in float64 from float64 logits (a float64
    model is an exactness check, so nothing is rounded to float32 on the way), and twice
    differentiable (MAGIC's reverse step differentiates its gradient); see ``TokenNLL``.
    ``attention_mask=None`` is exact for right-padded rows
    (``magic_unlearn.attribution.trajectory.right_padded``).

    Args:
        model, input_ids, attention_mask: a causal LM and its (B, L) inputs.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    b, n, v = logits.shape
    # every position predicts the next token; the last one's target is a dummy whose loss is
    # dropped below (slicing the logits instead would copy all of them)
    target = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # (B, L)
    nll = TokenNLL.apply(logits.reshape(b * n, v), target.reshape(-1)).view(b, n)  # (B, L)
    return torch.cat([torch.zeros_like(nll[:, :1]), nll[:, :-1]], dim=1)
