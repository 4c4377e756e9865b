"""What attribution differentiates: measurements, i.e. named eval losses ``f(model)``.

A measurement is any callable ``model -> scalar tensor`` computed from the model's parameters
(differentiable, outside ``torch.no_grad``). Question sets become measurements through
:func:`build_measurements` (EVAL's :class:`~magic_unlearn.evaluation.Measurement`: the mean NLL
of the correct answers), the one place where the CLI (``magic-unlearn attribute``), the pipeline's
attribute stage and ``validate lds`` turn query names into measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from magic_unlearn.evaluation.measure import Measurement
from magic_unlearn.evaluation.tasks import load_task
from magic_unlearn.io import bytes_hash

MeasureFn = Callable[[nn.Module], Tensor]
"""A measurement: ``f(model)`` -> scalar eval loss, differentiable in the model's parameters."""

QUERY_INFO_KEYS = ("task", "fmt", "n_questions", "hash")


def build_measurements(
    tokenizer: Any,
    queries: Sequence[str],
    *,
    world: str | Path | Any | None = None,
    fmt: str | None = None,
    limit: int | None = None,
    source: str | None = None,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    recorded: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Measurement]:
    """``{name: Measurement}`` for question-set names or question files.

    The defaults are the ones ``evaluate`` uses, so a measurement is the loss that the eval
    stage reports for the same question set:

    - format: ``fmt``, else the format recorded for the query (``recorded``), else the task's
      own default (``cloze`` for world question sets, ``letter`` for benchmarks);
    - length: prompts are left-truncated (as lm-eval) to the context window of ``model``
      (``evaluation.model_max_length``: its config's ``n_positions`` /
      ``max_position_embeddings`` / ``n_ctx``), else the tokenizer's, else 2048.

    Args:
        tokenizer: the model's tokenizer.
        queries: task names (``hazard_qa``, ``general_qa``, ``wmdp_bio``, ``mmlu``, ...) or
            question files; each becomes one measurement under that name.
        world: world folder or ``World`` (world question sets).
        fmt: ``letter`` | ``cloze`` | None (see above).
        limit: first N questions per task.
        source: question source (``load_task``).
        model: the model the measurements are for (only its context window is read).
        device: where the question tensors go.
        recorded: query -> info recorded in a score artifact (``meta["queries"]``), to rebuild
            the measurements an artifact was scored with: the recorded task and format are used,
            a question file whose stem is a recorded name takes that name, and the number of
            questions must match the recorded one.

    Raises:
        ValueError: a recorded query loads a different number of questions.
    """
    recorded = recorded or {}
    out: dict[str, Measurement] = {}
    for q in queries:
        name, info = q, dict(recorded.get(q) or {})
        if q not in recorded and Path(q).is_file() and Path(q).stem in recorded:
            name, info = Path(q).stem, {**(recorded[Path(q).stem] or {}), "task": q}
        task = load_task(str(info.get("task") or q), source=source, limit=limit, world=world)
        m = Measurement.from_task(
            tokenizer, task, fmt=fmt or info.get("fmt"), name=name, model=model
        )
        if info.get("n_questions") is not None and len(m) != int(info["n_questions"]):
            raise ValueError(
                f"query {name!r}: the artifact scored {info['n_questions']} questions "
                f"but {len(m)} were loaded; use the same question set"
            )
        out[name] = m.to(device) if device is not None else m
    return out


def query_info(name: str, fn: MeasureFn) -> dict[str, Any]:
    """``{task, fmt, n_questions, hash}`` of a measurement, as score artifacts record it.

    Read from attributes of those names, else from an EVAL ``Measurement``'s question batch;
    a plain function gives ``{}``.
    """
    info: dict[str, Any] = {}
    for key in QUERY_INFO_KEYS:
        v = getattr(fn, key, None)
        if v is not None and isinstance(v, (str, int, float)):
            info[key] = v
    batch = getattr(fn, "batch", None)
    if batch is not None and hasattr(batch, "input_ids"):
        info.setdefault("task", getattr(fn, "name", name))
        info.setdefault("fmt", getattr(batch, "fmt", None))
        info.setdefault("n_questions", int(batch.input_ids.shape[0]))
        blob = batch.input_ids.cpu().numpy().tobytes()
        if hasattr(batch, "target_ids"):
            blob += batch.target_ids.cpu().numpy().tobytes()
        info.setdefault("hash", bytes_hash(blob))
    return info


def queries_info(
    measurements: Mapping[str, MeasureFn], given: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """``{name: query info}``: ``given[name]`` where present, else :func:`query_info`."""
    given = given or {}
    return {
        q: dict(given[q]) if q in given else query_info(q, fn) for q, fn in measurements.items()
    }


__all__ = ["MeasureFn", "build_measurements", "queries_info", "query_info"]
