"""The eval stage: load a model, evaluate tasks, write ``metrics.json`` + ``predictions.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magic_unlearn.config import save_config, to_dict
from magic_unlearn.evaluation.evaluator import EvalResult, evaluate
from magic_unlearn.evaluation.tasks import load_task
from magic_unlearn.io import atomic_dir, atomic_write_json, atomic_write_text, write_manifest
from magic_unlearn.models import load_model, load_tokenizer, resolve_device


@dataclass
class EvalConfig:
    """Config of ``magic-unlearn eval``.

    Attributes:
        model: HF model folder or hub id.
        tasks: task names or question files, comma separated (``hazard_qa,general_qa``).
        world: world folder for ``hazard_qa`` / ``general_qa``.
        source: local file/folder (or ``hf``) for the questions.
        format: ``letter`` or ``cloze``; None uses each task's default.
        limit: first N questions (per subject for ``mmlu`` / ``wmdp_bio_robust``).
        num_fewshot: k-shot examples (MMLU dev split).
        batch_size: rows per forward.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        dtype: model dtype (``float32``, ``bfloat16``, ...).
        tokenizer: tokenizer folder/id; default the model's.
        split: MMLU split.
        add_special_tokens: None keeps the tokenizer default (as lm-eval).
        prepend_bos: None uses the task's default (world tasks: on).
    """

    model: str = ""
    tasks: str = "hazard_qa"
    world: str | None = None
    source: str | None = None
    format: str | None = None
    limit: int | None = None
    num_fewshot: int = 0
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "float32"
    tokenizer: str | None = None
    split: str = "test"
    add_special_tokens: bool | None = None
    prepend_bos: bool | None = None

    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


def run_eval(
    cfg: EvalConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, EvalResult]:
    """Evaluate ``cfg.tasks``; with ``out``, write an eval artifact folder atomically.

    The folder holds ``metrics.json`` (``{"model", "tasks": {name: metrics}}``),
    ``predictions.jsonl`` (one record per question: task, index, subject, answer, prediction,
    correct, correct_loss, loglikelihoods; never question text), ``config.yaml`` and
    ``manifest.json``.
    """
    names = cfg.task_names()
    if not names:
        raise ValueError("no task given: --task NAME[,NAME...]")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    # load every task first: a bad question file fails before the model is loaded
    tasks = [
        load_task(
            n,
            source=cfg.source,
            limit=cfg.limit,
            num_fewshot=cfg.num_fewshot,
            world=cfg.world,
            split=cfg.split,
        )
        for n in names
    ]
    device = resolve_device(cfg.device)
    if model is None:
        if not cfg.model:
            raise ValueError("no model given: --model FOLDER_OR_HUB_ID")
        model = load_model(cfg.model, dtype=cfg.dtype, device=device)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    results: dict[str, EvalResult] = {}
    for task in tasks:
        results[task.name] = evaluate(
            model,
            tokenizer,
            task,
            fmt=cfg.format,
            batch_size=cfg.batch_size,
            device=device,
            progress=progress,
            add_special_tokens=cfg.add_special_tokens,
            prepend_bos=cfg.prepend_bos,
        )
    if out is not None:
        metrics = {"model": cfg.model, "tasks": {k: r.to_dict() for k, r in results.items()}}
        lines = []
        for name, r in results.items():
            for row in r.question_rows():
                lines.append(json.dumps({"task": name, "format": r.fmt, **row}))
        with atomic_dir(out, overwrite=overwrite) as tmp:
            atomic_write_json(tmp / "metrics.json", metrics)
            atomic_write_text(tmp / "predictions.jsonl", "\n".join(lines) + "\n")
            save_config(cfg, tmp / "config.yaml")
            write_manifest(
                tmp,
                "eval",
                inputs={"model": cfg.model, "tasks": {t.name: t.source for t in tasks}},
                extra={"config": to_dict(cfg)},
            )
    return results


def format_table(results: dict[str, EvalResult], per_subject: bool = False) -> str:
    """A plain-text table of the results, then the questions each task scored (file, folder,
    ``world:NAME`` or ``hf:ID``)."""
    head = (
        f"{'task':<28} {'format':<7} {'shots':>5} {'n':>6} {'acc':>7} {'acc_norm':>8} {'loss':>8}"
    )
    lines = [head, "-" * len(head)]

    def row(
        name: str, fmt: str, k: Any, n: int, acc: float, accn: float | None, loss: float
    ) -> str:
        an = f"{accn:8.4f}" if accn is not None else f"{'-':>8}"
        return f"{name:<28} {fmt:<7} {k!s:>5} {n:>6} {acc:7.4f} {an} {loss:8.4f}"

    for name, r in results.items():
        lines.append(row(name, r.fmt, r.num_fewshot, r.n, r.acc, r.acc_norm, r.mean_correct_loss))
        if per_subject and len(r.per_subject) > 1:
            for s, d in r.per_subject.items():
                lines.append(
                    row(
                        "  " + s[:26],
                        "",
                        "",
                        d["n"],
                        d["acc"],
                        d.get("acc_norm"),
                        d["mean_correct_loss"],
                    )
                )
    lines.append("")
    lines += [f"{name} questions: {r.source or '-'}" for name, r in results.items()]
    return "\n".join(lines)
