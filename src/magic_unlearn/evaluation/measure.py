"""A differentiable multiple-choice measurement: the mean NLL of the correct answers.

MAGIC attributes this loss to training tokens, so it must be a plain function of the model's
forward: no ``.item()``, no in-place ops on parameters, usable under
``torch.func.functional_call``. ``mcq_loss`` gives the same numbers as
``EvalResult.mean_correct_loss`` (same prompts, same rows, same positions).

One row per question: lm-eval's input ``(ctx + correct_cont)[-(L + 1):][:-1]``; the logits at
``target_mask`` positions predict the correct continuation's tokens (``target_ids``). In the
letter format that is the single position before " X", so the loss is
-log p(correct letter token) over the full vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from magic_unlearn.evaluation.evaluator import _log_softmax, forward_logits, pad_token_id
from magic_unlearn.evaluation.prompts import (
    build_requests,
    encode_requests,
    model_max_length,
    model_row,
)
from magic_unlearn.evaluation.tasks import FORMATS, Task, as_task


@dataclass
class MCQBatch:
    """Tensors for the correct-answer loss of Q questions.

    Attributes:
        input_ids: (Q, L) long, right padded.
        attention_mask: (Q, L) long, 1 on real tokens (the loss does not need it: padding is
            on the right of every scored position).
        target_ids: (Q, L) long; at a scored position j, the token the logits at j predict.
        target_mask: (Q, L) float, 1 at scored positions.
        answers: (Q,) long gold choice index.
        choice_ids: (Q, C) long ids of the single-token continuations, read at ``last_pos``;
            None unless every continuation is one token (letter format, usually).
        last_pos: (Q,) long, the last scored position of each row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    answers: torch.Tensor
    choice_ids: torch.Tensor | None
    last_pos: torch.Tensor
    fmt: str = "letter"

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device) -> MCQBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return MCQBatch(**kw)

    def select(self, idx: list[int] | torch.Tensor) -> MCQBatch:
        """Rows ``idx``, with padding trimmed to the longest selected row."""
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.input_ids.device)
        L = int(self.attention_mask[idx_t].sum(1).max())
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[idx_t]
                if f.name in ("input_ids", "attention_mask", "target_ids", "target_mask"):
                    v = v[:, :L]
            kw[f.name] = v
        return MCQBatch(**kw)

    def chunks(self, size: int) -> list[MCQBatch]:
        """Consecutive sub-batches of at most ``size`` rows (for memory-bounded loops)."""
        return [
            self.select(list(range(s, min(s + size, len(self))))) for s in range(0, len(self), size)
        ]


def build_mcq_batch(
    tokenizer: Any,
    questions: Task | list[dict[str, Any]],
    fmt: str | None = None,
    add_special_tokens: bool | None = None,
    prepend_bos: bool | None = None,
    max_length: int | None = None,
    model: nn.Module | None = None,
) -> MCQBatch:
    """Tokenize questions into an :class:`MCQBatch` (same prompts as ``evaluate``).

    Args:
        tokenizer: the model's tokenizer.
        questions: a :class:`Task` (its descriptions, few-shot and BOS settings are used) or a
            list of question dicts.
        fmt: ``letter`` or ``cloze``; default the task's.
        add_special_tokens, prepend_bos: as in ``evaluate``.
        max_length: context window for left truncation (as lm-eval); default from ``model``
            as ``evaluate`` does, else the tokenizer's ``model_max_length``, else 2048. Only
            prompts longer than that are affected.
        model: the model (only read for its context window).
    """
    task = as_task(questions)
    fmt = fmt or task.default_fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    pb = task.prepend_bos if prepend_bos is None else prepend_bos
    max_length = max_length or model_max_length(model, tokenizer)
    enc = encode_requests(tokenizer, build_requests(task, fmt), add_special_tokens, pb)
    Q = len(task.questions)
    rows = []
    for i, q in enumerate(task.questions):
        rows.append(model_row(enc.contexts[i], enc.continuations[i][q["answer"]], max_length))
    L = max(len(r[0]) for r in rows)
    ids = torch.full((Q, L), pad_token_id(tokenizer), dtype=torch.long)
    am = torch.zeros((Q, L), dtype=torch.long)
    tid = torch.zeros((Q, L), dtype=torch.long)
    tmask = torch.zeros((Q, L), dtype=torch.float32)
    last = torch.zeros(Q, dtype=torch.long)
    for i, (inp, st, n) in enumerate(rows):
        ids[i, : len(inp)] = torch.tensor(inp)
        am[i, : len(inp)] = 1
        cont = enc.continuations[i][task.questions[i]["answer"]]
        tid[i, st : st + n] = torch.tensor(cont)
        tmask[i, st : st + n] = 1.0
        last[i] = st + n - 1
    choice_ids = None
    if enc.single_token:
        choice_ids = torch.tensor([[c[0] for c in cs] for cs in enc.continuations])
    answers = torch.tensor([q["answer"] for q in task.questions], dtype=torch.long)
    return MCQBatch(ids, am, tid, tmask, answers, choice_ids, last, fmt)


def mcq_loss(model: nn.Module, batch: MCQBatch, reduction: str = "mean") -> torch.Tensor:
    """Correct-answer NLL of each question, reduced.

    Args:
        model: a causal LM (may be called under ``torch.func.functional_call``).
        batch: from :func:`build_mcq_batch`, on the model's device.
        reduction: ``mean`` (scalar), ``sum`` (scalar) or ``none`` ((Q,) tensor).

    Returns:
        The loss, differentiable with respect to the model's parameters.
    """
    pos = batch.target_mask.nonzero()[:, 1]
    lo, hi = int(pos.min()), int(pos.max()) + 1
    keep = torch.arange(lo, hi, device=batch.input_ids.device)  # (K,)
    logp = _log_softmax(forward_logits(model, batch.input_ids, keep))  # (Q, K, V)
    tok = logp.gather(-1, batch.target_ids[:, lo:hi, None]).squeeze(-1)  # (Q, K)
    nll = -(tok * batch.target_mask[:, lo:hi].to(tok.dtype)).sum(-1)  # (Q,)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


class Measurement:
    """A named eval loss ``f(model)``: the mean correct-answer NLL of a question set.

    Example:
        >>> m = Measurement("hazard_qa", build_mcq_batch(tok, task))
        >>> loss = m(model)  # scalar tensor with a graph
    """

    def __init__(self, name: str, batch: MCQBatch, microbatch: int | None = None) -> None:
        self.name = name
        self.batch = batch
        self.microbatch = microbatch

    @classmethod
    def from_task(
        cls,
        tokenizer: Any,
        task: Task | list[dict[str, Any]],
        fmt: str | None = None,
        name: str | None = None,
        **kw: Any,
    ) -> Measurement:
        t = as_task(task)
        return cls(name or t.name, build_mcq_batch(tokenizer, t, fmt, **kw))

    def to(self, device: str | torch.device) -> Measurement:
        self.batch = self.batch.to(device)
        return self

    def __len__(self) -> int:
        return len(self.batch)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """Mean correct-answer NLL (scalar, differentiable)."""
        if not self.microbatch or self.microbatch >= len(self.batch):
            return mcq_loss(model, self.batch)
        # sum of chunk sums / Q: the same mean, lower peak memory (graph kept per chunk)
        total = sum(mcq_loss(model, b, reduction="sum") for b in self.batch.chunks(self.microbatch))
        return total / len(self.batch)

    def __repr__(self) -> str:
        return f"Measurement({self.name!r}, n={len(self.batch)}, fmt={self.batch.fmt!r})"
