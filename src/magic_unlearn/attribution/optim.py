"""Trajectory optimisers: explicit update maps with hand-written reverse steps (VJPs), by name.

The training state is ``(params, buffers)``; ``step`` updates both in place, ``vjp`` maps the
adjoint of the state after step t to the adjoint of the state before it plus the adjoint of the
gradient g_t (which MAGIC then pushes through the model with one Hessian-vector product).
Optimiser state is part of the differentiated state (Engstrom et al. 2025, "Optimizing ML Training
with Metagradient Descent"). Conventions follow torch.optim: SGD/momentum use coupled L2 weight
decay (g + wd * p, buffer initialised at zero), AdamW decoupled decay with bias correction.

Adding an optimiser: subclass :class:`TrajectoryOptimizer`, decorate it with
``@register_optimizer("name")`` and ``TrajectoryConfig(optimizer="name")`` accepts it
(docs/extending.md; ``tests/test_attribution_optim.py`` checks every registered VJP against
finite differences of its ``step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from magic_unlearn.schedules import lr_factor

if TYPE_CHECKING:  # config.py validates names against OPTIMIZERS, so it imports this module
    from magic_unlearn.attribution.config import TrajectoryConfig

OPTIMIZERS: dict[str, type[TrajectoryOptimizer]] = {}


def register_optimizer(name: str) -> Callable[[type[TrajectoryOptimizer]], type]:
    """Class decorator adding a trajectory optimiser to :data:`OPTIMIZERS` under ``name``."""

    def deco(cls: type[TrajectoryOptimizer]) -> type[TrajectoryOptimizer]:
        if name in OPTIMIZERS and OPTIMIZERS[name] is not cls:
            raise ValueError(f"optimizer name {name!r} is already registered by {OPTIMIZERS[name]}")
        OPTIMIZERS[name] = cls
        cls.name = name
        return cls

    return deco


def make_optimizer(cfg: TrajectoryConfig) -> TrajectoryOptimizer:
    """The registered optimiser ``cfg.optimizer``, configured by ``cfg``."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"TrajectoryConfig.optimizer={cfg.optimizer!r} is not registered; "
            f"use one of {tuple(OPTIMIZERS)}"
        )
    return OPTIMIZERS[cfg.optimizer](cfg)


