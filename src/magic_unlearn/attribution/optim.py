"""Functional optimisers with hand-written reverse steps (VJPs), and the trajectory's learning rates.

The training state is ``(params, buffers)``; ``step`` updates both in place, ``vjp`` maps the
adjoint of the state after step t to the adjoint of the state before it plus the adjoint of the
gradient g_t (which MAGIC then pushes through the model with one Hessian-vector product).
Optimiser state is part of the differentiated state (Engstrom et al. 2025, "Optimizing ML Training
with Metagradient Descent"). Conventions follow torch.optim: SGD/momentum use coupled L2 weight
decay (g + wd * p, buffer initialised at zero), AdamW decoupled decay with bias correction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.schedules import lr_factor


def adjoint_dtype(p: Tensor) -> torch.dtype:
    """Adjoints accumulate over the whole run: keep them in fp32 for half-precision params."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


def lr_at(cfg: TrajectoryConfig, t: int) -> float:
    """Learning rate of step t (0-based)."""
    return cfg.lr * lr_factor(t, cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio)


class FunctionalOptimizer:
    """SGD / momentum / AdamW as explicit maps on (params, buffers) with exact VJPs."""

    def __init__(self, cfg: TrajectoryConfig) -> None:
        self.cfg = cfg
        self.kind = cfg.optimizer

    @property
    def buffer_names(self) -> tuple[str, ...]:
        return {"sgd": (), "momentum": ("buf",), "adamw": ("m", "v")}[self.kind]

    def init_buffers(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Zero optimiser buffers, one list (parallel to params) per buffer name."""
        return [[torch.zeros_like(p) for p in params] for _ in self.buffer_names]

    def init_adjoint_buffers(self, params: list[Tensor]) -> list[list[Tensor]]:
        """Zero adjoints of the buffers, in at least fp32 (half-precision runs included)."""
        return [
            [torch.zeros_like(p, dtype=adjoint_dtype(p)) for p in params] for _ in self.buffer_names
        ]

    def _bias(self, t: int) -> tuple[float, float]:
        if not self.cfg.bias_correction:
            return 1.0, 1.0
        b1, b2 = self.cfg.betas
        return 1.0 - b1 ** (t + 1), 1.0 - b2 ** (t + 1)

    @torch.no_grad()
    def step(
        self, params: list[Tensor], bufs: list[list[Tensor]], grads: list[Tensor], t: int
    ) -> None:
        """theta_{t+1}, buffers_{t+1} <- U_t(theta_t, buffers_t, g_t), in place."""
        cfg = self.cfg
        lr, wd = lr_at(cfg, t), cfg.weight_decay
        # foreach kernels: one launch per op for all tensors (a ~160M model has ~150 tensors)
        if self.kind == "sgd":
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_add_(params, grads, alpha=-lr)
        elif self.kind == "momentum":
            buf = bufs[0]
            torch._foreach_mul_(buf, cfg.momentum)
            torch._foreach_add_(buf, grads)
            if wd:
                torch._foreach_add_(buf, params, alpha=wd)
            torch._foreach_add_(params, buf, alpha=-lr)
        else:
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
        """Reverse step t of the optimiser.

        Args:
            params, bufs: the state *before* step t (theta_t, buffers_t).
            grads: g_t (only AdamW needs it; None is fine for sgd/momentum).
            adj_p, adj_b: adjoints of theta_{t+1}, buffers_{t+1}; overwritten in place with the
                adjoints of theta_t, buffers_t through the optimiser map only (the model's
                d g_t / d theta_t term is added by the caller with an HVP).

            out: tensors to write the adjoint of g_t into (default: fresh tensors).

        Returns:
            The adjoint of g_t, one tensor per parameter (``out`` when given).
        """
        cfg = self.cfg
        lr, wd = lr_at(cfg, t), cfg.weight_decay
        gbar: list[Tensor] = []
        if self.kind == "sgd":
            # theta' = theta (1 - lr wd) - lr g
            if out is not None:
                torch._foreach_copy_(out, adj_p)
                torch._foreach_mul_(out, -lr)
                gbar = out
            else:
                gbar = torch._foreach_mul(adj_p, -lr)
            if wd:
                torch._foreach_mul_(adj_p, 1.0 - lr * wd)
        elif self.kind == "momentum":
            # b' = mu b + g + wd theta ; theta' = theta - lr b'
            big_b = adj_b[0]
            torch._foreach_add_(big_b, adj_p, alpha=-lr)  # total adjoint of b'
            if out is not None:
                torch._foreach_copy_(out, big_b)
                gbar = out
            else:
                gbar = torch._foreach_mul(big_b, 1.0)
            if wd:
                torch._foreach_add_(adj_p, big_b, alpha=wd)
            torch._foreach_mul_(big_b, cfg.momentum)
        else:
            if grads is None:
                raise ValueError("the AdamW reverse step needs g_t")
            b1, b2 = cfg.betas
            bc1, bc2 = self._bias(t)
            for _p, m, v, g, ap, am, av in zip(
                params, bufs[0], bufs[1], grads, adj_p, adj_b[0], adj_b[1], strict=False
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
                big_v = av.add_(ubar * (-(m1 / bc1) / (d * d)) * inv2s / bc2)
                gb = big_m * (1.0 - b1) + big_v * g * (2.0 * (1.0 - b2))
                if out is not None:
                    out[len(gbar)].copy_(gb)
                    gb = out[len(gbar)]
                gbar.append(gb)
                big_m.mul_(b1)
                big_v.mul_(b2)
                if wd:
                    ap.mul_(1.0 - lr * wd)
        return gbar
