"""Trained direction ablation (attribution approach 4, trained variant).

The projection variant (weight orthogonalisation, no training) is
:func:`magic_unlearn.unlearn.edit.remove_directions`; the tamper stage's inference-time
ablation attack is :class:`magic_unlearn.tamper.attacks.ablate.DirectionAblation`.
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
    hidden_states,
    layer_indices,
    log_value,
    mean_over_layers,
    retain_l2,
    token_mean,
    up,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


@register_method("dir_ablate")
class DirAblate(Method):
    """Trained ablation of given residual directions: minimise the squared projection of forget
    hidden states on each layer's directions, with a retain L2 to the reference. Directions come
    from :func:`magic_unlearn.unlearn.edit.find_directions` (``directions={layer: (k, D)
    tensor}``), as in Arditi et al. 2024's directional ablation ("Refusal in Language Models Is
    Mediated by a Single Direction") but learned into the weights.
    """

    find_unused_parameters = True

    def __init__(
        self, directions: dict[int, torch.Tensor] | None = None, retain_coef: float = 1.0
    ) -> None:
        if not directions:
            raise ValueError(
                "dir_ablate needs directions={layer: (k, D) tensor} "
                "(from magic_unlearn.unlearn.edit.find_directions)"
            )
        self.directions = {int(k): v for k, v in directions.items()}
        self.retain_coef = retain_coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.layers = layer_indices(model, list(self.directions))
        p = next(model.parameters())
        self.q = {
            i: self.directions[j].to(p.device, torch.float32)
            for i, j in zip(self.layers, self.directions, strict=True)
        }  # layer -> (k, D)
        self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = batch["forget"]
        h = hidden_states(model, f, self.layers)
        proj = mean_over_layers(
            [
                token_mean(
                    ((up(h[i]) @ self.q[i].T.to(up(h[i]).dtype)) ** 2).sum(-1), f, nonneg=True
                )
                for i in self.layers
            ]
        )
        loss, logs = proj, {"proj": log_value(proj)}
        if self.retain_coef and "retain" in batch:
            ret = retain_l2(model, self.ref, batch["retain"], self.layers)
            loss = loss + self.retain_coef * ret
            logs["retain_l2"] = log_value(ret)
        return loss, logs
