"""The curve scorer: hazard and general MCQ accuracy + correct-answer loss of a model.

Built on :mod:`magic_unlearn.evaluation` (lm-eval-exact cloze / letter scoring). The question
sets are loaded and optionally subsampled once per run; the same subset scores every step of
every attack (and the references), so curves are comparable point by point.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from magic_unlearn.evaluation.evaluator import evaluate, pad_token_id
from magic_unlearn.evaluation.prompts import build_requests, encode_requests, model_max_length
from magic_unlearn.evaluation.tasks import load_task
from magic_unlearn.tamper.config import TamperEvalConfig
from magic_unlearn.tamper.fastscore import pack_task, packed_loglikelihoods, packed_metrics

# model -> {"hazard_acc", "hazard_loss", "general_acc", "general_loss", ...}
Scorer = Callable[[nn.Module], dict[str, float]]


class TimedScorer:
    """Wraps a scorer and accumulates the seconds spent in it (for the eval-overhead benchmark).

    Scores in eval mode without gradients and restores the model's train/eval mode.
    """

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = dict(self.scorer(model))
        model.train(was_training)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def load_tasks(ev: TamperEvalConfig, world: Any = None) -> tuple[Any, Any]:
    """(hazard task, general task) per ``ev``, each subsampled to ``ev.limit`` questions
    (seeded, order kept)."""
    out = []
    limits = (ev.limit, ev.general_limit if ev.general_limit is not None else ev.limit)
    for name, limit in zip((ev.hazard_task, ev.general_task), limits, strict=True):
        task = load_task(name, world=world)
        if limit is not None and len(task.questions) > limit:
            rng = np.random.default_rng(ev.seed)
            idx = np.sort(rng.choice(len(task.questions), size=limit, replace=False))
            task = dataclasses.replace(task, questions=[task.questions[i] for i in idx])
        out.append(task)
    return out[0], out[1]


def make_scorer(
    tokenizer: Any, hazard: Any, general: Any, fmt: str, batch_size: int = 64, packed: bool = True
) -> Scorer:
    """``model -> {hazard_acc, hazard_acc_norm, hazard_loss, general_acc, ...}``.

    Cloze questions are scored with :mod:`.fastscore` (packed rows, same numbers as
    ``evaluate``); letter questions, or rows too long for the model, through ``evaluate``.
    """
    packs: dict[tuple[str, int], Any] = {}

    def one(model: nn.Module, key: str, task: Any) -> dict[str, float | None]:
        if packed and fmt == "cloze":
            max_len = model_max_length(model, tokenizer)
            if (key, max_len) not in packs:
                packs[(key, max_len)] = pack_task(tokenizer, task, fmt, max_len)
            rows = packs[(key, max_len)]
            if rows is not None:
                ll = packed_loglikelihoods(model, rows, batch_size, pad_token_id(tokenizer))
                return packed_metrics(ll, rows)
        r = evaluate(model, tokenizer, task, fmt=fmt, batch_size=batch_size)
        return {"acc": r.acc, "acc_norm": r.acc_norm, "mean_correct_loss": r.mean_correct_loss}

    def score(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, task in (("hazard", hazard), ("general", general)):
            r = one(model, key, task)
            out[f"{key}_acc"] = float(r["acc"])  # type: ignore[arg-type]
            if r["acc_norm"] is not None:
                out[f"{key}_acc_norm"] = float(r["acc_norm"])
            out[f"{key}_loss"] = float(r["mean_correct_loss"])  # type: ignore[arg-type]
        return out

    return score


def prompt_rows(tokenizer: Any, task: Any, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask) of the task's question prompts (no answers)."""
    enc = encode_requests(tokenizer, build_requests(task, fmt), prepend_bos=task.prepend_bos)
    L = max(len(c) for c in enc.contexts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(enc.contexts), L), pad, dtype=torch.long)
    am = torch.zeros_like(ids)
    for i, c in enumerate(enc.contexts):
        ids[i, : len(c)] = torch.tensor(c)
        am[i, : len(c)] = 1
    return ids, am
