"""Run lm-evaluation-harness on a :class:`Task`, for compatibility checks and benchmarks.

Needs the ``lmeval`` extra (``pip install 'magic-unlearn[lmeval]'``). The task is written as a
local lm-eval task YAML over a JSONL copy of the questions, in the same letter / cloze templates
as lm-eval's ``mmlu`` and ``mmlu_continuation`` tasks, so both harnesses see the same prompts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from magic_unlearn.evaluation.tasks import Task, as_task

_DOC_TO_TEXT = {
    "letter": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}"
    "\nD. {{choices[3]}}\nAnswer:",
    "cloze": "Question: {{question.strip()}}\nAnswer:",
}
_DOC_TO_CHOICE: dict[str, Any] = {"letter": ["A", "B", "C", "D"], "cloze": "{{choices}}"}


def write_lmeval_task(
    task: Task | list[dict[str, Any]], fmt: str, folder: str | Path, name: str | None = None
) -> str:
    """Write ``{name}.yaml`` and its data into ``folder``; returns the lm-eval task name.

    The description is rendered per question into a ``_desc`` field, so multi-subject tasks
    keep their per-subject description line.
    """
    task = as_task(task)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = name or f"mu_{task.name}_{fmt}"
    subjects = task.subjects
    data = folder / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for q in task.questions:
            f.write(
                json.dumps(
                    {
                        "question": q["question"],
                        "choices": q["choices"],
                        "answer": q["answer"],
                        "subject": q["subject"],
                        "_desc": task.description(fmt, q["subject"]),
                    }
                )
                + "\n"
            )
    cfg: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "description": "{{_desc}}",
        "doc_to_text": _DOC_TO_TEXT[fmt],
        "doc_to_choice": _DOC_TO_CHOICE[fmt],
        "doc_to_target": "answer" if fmt == "letter" else "{{answer}}",
        "num_fewshot": task.num_fewshot,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    if task.num_fewshot:
        if len(subjects) != 1:
            raise ValueError(
                "lm-eval's first_n sampler takes the first k of one pool: "
                "write one task per subject for k-shot comparisons"
            )
        pool = task.fewshot_examples(subjects[0])
        dev = folder / f"{name}_dev.jsonl"
        with open(dev, "w", encoding="utf-8") as f:
            for q in pool:
                f.write(
                    json.dumps(
                        {
                            "question": q["question"],
                            "choices": q["choices"],
                            "answer": q["answer"],
                            "subject": q["subject"],
                            "_desc": "",
                        }
                    )
                    + "\n"
                )
        cfg["dataset_kwargs"]["data_files"]["dev"] = str(dev.resolve())
        cfg["fewshot_split"] = "dev"
        cfg["fewshot_config"] = {"sampler": "first_n"}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def run_lmeval(
    model: Any,
    tokenizer: Any,
    task: Task | list[dict[str, Any]],
    fmt: str,
    batch_size: int = 32,
    device: str | None = None,
    workdir: str | Path | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Evaluate with lm-eval's ``HFLM`` + ``simple_evaluate`` on a local copy of ``task``.

    Args:
        model: a model object, or a saved model folder that lm-eval loads itself (``dtype``).
        tokenizer: a tokenizer object, or a folder (default: the model folder).

    Returns:
        ``{"acc", "acc_norm", "predictions", "predictions_norm", "loglikelihoods",
        "requests", "seconds"}`` with per-question lists in question order; ``requests`` holds
        the (context, continuation) strings lm-eval scored.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ImportError(
            "run_lmeval needs the `lmeval` extra: pip install 'magic-unlearn[lmeval]'"
        ) from e
    task = as_task(task)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        name = write_lmeval_task(task, fmt, tmp)
        if isinstance(model, (str, Path)):  # a saved folder: lm-eval loads it itself
            lm = HFLM(
                pretrained=str(model),
                tokenizer=str(tokenizer or model),
                dtype=dtype,
                batch_size=batch_size,
                device=device or "cpu",
            )
        else:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        tm = TaskManager(include_path=tmp, include_defaults=False)
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=[name],
            task_manager=tm,
            num_fewshot=task.num_fewshot or None,
            log_samples=True,
            bootstrap_iters=0,
        )
        seconds = time.perf_counter() - t0
    samples = sorted(out["samples"][name], key=lambda s: s["doc_id"])
    ll = np.array([[float(r[0]) for r in s["filtered_resps"]] for s in samples])
    lens = np.array(
        [
            [float(len(c)) for c in (["A", "B", "C", "D"] if fmt == "letter" else q["choices"])]
            for q in task.questions
        ]
    )
    res = out["results"][name]
    requests = []
    for s in samples:
        args = s["arguments"]
        if isinstance(args, dict):  # some versions log {"gen_args_i": {"arg_0": .., "arg_1": ..}}
            args = [(a["arg_0"], a["arg_1"]) for a in args.values()]
        requests.append([(str(a[0]), str(a[1])) for a in args])
    return {
        "requests": requests,
        "acc": float(res["acc,none"]),
        "acc_norm": float(res["acc_norm,none"]),
        "predictions": np.argmax(ll, axis=1).tolist(),
        "predictions_norm": np.argmax(ll / lens, axis=1).tolist(),
        "loglikelihoods": ll.tolist(),
        "seconds": seconds,
    }
