"""CUDA-graph cache: eager fallback when capture fails (CPU-testable parts)."""

from __future__ import annotations

import pytest
import torch

from magic_unlearn.attribution import graphs


def test_disabled_cache_runs_eagerly() -> None:
    cache = graphs.GraphCache(enabled=False)
    x = torch.arange(3.0)
    out = cache.run("f", lambda a, b: [a + b], [x], [torch.ones(3)])
    torch.testing.assert_close(out[0], x + 1)
    assert not cache.graphs


def test_failed_capture_warns_and_falls_back(monkeypatch) -> None:
    """A capture error turns graphs off for good; results come from the eager call."""
    calls = []

    def broken(*a, **k):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "GraphedFn", broken)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    cache = graphs.GraphCache(enabled=True)

    def fn(a):
        calls.append(1)
        return [a * 2]

    with pytest.warns(UserWarning, match="capture of the train step failed"):
        out = cache.run("train", fn, [torch.ones(2)])
    torch.testing.assert_close(out[0], torch.full((2,), 2.0))
    assert not cache.enabled and "capturing" in cache.error
    assert cache.run("train", fn, [torch.ones(2)])[0].sum() == 4 and len(calls) == 2
