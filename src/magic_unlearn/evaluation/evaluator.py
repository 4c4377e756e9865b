"""Batched log-likelihood scoring of multiple-choice questions, matching lm-evaluation-harness.

Every (question, choice) pair is scored as lm-eval's ``HFLM._loglikelihood_tokens`` scores it:
sum of log p(continuation tokens | context). Two paths give the same numbers:

* fast path: when every continuation of a question is a single token (" A".." D" for nearly all
  tokenizers), one forward of the context gives all four scores at the last position;
* full path: one row per (question, choice), the continuation tokens scored at their positions.

Rows are sorted by length, right padded, and run without an attention mask: with causal
attention, right padding never reaches a real position (lm-eval does the same). Only the logits
that are read are computed (``logits_to_keep``), and log-softmax runs in float32 at least.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from magic_unlearn.evaluation.prompts import (
    build_requests,
    doc_to_choices,
    encode_requests,
    model_max_length,
    model_row,
)
from magic_unlearn.evaluation.tasks import FORMATS, Task, as_task
from magic_unlearn.models import resolve_device


@dataclass
class EvalResult:
    """Accuracy and per-question details of one evaluation.

    Attributes:
        task, fmt, n, num_fewshot: what was evaluated.
        acc: mean accuracy over all questions (for MMLU this is the micro average over
            subjects, as lm-eval's ``mmlu`` group reports it).
        acc_norm: cloze only: accuracy when each log-likelihood is divided by the character
            length of its choice (lm-eval's ``acc_norm``); None for the letter format.
        acc_stderr: lm-eval's standard error of ``acc`` (None for one question).
        acc_macro: unweighted mean of the per-subject accuracies.
        mean_correct_loss: mean of ``correct_loss``.
        per_subject: subject -> {"n", "acc", ["acc_norm"], "mean_correct_loss"}.
        predictions: argmax choice per question (first on ties, as numpy / lm-eval).
        predictions_norm: cloze only, argmax of the length-normalised scores.
        answers, subjects: gold answer and subject per question.
        correct_loss: per question NLL of the correct answer: letter, -log p(correct letter
            token) over the full vocabulary at the last position; cloze, the summed NLL of the
            correct continuation's tokens.
        loglikelihoods: per question, the four choice log-likelihoods.
        fast_path: number of questions scored with one forward each.
        seconds: wall time of the scoring.
        source: where the questions came from (a file, a folder, ``hf:...``, ``world:...``).
    """

    task: str
    fmt: str
    n: int
    num_fewshot: int
    acc: float
    acc_norm: float | None
    acc_stderr: float | None
    acc_macro: float
    mean_correct_loss: float
    per_subject: dict[str, dict[str, float]]
    predictions: list[int]
    predictions_norm: list[int] | None
    answers: list[int]
    subjects: list[str]
    correct_loss: list[float]
    loglikelihoods: list[list[float]]
    fast_path: int
    seconds: float
    source: str = ""

    def to_dict(self, per_question: bool = False) -> dict[str, Any]:
        """Summary metrics (plus per-question lists when ``per_question``)."""
        d = asdict(self)
        if not per_question:
            for k in (
                "predictions",
                "predictions_norm",
                "answers",
                "subjects",
                "correct_loss",
                "loglikelihoods",
            ):
                d.pop(k)
        return d

    def question_rows(self) -> list[dict[str, Any]]:
        """One record per question (ids and numbers only, never question text)."""
        rows = []
        for i in range(self.n):
            r: dict[str, Any] = {
                "index": i,
                "subject": self.subjects[i],
                "answer": self.answers[i],
                "prediction": self.predictions[i],
                "correct": self.predictions[i] == self.answers[i],
                "correct_loss": self.correct_loss[i],
                "loglikelihoods": self.loglikelihoods[i],
            }
            if self.predictions_norm is not None:
                r["prediction_norm"] = self.predictions_norm[i]
            rows.append(r)
        return rows

    def summary(self) -> str:
        """A one-line summary."""
        s = f"{self.task} [{self.fmt}, {self.num_fewshot}-shot] n={self.n} acc={self.acc:.4f}"
        if self.acc_norm is not None:
            s += f" acc_norm={self.acc_norm:.4f}"
        return s + f" correct_loss={self.mean_correct_loss:.4f}"


# ------------------------------------------------------------------------------------------
# model calls


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_logits(model: nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at the sequence positions ``keep`` only.

    Args:
        model: a causal LM returning ``.logits``.
        input_ids: (B, L) right-padded ids.
        keep: (K,) sorted positions.

    Returns:
        (B, K, V) logits, in the model's dtype.
    """
    if _accepts_logits_to_keep(model):
        # the LM head runs on K positions instead of L: saves B*L*V logits of memory
        return model(input_ids=input_ids, logits_to_keep=keep).logits  # (B, K, V)
    return model(input_ids=input_ids).logits[:, keep]  # (B, K, V)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary, in float32 at least."""
    # bf16/fp16 log-probs lose ~3 digits; float64 models stay float64 for exact checks
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.log_softmax(logits, dim=-1)


def _pad(rows: list[list[int]], pad_id: int, device: torch.device) -> torch.Tensor:
    L = max(len(r) for r in rows)
    out = torch.full((len(rows), L), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def pad_token_id(tokenizer: Any) -> int:
    """The id used to right-pad rows: the tokenizer's pad token, else its EOS, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v)
    return 0


@torch.no_grad()  # not inference_mode: lazily cached buffers must stay usable in training
def _score_last(
    model: nn.Module,
    rows: list[list[int]],
    cand: list[list[int]],
    batch_size: int,
    device: torch.device,
    pad_id: int,
    pbar: Any,
) -> np.ndarray:
    """log p(cand[r][c] | rows[r]) at each row's last position: (R, C) float64."""
    out = np.zeros((len(rows), len(cand[0]) if cand else 0), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids = _pad([rows[i] for i in idx], pad_id, device)  # (B, L)
        last = torch.tensor([len(rows[i]) - 1 for i in idx], device=device)  # (B,)
        keep, inv = torch.unique(last, sorted=True, return_inverse=True)  # (K,), (B,)
        logits = forward_logits(model, ids, keep)  # (B, K, V)
        logp = log_softmax(logits[torch.arange(len(idx), device=device), inv])  # (B, V)
        c = torch.tensor([cand[i] for i in idx], device=device)  # (B, C)
        out[idx] = logp.gather(1, c).double().cpu().numpy()
        if pbar is not None:
            pbar.update(len(idx))
    return out


@torch.no_grad()
def _score_spans(
    model: nn.Module,
    rows: list[tuple[list[int], int, list[int]]],
    batch_size: int,
    device: torch.device,
    pad_id: int,
    pbar: Any,
) -> np.ndarray:
    """Sum of log p(cont tokens) for rows (input ids, first scored position, cont ids): (R,)."""
    out = np.zeros(len(rows), dtype=np.float64)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids = _pad([rows[i][0] for i in idx], pad_id, device)  # (B, L)
        lo = min(rows[i][1] for i in idx)
        hi = max(rows[i][1] + len(rows[i][2]) for i in idx)
        keep = torch.arange(lo, hi, device=device)  # (K,)
        logp = log_softmax(forward_logits(model, ids, keep))  # (B, K, V)
        tgt = torch.zeros((len(idx), hi - lo), dtype=torch.long)
        mask = torch.zeros((len(idx), hi - lo), dtype=torch.bool)
        for b, i in enumerate(idx):
            _, st, cont = rows[i]
            tgt[b, st - lo : st - lo + len(cont)] = torch.tensor(cont)
            mask[b, st - lo : st - lo + len(cont)] = True
        tok = logp.gather(-1, tgt.to(device)[..., None]).squeeze(-1)  # (B, K)
        # sum in the log-prob dtype, as lm-eval does; masked zeros leave the sum exact
        out[idx] = tok.masked_fill(~mask.to(device), 0.0).sum(-1).double().cpu().numpy()
        if pbar is not None:
            pbar.update(len(idx))
    return out


# ------------------------------------------------------------------------------------------
# evaluation


def _stderr(x: np.ndarray) -> float | None:
    n = len(x)
    return float(np.std(x, ddof=1) / math.sqrt(n)) if n > 1 else None


def score_choices(
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    fmt: str,
    batch_size: int = 32,
    device: torch.device | None = None,
    add_special_tokens: bool | None = None,
    prepend_bos: bool | None = None,
    max_length: int | None = None,
    fast: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """Log-likelihood of every choice of every question: ((Q, 4) float64, #fast-path questions).

    Args:
        fast: use one forward per question where all continuations are single tokens; False
            scores every (question, choice) row separately (used to check the fast path).
    """
    if device is None:
        device = next(model.parameters()).device
    max_len = max_length or model_max_length(model, tokenizer)
    pb = task.prepend_bos if prepend_bos is None else prepend_bos
    enc = encode_requests(tokenizer, build_requests(task, fmt), add_special_tokens, pb)
    Q = len(task.questions)
    ll = np.zeros((Q, 4), dtype=np.float64)
    fast_q = [i for i in range(Q) if fast and all(len(c) == 1 for c in enc.continuations[i])]
    fast_set = set(fast_q)
    slow_rows = [
        (i, c, model_row(enc.contexts[i], enc.continuations[i][c], max_len))
        for i in range(Q)
        if i not in fast_set
        for c in range(4)
    ]
    pbar = None
    if progress:
        pbar = tqdm(
            total=len(fast_q) + len(slow_rows), desc=f"eval {task.name} [{fmt}]", unit="row"
        )
    try:
        if fast_q:
            rows = [enc.contexts[i][-max_len:] for i in fast_q]
            cand = [[c[0] for c in enc.continuations[i]] for i in fast_q]
            ll[fast_q] = _score_last(
                model, rows, cand, batch_size, device, pad_token_id(tokenizer), pbar
            )
        if slow_rows:
            sums = _score_spans(
                model,
                [(inp, st, enc.continuations[i][c]) for i, c, (inp, st, _) in slow_rows],
                batch_size,
                device,
                pad_token_id(tokenizer),
                pbar,
            )
            for (i, c, _), v in zip(slow_rows, sums, strict=True):
                ll[i, c] = v
    finally:
        if pbar is not None:
            pbar.close()
    return ll, len(fast_q)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    task: Task | list[dict[str, Any]],
    fmt: str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    limit: int | None = None,
    progress: bool = False,
    add_special_tokens: bool | None = None,
    prepend_bos: bool | None = None,
    max_length: int | None = None,
    fast: bool = True,
) -> EvalResult:
    """Evaluate a causal LM on a multiple-choice task.

    Args:
        model: a Hugging Face causal LM (or anything returning ``.logits``); moved to
            ``device`` if given, put in eval mode for the call and restored after.
        tokenizer: its tokenizer (callable on a list of strings).
        task: a :class:`Task` or a list of question dicts (validated).
        fmt: ``letter`` or ``cloze``; default ``task.default_fmt``.
        batch_size: rows per forward.
        device: where to run; default the model's device.
        limit: evaluate only the first ``limit`` questions.
        progress: show a tqdm bar.
        add_special_tokens: passed to the tokenizer; None keeps its default (as lm-eval).
        prepend_bos: put BOS before each prompt; None uses ``task.prepend_bos``.
        max_length: context window for left truncation; default from the model config.
        fast: allow the one-forward-per-question path.
    """
    task = as_task(task)
    fmt = fmt or task.default_fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS}")
    if limit is not None:
        task = dataclasses.replace(task, questions=task.questions[:limit])
    if not task.questions:
        raise ValueError(f"task {task.name} has no questions")
    if device is not None:
        device = resolve_device(device)  # "auto" -> cuda if available
        model.to(device)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        ll, n_fast = score_choices(
            model,
            tokenizer,
            task,
            fmt,
            batch_size,
            device,
            add_special_tokens,
            prepend_bos,
            max_length,
            fast,
            progress,
        )
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0

    answers = np.array([q["answer"] for q in task.questions])
    subjects = [q["subject"] for q in task.questions]
    pred = np.argmax(ll, axis=1)
    correct = (pred == answers).astype(np.float64)
    closs = -ll[np.arange(len(answers)), answers]
    pred_norm = None
    correct_norm = None
    if fmt == "cloze":
        lens = np.array([[float(len(c)) for c in doc_to_choices(q, fmt)] for q in task.questions])
        pred_norm = np.argmax(ll / lens, axis=1)
        correct_norm = (pred_norm == answers).astype(np.float64)
    per_subject: dict[str, dict[str, float]] = {}
    subj_arr = np.array(subjects, dtype=object)
    for s in task.subjects:
        m = subj_arr == s
        d = {
            "n": int(m.sum()),
            "acc": float(correct[m].mean()),
            "mean_correct_loss": float(closs[m].mean()),
        }
        if correct_norm is not None:
            d["acc_norm"] = float(correct_norm[m].mean())
        per_subject[s] = d
    return EvalResult(
        task=task.name,
        fmt=fmt,
        n=len(answers),
        num_fewshot=task.num_fewshot,
        acc=float(correct.mean()),
        acc_norm=float(correct_norm.mean()) if correct_norm is not None else None,
        acc_stderr=_stderr(correct),
        acc_macro=float(np.mean([d["acc"] for d in per_subject.values()])),
        mean_correct_loss=float(closs.mean()),
        per_subject=per_subject,
        predictions=pred.tolist(),
        predictions_norm=pred_norm.tolist() if pred_norm is not None else None,
        answers=answers.tolist(),
        subjects=subjects,
        correct_loss=closs.tolist(),
        loglikelihoods=ll.tolist(),
        fast_path=n_fast,
        seconds=seconds,
        source=task.source,
    )
