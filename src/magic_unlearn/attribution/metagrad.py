"""Exact metagradient of a training run with respect to its initial parameters.

MAGIC's reverse pass (Engstrom et al. 2025, "Optimizing ML Training with Metagradient Descent")
carries the adjoint of the training state from theta_T back to theta_0; token scores are one
by-product of it, the adjoint of theta_0 is another. :func:`attack_metagradient` returns the
latter: ``d f(theta_K) / d theta_0`` where theta_K is the end of a K-step fine-tuning run
(e.g. a simulated tampering attack) started at theta_0. TAR (Tamirisa et al. 2025,
"Tamper-Resistant Safeguards for Open-Weight LLMs") needs exactly this gradient and
approximates it to first order; here it is exact (the same REPLAY and fused reverse step as
:func:`~magic_unlearn.attribution.magic.attribute`, optimiser state included).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.measurements import MeasureFn
from magic_unlearn.attribution.optim import adjoint_dtype, make_optimizer
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.reverse import ReverseState, ReverseStep
from magic_unlearn.attribution.store import StateStore
from magic_unlearn.attribution.trajectory import Batches, check_corpus, prepare_model
from magic_unlearn.data import TokenizedCorpus


def attack_metagradient(
    model: nn.Module,
    corpus: TokenizedCorpus,
    loss_fn: MeasureFn,
    cfg: TrajectoryConfig,
    progress: bool = False,
) -> tuple[float, list[Tensor]]:
    """``f(theta_K)`` and ``d f(theta_K) / d theta_0`` for the run ``train_trajectory(model,
    corpus, cfg)``.

    Args:
        model: the model at theta_0 (not modified: the run trains a copy cast to ``cfg.dtype``).
        corpus: the run's training rows (batches follow ``batch_order``, as in MAGIC).
        loss_fn: ``f(model) -> scalar`` evaluated at the end of the run (differentiable).
        cfg: the run (optimiser, lr schedule, steps, batch size); full-parameter training
            only (``cfg.lora`` must be None: adapters would leave theta_0 frozen).
        progress: tqdm bars for the forward and reverse passes.

    Returns:
        ``(f(theta_K), grads)``: ``grads[i]`` is the adjoint of ``list(model.parameters())[i]``
        (at least float32; float64 for a float64 run).

    Raises:
        ValueError: ``cfg.lora`` is set, the corpus has no target token, or ``loss_fn`` does not
            return a differentiable scalar.
    """
    if cfg.lora is not None:
        raise ValueError(
            "attack_metagradient differentiates with respect to every initial parameter; "
            "TrajectoryConfig.lora must be None (an adapter run keeps theta_0 frozen)"
        )
    check_corpus(corpus, cfg)
    run, params = prepare_model(model, cfg, inplace=False)
    device = params[0].device
    opt = make_optimizer(cfg)
    batches = Batches(corpus, cfg, device, params[0].dtype)
    with StateStore(cfg.storage, device, None) as store:
        replay = Replay(run, params, opt, batches, cfg, store)
        replay.forward(progress)
        val = loss_fn(run)
        if val.dim() != 0 or not val.requires_grad:
            raise ValueError(
                "attack_metagradient: loss_fn must return a scalar tensor computed from the "
                "model's parameters (outside torch.no_grad())"
            )
        grads = torch.autograd.grad(val, params, allow_unused=True)
        adj = [
            torch.zeros_like(p, dtype=adjoint_dtype(p))
            if g is None
            else g.detach().to(adjoint_dtype(p), copy=True)
            for p, g in zip(params, grads, strict=True)
        ]
        sdtype = torch.float64 if params[0].dtype == torch.float64 else torch.float32
        # the reverse step also accumulates per-token scores (d f / d w of the attack tokens);
        # they are a free by-product, not returned
        state = ReverseState(
            {"f": adj},
            {"f": opt.init_adjoint_buffers(params)},
            {"f": torch.zeros(corpus.input_ids.shape, dtype=sdtype, device=device)},
        )
        step = ReverseStep(replay)
        for t in replay.reverse_states(cfg.steps - 1):
            step(t, state)
    # the initial optimiser buffers are constants (zeros): the adjoint of theta_0 is complete
    return float(val.detach()), state.adj_params["f"]


__all__ = ["attack_metagradient"]
