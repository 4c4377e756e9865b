"""The one LoRA configuration of the library (MAGIC trajectories, unlearning, attacks).

:class:`LoraSpec` says what to adapt; :func:`apply_lora` wraps a model with peft adapters.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class LoraSpec:
    """LoRA adapters (peft, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    Attributes:
        r: adapter rank.
        alpha: scaling numerator (the update is ``alpha / r * B @ A``).
        dropout: dropout on the adapter input.
        target_modules: module-name components to adapt (e.g. ``["query_key_value"]``); None
            uses the caller's default (peft's for the architecture, or every linear layer).
        init: peft's ``init_lora_weights``: ``"default"`` (B = 0, the standard start) or
            ``"gaussian"`` (both random, small).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None
    init: str = "default"

    def __post_init__(self) -> None:
        if int(self.r) < 1:
            raise ValueError(f"LoraSpec.r={self.r!r} is invalid; use an integer >= 1")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoraSpec.dropout={self.dropout!r} is invalid; use 0 <= dropout < 1")


def apply_lora(model: nn.Module, spec: LoraSpec, target_modules: list[str] | None = None) -> Any:
    """``model`` wrapped with peft adapters per ``spec`` (a ``peft.PeftModel``).

    Args:
        model: a Hugging Face model.
        spec: the adapters.
        target_modules: overrides ``spec.target_modules`` (e.g. the full names a caller resolved).
    """
    from peft import LoraConfig, get_peft_model  # peft is heavy to import; only LoRA runs pay it

    init: Any = True if spec.init in ("default", "true", True) else spec.init
    cfg = LoraConfig(
        r=int(spec.r),
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=target_modules if target_modules is not None else spec.target_modules,
        bias="none",
        init_lora_weights=init,
    )
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` property while
        # wrapping; the FutureWarning is about peft's code, not anything a user can change
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        return get_peft_model(model, cfg)


__all__ = ["LoraSpec", "apply_lora"]
