"""Supervised fine-tuning: the plain token-weighted NLL objective.

It is the stabilisation phase of ``two_phase``, the score-weighted SFT recipes (a negative token
weight turns its term into gradient ascent) and the tamper stage's fine-tuning attacks.
"""

from __future__ import annotations

import torch
from torch import nn

from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import register_method
from magic_unlearn.unlearn.methods.tensors import Batch, log_value, nll, token_mean


@register_method("sft")
class SFT(Method):
    """Plain (token-weighted) next-token NLL; the fine-tuning / relearning objective (the
    causal language-modelling loss of Radford et al. 2018, "Improving Language Understanding by
    Generative Pre-Training").

    Args:
        corpora: which corpora of the batch to train on (default: all), averaged.
    """

    # a weight here is a training target (negative = ascent), not "how much to forget": score
    # artifacts need an explicit transform (the recipes value_weighted, sign_only, ...)
    default_weights = None

    def __init__(self, corpora: list[str] | None = None) -> None:
        self.corpora = corpora

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        names = self.corpora or list(batch)
        missing = [c for c in names if c not in batch]
        if missing:
            raise ValueError(f"sft: corpora {missing} not in the data (have {sorted(batch)})")
        terms = {c: token_mean(nll(model, batch[c]), batch[c]) for c in names}
        loss = sum(terms.values()) / len(terms)
        return loss, {f"nll_{c}": log_value(v) for c, v in terms.items()}
