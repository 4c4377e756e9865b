"""attack_metagradient: d f(theta_K) / d theta_0 against finite differences of retraining (float64)."""

from __future__ import annotations

import pytest
import torch

from magic_unlearn.attribution import (
    LoraSpec,
    TrajectoryConfig,
    attack_metagradient,
    batch_order,
    per_token_loss,
    train_trajectory,
)
from magic_unlearn.attribution.trajectory import use_exact_attention
from magic_unlearn.models import build_model
from test_attribution import TINY, V, f_heldout, make_corpus


def cfg_for(opt: str, **kw) -> TrajectoryConfig:
    base = dict(
        optimizer=opt,
        lr={"adamw": 0.01}.get(opt, 0.05),
        steps=4,
        batch_size=2,
        dtype="float64",
        schedule="cosine",
        warmup_steps=1,
        weight_decay=0.1,
        eps=1e-4,
        checkpointing="sqrt",
        storage="gpu",
    )
    base.update(kw)
    return TrajectoryConfig(**base)


def f_after(model: torch.nn.Module, corpus, cfg: TrajectoryConfig) -> float:
    m = train_trajectory(model, corpus, cfg)
    with torch.no_grad():
        return float(f_heldout(m))


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adamw"])
def test_metagradient_matches_finite_differences(opt: str) -> None:
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    corpus = make_corpus()
    cfg = cfg_for(opt)
    val, grads = attack_metagradient(model, corpus, f_heldout, cfg)
    assert val == pytest.approx(f_after(model, corpus, cfg), rel=1e-12)
    params = list(model.parameters())
    assert [g.shape for g in grads] == [p.shape for p in params]
    assert all(g.dtype == torch.float64 for g in grads)
    # directional derivatives along random unit directions touching every tensor (AdamW's
    # normalisation is sharply curved: a perturbation of norm 1e-6 keeps FD in its linear range)
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(2):
        dirs = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
        norm = sum(float((d * d).sum()) for d in dirs) ** 0.5
        dirs = [d / norm for d in dirs]
        pred = sum(float((g * d).sum()) for g, d in zip(grads, dirs, strict=True))
        vals = []
        for sign in (1.0, -1.0):
            m = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
            with torch.no_grad():
                for p, d in zip(m.parameters(), dirs, strict=True):
                    p.add_(sign * eps * d)
            vals.append(f_after(m, corpus, cfg))
        ref = (vals[0] - vals[1]) / (2 * eps)
        assert abs(ref) > 1e-4, "degenerate check: the directional derivative is ~0"
        assert abs(pred - ref) / abs(ref) <= 1e-5, (opt, pred, ref)


def test_metagradient_of_a_single_sgd_step_by_hand() -> None:
    """One SGD step theta_1 = theta_0 - lr g(theta_0): d f(theta_1)/d theta_0 =
    (I - lr H) grad f(theta_1), with H the Hessian of the training loss (checked with autograd)."""
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    corpus = make_corpus()
    cfg = cfg_for("sgd", steps=1, schedule="constant", warmup_steps=0, weight_decay=0.0)
    _, grads = attack_metagradient(model, corpus, f_heldout, cfg)
    # by hand: theta_1 as a differentiable function of theta_0
    rows = batch_order(len(corpus), cfg)[0]
    ids, lm = corpus.input_ids[rows], corpus.loss_mask[rows].double()
    am = corpus.attention_mask[rows]
    m = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    use_exact_attention(m)  # the engine's float64 softmax, as in the run
    params = list(m.parameters())
    loss = (per_token_loss(m, ids, am) * lm).sum() / lm.sum()
    g = torch.autograd.grad(loss, params, create_graph=True)
    theta1 = [p - cfg.lr * gi for p, gi in zip(params, g, strict=True)]
    names = [n for n, _ in m.named_parameters()]

    class At(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = m.config

        def forward(self, **kw):  # noqa: ANN003, ANN201
            return torch.func.functional_call(m, dict(zip(names, theta1, strict=True)), (), kw)

    f1 = f_heldout(At())
    ref = torch.autograd.grad(f1, params)
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_metagradient_refuses_lora() -> None:
    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    cfg = cfg_for("sgd", lora=LoraSpec(r=2, alpha=4))
    with pytest.raises(ValueError, match="lora must be None"):
        attack_metagradient(model, make_corpus(), f_heldout, cfg)
