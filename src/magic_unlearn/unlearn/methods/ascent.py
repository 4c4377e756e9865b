"""Output-space forgetting: gradient ascent and its preference-optimisation descendants."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import register_method
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    add_retain_nll,
    frozen_copy,
    log_value,
    nll,
    seq_logprob,
    token_mean,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


@register_method("ga")
class GradientAscent(Method):
    """Gradient ascent on forget tokens: minimise -NLL (Jang et al. 2023, "Knowledge Unlearning
    for Mitigating Privacy Risks in Language Models")."""

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = token_mean(nll(model, batch["forget"]), batch["forget"])
        return -f, {"nll_forget": log_value(f)}


@register_method("graddiff")
class GradDiff(Method):
    """Gradient difference: -NLL(forget) + retain_coef * NLL(retain) (Liu et al. 2022,
    "Continual Learning and Private Unlearning"; Maini et al. 2024, TOFU)."""

    def __init__(self, retain_coef: float = 1.0) -> None:
        self.retain_coef = retain_coef

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = token_mean(nll(model, batch["forget"]), batch["forget"])
        r = token_mean(nll(model, batch["retain"]), batch["retain"])
        return -f + self.retain_coef * r, {"nll_forget": log_value(f), "nll_retain": log_value(r)}


@register_method("npo")
class NPO(Method):
    """Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization:
    From Catastrophic Collapse to Effective Unlearning"):
    ``-(2/beta) E log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))`` + retain NLL."""

    def __init__(self, beta: float = 0.1, retain_coef: float = 1.0) -> None:
        self.beta, self.retain_coef = beta, retain_coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        lp, _ = seq_logprob(model, batch["forget"])  # (B,)
        with torch.no_grad():
            lp_ref, _ = seq_logprob(self.ref, batch["forget"])
        f = -(2.0 / self.beta) * F.logsigmoid(-self.beta * (lp - lp_ref)).mean()
        logs = {"npo": log_value(f), "logratio": log_value((lp - lp_ref).mean())}
        loss = add_retain_nll(f, logs, model, batch, self.retain_coef)
        return loss, logs


@register_method("simnpo")
class SimNPO(Method):
    """SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization
    for LLM Unlearning"): reference-free, length-normalised NPO,
    ``-(2/beta) E log sigmoid(-(beta/|y|) log pi(y|x) - gamma)`` + retain NLL."""

    def __init__(self, beta: float = 2.5, gamma: float = 0.0, retain_coef: float = 1.0) -> None:
        self.beta, self.gamma, self.retain_coef = beta, gamma, retain_coef

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        lp, n = seq_logprob(model, batch["forget"])
        keep = n > 0  # rows whose tokens are all weighted 0 carry no signal
        z = -(self.beta / n[keep].clamp(min=1e-8)) * lp[keep] - self.gamma
        f = -(2.0 / self.beta) * F.logsigmoid(z).mean() if keep.any() else lp.sum() * 0
        logs = {"simnpo": log_value(f)}
        loss = add_retain_nll(f, logs, model, batch, self.retain_coef)
        return loss, logs
