"""Trajectory optimisers: every registered VJP against finite differences of its step (float64),
and a newly registered optimiser running through MAGIC end to end."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from magic_unlearn.attribution import (
    OPTIMIZERS,
    TrajectoryConfig,
    TrajectoryOptimizer,
    attribute,
    lr_at,
    make_optimizer,
    per_token_loss,
    register_optimizer,
)
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import build_model


def _cfg(name: str, **kw) -> TrajectoryConfig:
    base = dict(
        optimizer=name,
        lr=0.1,
        steps=10,
        schedule="cosine",
        warmup_steps=2,
        weight_decay=0.1,
        eps=1e-3,
        dtype="float64",
    )
    base.update(kw)
    return TrajectoryConfig(**base)


def _dot(a: list[Tensor], b: list[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def _flat(bufs: list[list[Tensor]]) -> list[Tensor]:
    return [b for bl in bufs for b in bl]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_registered_vjp_matches_finite_differences(name: str) -> None:
    """<adj out, J d> (central differences of ``step``) = <VJP(adj out), d> for a random d."""
    g = torch.Generator().manual_seed(0)

    def rand(shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=g, dtype=torch.float64)

    shapes = [(3, 4), (5,)]
    opt = make_optimizer(_cfg(name))
    params = [rand(s) for s in shapes]
    bufs = opt.init_buffers(params)
    for s in range(3):  # a realistic state (AdamW: v > 0) from a few real steps
        opt.step(params, bufs, [rand(x) for x in shapes], s)
    grads = [rand(s) for s in shapes]
    t = 3

    def apply(p: list[Tensor], b: list[list[Tensor]], gr: list[Tensor]) -> list[Tensor]:
        p = [x.clone() for x in p]
        b = [[x.clone() for x in bl] for bl in b]
        opt.step(p, b, gr, t)
        return p + _flat(b)

    d_p, d_g = [rand(s) for s in shapes], [rand(s) for s in shapes]
    # buffers move relative to their size: AdamW's v is ~1e-3 here, and sqrt(v) is too curved
    # for an absolute step (the central difference would be off by ~1e-7 relative)
    d_b = [[rand(x.shape) * x.abs() for x in bl] for bl in bufs]
    h = 1e-6

    def shifted(sign: float) -> list[Tensor]:
        return apply(
            [p + sign * h * d for p, d in zip(params, d_p, strict=True)],
            [
                [x + sign * h * d for x, d in zip(bl, dl, strict=True)]
                for bl, dl in zip(bufs, d_b, strict=True)
            ],
            [x + sign * h * d for x, d in zip(grads, d_g, strict=True)],
        )

    jd = [(a - b) / (2 * h) for a, b in zip(shifted(1.0), shifted(-1.0), strict=True)]
    adj_p = [rand(s) for s in shapes]
    adj_b = [[rand(s) for s in shapes] for _ in bufs]
    lhs = _dot(adj_p + _flat(adj_b), jd)

    gin = grads if opt.vjp_needs_grad else None
    out = [torch.full(s, float("nan"), dtype=torch.float64) for s in shapes]
    a_p, a_b = [x.clone() for x in adj_p], [[x.clone() for x in bl] for bl in adj_b]
    gbar = opt.vjp(params, bufs, gin, t, a_p, a_b, out=out)
    assert all(a is b for a, b in zip(gbar, out, strict=True))  # written into ``out``
    rhs = _dot(a_p, d_p) + _dot(_flat(a_b), _flat(d_b)) + _dot(gbar, d_g)
    assert abs(lhs) > 1e-3
    assert abs(lhs - rhs) <= 1e-8 * abs(lhs), (name, lhs, rhs)
    # fresh output tensors give the same adjoint of g_t
    b_p, b_b = [x.clone() for x in adj_p], [[x.clone() for x in bl] for bl in adj_b]
    fresh = opt.vjp(params, bufs, gin, t, b_p, b_b)
    for x, y in zip(fresh, gbar, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


class _DoubledSGD(TrajectoryOptimizer):
    """theta' = theta - 2 lr g: SGD at twice the learning rate, written as a new optimiser."""

    @torch.no_grad()
    def step(self, params, bufs, grads, t) -> None:
        torch._foreach_add_(params, grads, alpha=-2 * lr_at(self.cfg, t))

    @torch.no_grad()
    def vjp(self, params, bufs, grads, t, adj_p, adj_b, out=None) -> list[Tensor]:
        gbar = torch._foreach_mul(adj_p, -2 * lr_at(self.cfg, t))
        if out is not None:
            torch._foreach_copy_(out, gbar)
            return out
        return gbar


@pytest.fixture
def doubled_sgd():
    register_optimizer("_doubled_sgd_test")(_DoubledSGD)
    try:
        yield "_doubled_sgd_test"
    finally:
        OPTIMIZERS.pop("_doubled_sgd_test", None)


def test_registered_optimizer_runs_through_magic(doubled_sgd: str) -> None:
    """A registered optimiser is a valid TrajectoryConfig.optimizer and MAGIC differentiates
    through it: doubled SGD at lr/2 gives SGD's scores at lr."""
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer(doubled_sgd)(type("Other", (TrajectoryOptimizer,), {}))
    V, N, L = 40, 6, 10
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (N, L), generator=gen)
    am = torch.ones(N, L, dtype=torch.long)
    lm = am.float()
    lm[:, 0] = 0
    neg = torch.full((N, L), -1)
    corpus = TokenizedCorpus(ids, am, lm, neg, neg.clone(), [str(i) for i in range(N)])
    held = torch.randint(4, V, (2, L), generator=gen)
    model = build_model(
        dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        vocab_size=V,
        dtype=torch.float64,
    )

    def f(m: torch.nn.Module) -> Tensor:
        return per_token_loss(m, held, None)[:, 1:].mean()

    kw = dict(steps=4, batch_size=2, weight_decay=0.0, checkpointing="sqrt")
    ref = attribute(model, corpus, {"f": f}, _cfg("sgd", lr=0.05, **kw), progress=False)
    got = attribute(model, corpus, {"f": f}, _cfg(doubled_sgd, lr=0.025, **kw), progress=False)
    assert ref.scores["f"].abs().max() > 0
    torch.testing.assert_close(got.scores["f"], ref.scores["f"], rtol=1e-9, atol=1e-12)
    assert got.meta["trajectory"]["optimizer"] == doubled_sgd
