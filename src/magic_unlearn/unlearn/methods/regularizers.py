"""Regularisers that compose with any method (``get_method(..., l2sp=, retain_kl=,
retain_nll=)``), and :class:`Regularized`, the method + regularisers wrapper."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    frozen_copy,
    log_value,
    logits_kl,
    nll,
    token_mean,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


class L2SP(Method):
    """L2-SP: ``coef * sum ||theta - theta_0||^2`` over trainable tensors (Li et al. 2018,
    "Explicit Inductive Bias for Transfer Learning with Convolutional Networks")."""

    def __init__(self, coef: float) -> None:
        self.coef = coef
        self.anchor: list[tuple[nn.Parameter, torch.Tensor]] = []

    def on_train_start(self, model: nn.Module) -> None:
        # after adapters / freezing: anchor exactly the tensors that will move
        self.anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        d = sum(((p - p0) ** 2).sum() for p, p0 in self.anchor)
        return self.coef * d, {"l2sp": log_value(d)}


class RetainKL(Method):
    """``coef * KL(p_ref || p_theta)`` per retain token, averaged (the KL retain loss of TOFU,
    Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs")."""

    def __init__(self, coef: float) -> None:
        self.coef = coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        if "retain" not in data:
            raise ValueError("retain_kl needs a 'retain' corpus")
        if self.ref is None:
            self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch["retain"]
        v = token_mean(logits_kl(model, self.ref, b), b)  # (B, L) KL -> scalar
        return self.coef * v, {"kl_retain": log_value(v)}


class RetainNLL(Method):
    """``coef * NLL`` on retain tokens (the retain term of gradient difference, Liu et al. 2022,
    "Continual Learning and Private Unlearning")."""

    def __init__(self, coef: float) -> None:
        self.coef = coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        if "retain" not in data:
            raise ValueError("retain_nll needs a 'retain' corpus")

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        v = token_mean(nll(model, batch["retain"]), batch["retain"])
        return self.coef * v, {"reg_nll_retain": log_value(v)}


class Regularized(Method):
    """A method plus regularisers; loss = method loss + sum of regulariser terms.

    Every hook of the wrapped method passes through (layers, modules, DDP flag, reference copy,
    extra parameters and state), so wrapping never changes what trains.
    """

    def __init__(self, method: Method, regs: list[Method]) -> None:
        self.method, self.regs = method, regs

    # properties, not copies: the wrapped method may set them in its own setup (e.g. rmu)
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.method.name

    @property
    def trainable_layers(self) -> list[int] | None:  # type: ignore[override]
        return self.method.trainable_layers

    @property
    def trainable_modules(self) -> list[str] | None:  # type: ignore[override]
        return self.method.trainable_modules

    @property
    def find_unused_parameters(self) -> bool:  # type: ignore[override]
        return self.method.find_unused_parameters

    @property
    def ref(self) -> nn.Module | None:  # type: ignore[override]
        return self.method.ref

    @property
    def shard_frozen(self) -> bool:  # type: ignore[override]
        return self.method.shard_frozen and all(r.shard_frozen for r in self.regs)

    def frozen_models(self) -> list[nn.Module]:
        out: dict[int, nn.Module] = {}
        for obj in (self.method, *self.regs):
            out.update({id(m): m for m in obj.frozen_models()})
        return list(out.values())  # a shared copy once

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.method.setup(model, data, cfg)
        for r in self.regs:
            if isinstance(r, RetainKL) and self.method.ref is not None:
                r.ref = self.method.ref  # share the frozen copy instead of making another
            r.setup(model, data, cfg)

    def on_train_start(self, model: nn.Module) -> None:
        for obj in (self.method, *self.regs):
            obj.on_train_start(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.method.trainable_parameters()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.method.trainable_state()

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.method(model, batch, step, total_steps)
        logs = dict(logs)
        for r in self.regs:
            v, lg = r(model, batch, step, total_steps)
            loss = loss + v
            logs.update(lg)
        return loss, logs
