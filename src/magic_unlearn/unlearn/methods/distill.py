"""Distillation on a teacher's outputs: the "distill" step of UNDO.

Lee et al. 2025, "Distillation Robustifies Unlearning": after unlearning, a student whose weights
were moved toward a fresh initialisation is trained to match the unlearned teacher's output
distribution on pretraining/retain text; what the teacher only suppresses is not transmitted.
The pipeline (unlearn, perturb, distill) is ``unlearn.api``'s ``undo`` section; this module is
the loss and the perturbation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import register_method
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    frozen_copy,
    log_value,
    logits_kl,
    token_mean,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


@register_method("distill")
class Distill(Method):
    """Output distillation: token-weighted ``KL(p_teacher || p_student)`` of next-token
    distributions on one corpus (Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network"; UNDO's distill step, Lee et al. 2025, "Distillation Robustifies Unlearning").

    A token weight of 0 drops the position that predicts that token from the distillation data
    (the attribution-guided UNDO drops hazard-teaching tokens this way).

    Args:
        corpus: the batch corpus distilled on (``retain`` by default; UNDO passes ``distill``).
        teacher: the frozen teacher; None: a frozen copy of the model when training starts.
    """

    def __init__(self, corpus: str = "retain", teacher: nn.Module | None = None) -> None:
        self.corpus = corpus
        self.teacher = teacher

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        if self.corpus not in data:
            raise ValueError(
                f"distill: corpus {self.corpus!r} not in the data (have {sorted(data)}); "
                f"set method_kwargs.corpus"
            )
        if self.teacher is None:
            self.teacher = frozen_copy(model)
        self.teacher.to(next(model.parameters()).device)
        self.ref = self.teacher  # retain_kl may share it

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch[self.corpus]
        kl = token_mean(logits_kl(model, self.teacher, b), b)  # (B, L) KL -> scalar
        return kl, {"kl_teacher": log_value(kl)}


@torch.no_grad()
def perturb_toward_init(model: nn.Module, alpha: float, seed: int = 0) -> nn.Module:
    """``theta <- (1 - alpha) theta + alpha theta_init`` in place, theta_init a fresh random
    initialisation of the same architecture (UNDO's noising step, Lee et al. 2025).

    Args:
        model: a Hugging Face model (its ``config`` builds the fresh initialisation).
        alpha: in [0, 1]; 0 leaves the model unchanged, 1 replaces it by the fresh init.
        seed: seed of the fresh initialisation.

    Returns:
        ``model``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"perturbation alpha={alpha} must be in [0, 1]")
    if alpha == 0.0:
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(model.config)  # post_init draws the initialisation
    init = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        p.mul_(1.0 - alpha).add_(init[name].to(p.device, p.dtype), alpha=alpha)
    return model
