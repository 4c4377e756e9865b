"""The pinned host buffer pool of MAGIC's CPU checkpoints (``attribution/store.py``).

Issue 19: on 2 H200s the SGD run's pinned checkpoints stayed in the pool (and in the CUDA caching
host allocator) while the next run, of another layout, pinned its own; the host ran out of
memory. The pool now keeps one layout idle at most, and ``release_pinned_memory`` frees it all.
The CPU stands in for pinned memory here (``_pin_flat`` patched): what is checked is that the
buffers are really let go (weak references die), not how they are page-locked.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from magic_unlearn.attribution import store as store_mod
from magic_unlearn.attribution.store import StateStore, pinned_pool_bytes, release_pinned_memory


@pytest.fixture
def fake_pinning(monkeypatch: pytest.MonkeyPatch) -> dict:
    calls = {"pinned": 0, "emptied": 0}

    def pin(n: int, dtype: torch.dtype) -> torch.Tensor:
        calls["pinned"] += 1
        return torch.empty(n, dtype=dtype)

    def empty() -> None:
        calls["emptied"] += 1

    monkeypatch.setattr(store_mod, "_pin_flat", pin)
    monkeypatch.setattr(store_mod, "_empty_host_cache", empty)
    release_pinned_memory()
    yield calls
    release_pinned_memory()


def _take(store: StateStore, sizes: list[int]) -> list[weakref.ref]:
    """Host buffers for a state of float64 tensors of ``sizes``; weak references to the flats."""
    store._host_buffers([torch.zeros(n, dtype=torch.float64) for n in sizes])
    return [weakref.ref(t) for t in store.owned[-1].values()]


def _alive(refs: list[weakref.ref]) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


def test_pool_reuses_one_layout(fake_pinning: dict) -> None:
    with StateStore("cpu", torch.device("cpu")) as s:
        a = _take(s, [10, 30]) + _take(s, [10, 30])
    assert fake_pinning["pinned"] == 2  # one flat per (state, dtype)
    assert pinned_pool_bytes() == 2 * 40 * 8  # given back to the pool, still held
    assert _alive(a) == 2
    with StateStore("cpu", torch.device("cpu")) as s:
        _take(s, [10, 30])
    assert fake_pinning["pinned"] == 2  # taken from the pool, nothing new pinned


def test_other_layout_frees_the_idle_one_first(fake_pinning: dict) -> None:
    with StateStore("cpu", torch.device("cpu")) as s:
        a = _take(s, [10, 30]) + _take(s, [10, 30])
    with StateStore("cpu", torch.device("cpu")) as s:
        b = _take(s, [100])
        # the idle buffers of the first layout are gone before the new ones are pinned
        assert _alive(a) == 0
        assert pinned_pool_bytes() == 0
        assert fake_pinning["emptied"] >= 1
    assert _alive(b) == 1
    assert pinned_pool_bytes() == 100 * 8


def test_release_frees_everything(fake_pinning: dict) -> None:
    with StateStore("cpu", torch.device("cpu")) as s:
        a = _take(s, [10]) + _take(s, [20]) + _take(s, [10])
    assert _alive(a) == 3 and pinned_pool_bytes() > 0
    emptied = fake_pinning["emptied"]
    release_pinned_memory()
    assert _alive(a) == 0
    assert pinned_pool_bytes() == 0
    assert fake_pinning["emptied"] == emptied + 1  # the caching host allocator's blocks too


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_buffers_exact_size_async_copies_and_release() -> None:
    """On a GPU: buffers are page-locked at their exact size (no power-of-two rounding), async
    copies through them round-trip, and release unregisters them."""
    release_pinned_memory()
    dev = torch.device("cuda")
    n = 3 * 2**20 + 7  # far from a power of two
    t = store_mod._pin_flat(n, torch.bfloat16)
    assert t.is_pinned() and t.numel() == n
    registered = t.data_ptr() in store_mod._REGISTERED
    src = torch.randn(n, device=dev).to(torch.bfloat16)
    with StateStore("cpu", dev) as s:
        k = s.put([src])
        live = [torch.zeros_like(src)]
        s.load_into(k, live)
        torch.cuda.synchronize()
        assert torch.equal(live[0], src)
    assert pinned_pool_bytes() == n * 2
    release_pinned_memory()
    assert pinned_pool_bytes() == 0 and not store_mod._REGISTERED
    if registered:  # the cudaHostRegister path: unregistered memory is ordinary memory again
        assert not t.is_pinned()
