"""Sharpness-aware unlearning: the forget objective at its worst-case nearby weights.

Fan et al. 2025, "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware
Minimization Perspective and Beyond": relearning is a small weight perturbation that lowers the
forget NLL, so unlearning should hold in a neighbourhood. SAM's one-step inner maximisation:

    delta = rho * grad l_f(theta) / ||grad l_f(theta)||,    step on grad l_f(theta + delta)
                                                             + retain_coef * grad l_r(theta)

where l_f is a base method's forget objective (it rises toward relearning) and l_r the retain
NLL at the unperturbed weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import get_method, register_method
from magic_unlearn.unlearn.methods.tensors import Batch, log_value, nll, token_mean

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


def sam_perturbation(grads: list[torch.Tensor | None], rho: float) -> list[torch.Tensor | None]:
    """``rho * g / ||g||`` with ``||g||`` the global L2 norm over every tensor (None stays)."""
    sq = sum(float((g.double() ** 2).sum()) for g in grads if g is not None)
    norm = sq**0.5
    scale = rho / max(norm, 1e-12)
    return [None if g is None else g * scale for g in grads]


def linear_surrogate(
    params: list[nn.Parameter], grads: list[torch.Tensor | None], value: torch.Tensor
) -> torch.Tensor:
    """A scalar whose value is ``value`` and whose gradient w.r.t. ``params`` is ``grads``:
    ``sum <p, g> + (value - sum <p, g>)`` with the correction detached. Lets a method hand the
    training loop a gradient computed elsewhere (at perturbed weights, or through a run)."""
    terms = [
        (p * g.detach().to(p.dtype)).sum()
        for p, g in zip(params, grads, strict=True)
        if g is not None
    ]
    lin = torch.stack(terms).sum() if terms else value.detach() * 0
    return lin + (value.detach().to(lin.dtype) - lin.detach())


@register_method("sam")
class SAM(Method):
    """Sharpness-aware unlearning: a base method's forget loss taken at the adversarially
    perturbed weights theta + rho g/||g|| plus retain NLL at theta (Fan et al. 2025, "Towards LLM
    Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization Perspective and
    Beyond").

    Args:
        base: the registered method whose loss on the forget batch alone is the forget
            objective (``npo``, ``ga``, ``simnpo``, ``rr``, ...).
        base_kwargs: its constructor arguments.
        rho: perturbation radius (global L2 norm over the trained tensors).
        retain_coef: weight of the retain NLL at the unperturbed weights (needs a retain corpus
            when > 0).
    """

    def __init__(
        self,
        base: str = "npo",
        base_kwargs: dict[str, Any] | None = None,
        rho: float = 0.01,
        retain_coef: float = 1.0,
    ) -> None:
        if base == "sam":
            raise ValueError("sam: base cannot be 'sam'")
        if rho < 0:
            raise ValueError(f"sam: rho={rho} must be >= 0")
        self.base = get_method(base, **(base_kwargs or {}))
        self.rho, self.retain_coef = float(rho), float(retain_coef)

    @property
    def trainable_layers(self) -> list[int] | None:  # type: ignore[override]
        return self.base.trainable_layers

    @property
    def trainable_modules(self) -> list[str] | None:  # type: ignore[override]
        return self.base.trainable_modules

    @property
    def find_unused_parameters(self) -> bool:  # type: ignore[override]
        return self.base.find_unused_parameters

    @property
    def ref(self) -> nn.Module | None:  # type: ignore[override]
        return self.base.ref

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("sam runs single-process (its inner gradient is not synchronised)")
        if self.retain_coef > 0 and "retain" not in data:
            raise ValueError("sam: retain_coef > 0 needs a 'retain' corpus (or retain_coef: 0)")
        self.base.setup(model, data, cfg)

    def on_train_start(self, model: nn.Module) -> None:
        self.base.on_train_start(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.base.trainable_parameters()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.base.trainable_state()

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        params = [p for p in model.parameters() if p.requires_grad]
        params += self.base.trainable_parameters()
        fb = {"forget": batch["forget"]}  # the base's forget objective alone
        f0, _ = self.base(model, fb, step, total_steps)
        g0 = torch.autograd.grad(f0, params, allow_unused=True)
        delta = sam_perturbation(list(g0), self.rho)
        moved = [
            (p, p.detach().clone()) for p, d in zip(params, delta, strict=True) if d is not None
        ]
        with torch.no_grad():
            for p, d in zip(params, delta, strict=True):
                if d is not None:
                    p.add_(d.to(p.dtype))
        try:
            f1, logs = self.base(model, fb, step, total_steps)
            g1 = torch.autograd.grad(f1, params, allow_unused=True)
        finally:  # back to theta exactly (theta + d - d is not theta in floating point)
            with torch.no_grad():
                for p, p0 in moved:
                    p.copy_(p0)
        loss = linear_surrogate(params, list(g1), f1)
        logs = {**logs, "forget_at_theta": log_value(f0), "forget_at_perturbed": log_value(f1)}
        if self.retain_coef > 0:
            r = token_mean(nll(model, batch["retain"]), batch["retain"])
            logs["nll_retain"] = log_value(r)
            loss = loss + self.retain_coef * r
        return loss, logs
