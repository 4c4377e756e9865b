"""The interface of an unlearning (or fine-tuning) method: a small loss object with hooks.

:func:`magic_unlearn.unlearn.loop.train_loop` drives a method as::

    method.setup(model, data, cfg)          # once, on the base model, before adapters / DDP
    cfg.layers = cfg.layers or method.trainable_layers              # when the config names none
    cfg.target_modules = cfg.target_modules or method.trainable_modules
    method.on_train_start(model)            # after adapters / freezing / FSDP sharding
    params = trainable model params + method.trainable_parameters()
    DDP(find_unused_parameters=method.find_unused_parameters)
    loss, logs = method(model, batch, step, total_steps)            # every micro-step
    checkpoint: trainable model params + method.trainable_state()

Every hook has a default here, so the loop calls them directly and a method overrides only
what it needs.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.tensors import Batch

if TYPE_CHECKING:  # typing only: the loop imports this module (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


class Method(abc.ABC):
    """Base of every loss object.

    Attributes:
        name: the registry name (set by :func:`~magic_unlearn.unlearn.methods.register_method`).
        trainable_layers: decoder layers to train when the loop config names none (None: all).
            May be set in :meth:`setup` (it can depend on the model's depth).
        trainable_modules: module-name components to train when the loop config names none
            (e.g. ``["mlp"]``; None: all).
        find_unused_parameters: DDP flag; True for methods that leave parameters without
            gradient in a step (e.g. only some layers' hidden states enter the loss).
        ref: the frozen reference copy made in :meth:`setup`, if the method keeps one (the
            ``retain_kl`` regulariser shares it instead of copying the model again).
        default_weights: the score -> token-weight transform (a name of
            :data:`~magic_unlearn.unlearn.weights.SEED_CONFIGS`) used when an unlearning run is
            given score artifacts but no ``weights`` setting. ``hazard_teach`` (the default):
            the forget loss applies to hazard proponents in proportion to how much they teach
            hazard. None: the method has no sensible default and the run must set ``weights``.
        shard_frozen: under FSDP the loop shards the frozen copies (:meth:`frozen_models`) like
            the trained model, so no rank holds a whole extra model; False for methods that call
            parts of a frozen copy outside its forward (a lens on its final norm and head).
    """

    name: ClassVar[str] = "method"
    trainable_layers: list[int] | None = None
    trainable_modules: list[str] | None = None
    find_unused_parameters: bool = False
    ref: nn.Module | None = None
    default_weights: ClassVar[str | None] = "hazard_teach"
    shard_frozen: bool = True

    def setup(  # noqa: B027 - an optional hook: a no-op unless overridden
        self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig
    ) -> None:
        """Prepare state once, on the base model, before adapters / DDP (frozen copies,
        control vectors, lenses). ``cfg`` is the loop config (``cfg.seed``)."""

    def on_train_start(self, model: nn.Module) -> None:  # noqa: B027 - optional, no-op
        """Called after adapters / freezing / sharding, before the optimizer is built."""

    def frozen_models(self) -> list[nn.Module]:
        """The frozen model copies this method runs (default: :attr:`ref`, if any)."""
        return [self.ref] if self.ref is not None else []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Extra tensors the optimizer trains besides the model's (default none)."""
        return []

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Extra trained tensors to checkpoint, by name (default none)."""
        return {}

    @abc.abstractmethod
    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch and its log terms.

        Args:
            model: the model being trained (possibly LoRA-wrapped).
            batch: corpus name -> micro-batch (see :mod:`.tensors`).
            step / total_steps: the optimizer step (0-based) and the run's length, for
                coefficient schedules.

        Returns:
            ``(loss, {term: float})``.
        """
