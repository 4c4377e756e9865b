"""The pinned host chunk pool of attribution/store.py: states packed into fixed-size chunks
(aligned, non-overlapping views of the right shapes and dtypes, large tensors in blocks of
whole chunks), chunks given back to the process pool and reused without pinning again."""

from __future__ import annotations

import pytest
import torch

from magic_unlearn.attribution import store


@pytest.fixture
def pool(monkeypatch):
    """A 1 KiB chunk size and a counting stand-in for page-locking (no CUDA on this machine)."""
    pinned: list[int] = []

    def fake_pin(size: int) -> torch.Tensor:
        pinned.append(size)
        return torch.zeros(size, dtype=torch.uint8)

    monkeypatch.setattr(store, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(store, "_pin", fake_pin)
    monkeypatch.setattr(store, "_PINNED_POOL", {})
    return pinned


def _state() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(10, generator=g),  # 40 B
        torch.randn(7, 3, generator=g).bfloat16(),  # 42 B
        torch.randint(0, 9, (5,), generator=g),  # int64, 40 B
        torch.randn(300, generator=g),  # 1200 B > one chunk: a block of 2 chunks
        torch.randn(2, 100, generator=g).double(),  # 1600 B: a block of 2 chunks
        torch.randn(200, generator=g),  # 800 B: does not fit after the first three
    ]


def test_views_are_shaped_aligned_and_disjoint(pool) -> None:
    ts = _state()
    st = store._PinnedState(ts)
    assert [(v.shape, v.dtype) for v in st.views] == [(t.shape, t.dtype) for t in ts]
    # small tensors share 1 KiB chunks (the first three in one, the 800 B one in a second);
    # the two large ones get 2 KiB blocks of their own
    assert sorted(pool) == [1024, 1024, 2048, 2048]
    assert [c.numel() for c in st.chunks] == pool
    for v in st.views:
        (base,) = [c for c in st.chunks if 0 <= v.data_ptr() - c.data_ptr() < c.numel()]
        off = v.data_ptr() - base.data_ptr()
        assert off % 256 == 0 and off + v.numel() * v.element_size() <= base.numel()
    for v, t in zip(st.views, ts, strict=True):
        v.copy_(t)
    for v, t in zip(st.views, ts, strict=True):  # no view overwrote another
        assert torch.equal(v, t)
    assert st.pin_s >= 0


def test_released_chunks_are_reused_without_pinning_again(pool) -> None:
    first = store._PinnedState(_state())
    n = len(pool)
    first.release()
    assert first.chunks == [] and first.views == []
    assert sum(len(v) for v in store._PINNED_POOL.values()) == n
    assert store.pinned_pool_bytes() == sum(pool)  # every chunk is idle, in bytes
    second = store._PinnedState(_state())
    assert len(pool) == n  # every chunk came from the pool
    assert sum(len(v) for v in store._PINNED_POOL.values()) == 0
    for v, t in zip(second.views, _state(), strict=True):
        v.copy_(t)
        assert torch.equal(v, t)
    second.release()
    store.release_pinned_memory()
    assert store._PINNED_POOL == {} and store.pinned_pool_bytes() == 0
    store._PinnedState(_state())
    assert len(pool) == 2 * n  # after release_pinned_memory, chunks are pinned anew


def test_nbytes_counts_every_dtype() -> None:
    ts = _state()
    assert store.nbytes(ts) == 40 + 42 + 40 + 1200 + 1600 + 800
