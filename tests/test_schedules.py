"""The one learning-rate schedule module, checked against closed forms."""

from __future__ import annotations

import math

import pytest

from magic_unlearn.schedules import lr_factor


def test_constant_ignores_warmup_and_warmup_ramps() -> None:
    assert [lr_factor(t, 10, "constant", warmup_steps=4) for t in range(3)] == [1.0, 1.0, 1.0]
    assert [lr_factor(t, 10, "warmup", warmup_steps=4) for t in range(6)] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]


@pytest.mark.parametrize("lo", [0.0, 0.1])
def test_decays_reach_the_floor_at_the_last_step(lo: float) -> None:
    total, w = 12, 2
    for t in range(w, total + 3):
        frac = min(1.0, (t - w) / (total - w))
        assert lr_factor(t, total, "linear", w, lo) == pytest.approx(1 - (1 - lo) * frac)
        cos = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))
        assert lr_factor(t, total, "cosine", w, lo) == pytest.approx(cos)
    assert lr_factor(0, total, "cosine", w, lo) == pytest.approx(0.5)


def test_unknown_schedule_is_named() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule 'step'"):
        lr_factor(0, 10, "step")