def adjoint_dtype(p: Tensor) -> torch.dtype:
    """Adjoints accumulate over the whole run: keep them in fp32 for half-precision params."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def lr_at(cfg: TrajectoryConfig, t: int) -> float:
    """Learning rate of step t (0-based)."""
    return cfg.lr * lr_factor(t, cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio)


class TrajectoryOptimizer:
    """An optimiser as an explicit map on (params, buffers), with its exact VJP.

    The contract (what the engine relies on):

    - Every list is parallel to ``params``; ``bufs[k][i]`` is buffer ``buffer_names[k]`` of
      parameter i. ``step`` and ``vjp`` are *elementwise*: parameter i's update reads only
      tensors of index i (no global norm, no cross-tensor reduction), so the engine may hand
      them any subset of the parameters, e.g. one rank's shards.
    - ``vjp`` must not assume that adjoints have the parameters' dtype: they are at least fp32
      (``adjoint_dtype``) and may be float64; upcast states to the adjoint's dtype.
    - Neither method may synchronise with the host per tensor beyond what torch's foreach ops do.

    Attributes:
        name: the registry name (set by :func:`register_optimizer`).
        buffer_names: optimiser state tensors per parameter (e.g. ``("m", "v")``).
        vjp_needs_grad: ``vjp`` reads g_t (AdamW); the reverse step then recomputes the training
            gradient before its HVP. Otherwise ``vjp`` gets ``grads=None``.
    """

    name: ClassVar[str] = ""
    buffer_names: ClassVar[tuple[str, ...]] = ()
    vjp_needs_grad: ClassVar[bool] = False

    def __init__(self, cfg: TrajectoryConfig) -> None:
        self.cfg = cfg

    def init_buffers(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Zero optimiser buffers, one list (parallel to params) per buffer name."""
        return [[torch.zeros_like(p) for p in params] for _ in self.buffer_names]

    def init_adjoint_buffers(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Zero adjoints of the buffers, in at least fp32 (half-precision runs included)."""
        return [
            [torch.zeros_like(p, dtype=adjoint_dtype(p)) for p in params] for _ in self.buffer_names
        ]

    def step(
        self, params: list[Tensor], bufs: list[list[Tensor]], grads: list[Tensor], t: int
    ) -> None:
        """theta_{t+1}, buffers_{t+1} <- U_t(theta_t, buffers_t, g_t), in place (no grad)."""
        raise NotImplementedError

    def vjp(
        self,
        params: list[Tensor],
        bufs: list[list[Tensor]],
        grads: list[Tensor] | None,
        t: int,
        adj_p: list[Tensor],
        adj_b: list[list[Tensor]],
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        """Reverse step t of the optimiser (no grad).

        Args:
            params, bufs: the state *before* step t (theta_t, buffers_t).
            grads: g_t when ``vjp_needs_grad``, else None.
            t: the step (0-based; the learning rate is ``lr_at(cfg, t)``).
            adj_p, adj_b: adjoints of theta_{t+1}, buffers_{t+1}; overwritten in place with the
                adjoints of theta_t, buffers_t through the optimiser map only (the model's
                d g_t / d theta_t term is added by the caller with an HVP).
            out: tensors to write the adjoint of g_t into (default: fresh tensors).

        Returns:
            The adjoint of g_t, one tensor per parameter (``out`` when given).
        """
        raise NotImplementedError


def _copy_out(src: list[Tensor], out: list[Tensor] | None, scale: float = 1.0) -> list[Tensor]:
    """``scale * src`` written into ``out`` (or into fresh tensors)."""
    if out is None:
        return torch._foreach_mul(src, scale)
    torch._foreach_copy_(out, src)
    if scale != 1.0:
        torch._foreach_mul_(out, scale)
    return out


# foreach kernels below: one launch per op for all tensors (a ~160M model has ~150 tensors)


@register_optimizer("sgd")
class SGD(TrajectoryOptimizer):
    """theta' = theta (1 - lr wd) - lr g (torch.optim.SGD without momentum)."""

    @torch.no_grad()
    def step(
        self, params: list[Tensor], bufs: list[list[Tensor]], grads: list[Tensor], t: int
    ) -> None:
        lr, wd = lr_at(self.cfg, t), self.cfg.weight_decay
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_add_(params, grads, alpha=-lr)

    @torch.no_grad()
    def vjp(
        self,
        params: list[Tensor],
        bufs: list[list[Tensor]],
        grads: list[Tensor] | None,
        t: int,
        adj_p: list[Tensor],
        adj_b: list[list[Tensor]],
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        lr, wd = lr_at(self.cfg, t), self.cfg.weight_decay
        gbar = _copy_out(adj_p, out, -lr)
        if wd:
            torch._foreach_mul_(adj_p, 1.0 - lr * wd)
        return gbar


@register_optimizer("momentum")
class Momentum(TrajectoryOptimizer):
    """Heavy ball, torch convention: b' = mu b + g + wd theta; theta' = theta - lr b'."""

    buffer_names = ("buf",)

    @torch.no_grad()
    def step(
        self, params: list[Tensor], bufs: list[list[Tensor]], grads: list[Tensor], t: int
    ) -> None:
        lr, wd = lr_at(self.cfg, t), self.cfg.weight_decay
        buf = bufs[0]
        torch._foreach_mul_(buf, self.cfg.momentum)
        torch._foreach_add_(buf, grads)
        if wd:
            torch._foreach_add_(buf, params, alpha=wd)
        torch._foreach_add_(params, buf, alpha=-lr)

    @torch.no_grad()
    def vjp(
        self,
        params: list[Tensor],
        bufs: list[list[Tensor]],
        grads: list[Tensor] | None,
        t: int,
        adj_p: list[Tensor],
        adj_b: list[list[Tensor]],
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        lr, wd = lr_at(self.cfg, t), self.cfg.weight_decay
        big_b = adj_b[0]
        torch._foreach_add_(big_b, adj_p, alpha=-lr)  # total adjoint of b'
        gbar = _copy_out(big_b, out)
        if wd:
            torch._foreach_add_(adj_p, big_b, alpha=wd)
        torch._foreach_mul_(big_b, self.cfg.momentum)
        return gbar


@register_optimizer("adamw")
class AdamW(TrajectoryOptimizer):
    """torch.optim.AdamW: decoupled weight decay, bias-corrected moments (``cfg.betas, eps``).

    ``cfg.adam_denominator="frozen"`` makes ``vjp`` hold sqrt(v_hat) + eps constant (an
    approximation with absolute semantics, see ``TrajectoryConfig``); the default is exact.
    """

    buffer_names = ("m", "v")
    vjp_needs_grad = True

    def _bias(self, t: int) -> tuple[float, float]:
        if not self.cfg.bias_correction:
            return 1.0, 1.0
        b1, b2 = self.cfg.betas
        return 1.0 - b1 ** (t + 1), 1.0 - b2 ** (t + 1)

    @torch.no_grad()
    def step(
        self, params: list[Tensor], bufs: list[list[Tensor]], grads: list[Tensor], t: int
    ) -> None:
        cfg = self.cfg
        lr, wd = lr_at(cfg, t), cfg.weight_decay
        b1, b2 = cfg.betas
        bc1, bc2 = self._bias(t)
        m, v = bufs
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        denom = torch._foreach_div(v, bc2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, cfg.eps)
        if wd:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_addcdiv_(params, m, denom, value=-lr / bc1)

    @torch.no_grad()
    def vjp(
        self,
        params: list[Tensor],
        bufs: list[list[Tensor]],
        grads: list[Tensor] | None,
        t: int,
        adj_p: list[Tensor],
        adj_b: list[list[Tensor]],
        out: list[Tensor] | None = None,
    ) -> list[Tensor]:
        if grads is None:
            raise ValueError("the AdamW reverse step needs g_t")
        cfg = self.cfg
        lr, wd = lr_at(cfg, t), cfg.weight_decay
        b1, b2 = cfg.betas
        bc1, bc2 = self._bias(t)
        frozen = cfg.adam_denominator == "frozen"
        gbar: list[Tensor] = []
        for i, (m, v, g, ap, am, av) in enumerate(
            zip(bufs[0], bufs[1], grads, adj_p, adj_b[0], adj_b[1], strict=True)
        ):
            # half-precision states are upcast: the M and V terms below nearly cancel where
            # |g| ~ eps, which bf16 cannot resolve
            m, v, g = m.to(ap.dtype), v.to(ap.dtype), g.to(ap.dtype)
            m1 = m * b1 + g * (1.0 - b1)  # m_{t+1}
            v1 = v * b2 + g * g * (1.0 - b2)  # v_{t+1}
            sv = (v1 / bc2).sqrt_()  # sqrt(v_hat)
            d = sv + cfg.eps
            ubar = ap * (-lr)  # adjoint of the update u = m_hat / d
            # du/dm' = 1 / (bc1 d); du/dv' = -m_hat / d^2 / (2 sqrt(v_hat) bc2), 0 where v = 0
            # (there m = 0 too and the exact limit of the product is 0)
            big_m = am.add_(ubar / (d * bc1))
            inv2s = torch.where(
                sv > 0, 0.5 / sv.clamp_min(torch.finfo(sv.dtype).tiny), torch.zeros_like(sv)
            )
            if frozen:  # sqrt(v_hat) + eps held at its recorded value: no path through v
                gb = big_m * (1.0 - b1)
                big_v = av
            else:
                big_v = av.add_(ubar * (-(m1 / bc1) / (d * d)) * inv2s / bc2)
                gb = big_m * (1.0 - b1) + big_v * g * (2.0 * (1.0 - b2))
            if out is not None:
                gb = out[i].copy_(gb)
            gbar.append(gb)
            big_m.mul_(b1)
            big_v.mul_(b2)
            if wd:
                ap.mul_(1.0 - lr * wd)
        return gbar


__all__ = [
    "OPTIMIZERS",
    "AdamW",
    "Momentum",
    "SGD",
    "TrajectoryOptimizer",
    "adjoint_dtype",
    "lr_at",
    "make_optimizer",
    "register_optimizer",
]
