"""Learning-rate schedules: the one place that turns (step, schedule) into a multiplier of lr.

Pretraining, the unlearning / attack loop and MAGIC's differentiated trajectory all call
:func:`lr_factor`, so a schedule means the same thing in every stage.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "warmup", "linear", "cosine")


def lr_factor(
    step: int,
    total: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total``.

    ``constant``: 1 (no warmup, even if ``warmup_steps`` is set). ``warmup``: linear warmup
    ``(step + 1) / warmup_steps``, then 1. ``linear`` / ``cosine``: the same warmup, then a
    linear / half-cosine decay from 1 to ``min_lr_ratio``, reached at step ``total`` (clamped).

    Args:
        step: the optimizer step (0-based).
        total: number of optimizer steps of the run.
        schedule: one of :data:`SCHEDULES`.
        warmup_steps: linear warmup length (0: none).
        min_lr_ratio: floor of the decay, as a fraction of the peak.

    Raises:
        ValueError: an unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; use one of {list(SCHEDULES)}")
    w = warmup_steps
    if schedule != "constant" and w > 0 and step < w:
        return (step + 1) / w
    if schedule in ("constant", "warmup"):
        return 1.0
    frac = min(1.0, max(0.0, (step - w) / max(1, total - w)))
    lo = min_lr_ratio
    if schedule == "linear":
        return 1.0 - (1.0 - lo) * frac
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * frac))


__all__ = ["SCHEDULES", "lr_factor"]
