"""Direction ablation (``kind: ablate``; Lucki et al. 2024, "An Adversarial Perspective on
Machine Unlearning for AI Safety").

Unlearning methods like RMU push hazard activations along a direction; the difference of mean
activations between the unlearned and the original model on hazard prompts estimates it, and
projecting it out of the residual stream at every layer can undo the method. (The unlearning
side's trained ablation is the ``dir_ablate`` method, :mod:`magic_unlearn.unlearn.methods.ablation`.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import get_decoder_layers
from magic_unlearn.tamper.config import AttackConfig
from magic_unlearn.tamper.context import AttackContext
from magic_unlearn.tamper.registry import (
    Attack,
    AttackRun,
    AttackSkipped,
    Curve,
    register_attack,
)
from magic_unlearn.tamper.scoring import Scorer


@torch.no_grad()
def mean_layer_activations(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """Mean output hidden state of every decoder layer over all real tokens.

    Returns:
        (n_layers, D) float64.
    """
    blocks = get_decoder_layers(model)
    dev = next(model.parameters()).device
    sums: list[torch.Tensor | None] = [None] * len(blocks)
    count = 0.0
    handles = []
    cur_mask: dict[str, torch.Tensor] = {}

    def make_hook(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            h = out[0] if isinstance(out, tuple) else out  # (B, T, D)
            m = cur_mask["m"].to(h.dtype)[..., None]  # (B, T, 1)
            s = (h * m).sum(dim=(0, 1)).double()  # (D,)
            sums[i] = s if sums[i] is None else sums[i] + s

        return hook

    for i, b in enumerate(blocks):
        handles.append(b.register_forward_hook(make_hook(i)))
    was_training = model.training
    model.eval()
    try:
        for s in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[s : s + batch_size].to(dev)
            am = attention_mask[s : s + batch_size].to(dev)
            cur_mask["m"] = am
            model(input_ids=ids, attention_mask=am)
            count += float(am.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("mean_layer_activations: no real tokens (attention_mask all zero)")
    return torch.stack([s / count for s in sums])  # type: ignore[misc]


def ablation_directions(
    unlearned: nn.Module,
    original: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 32,
    eps: float = 1e-8,
) -> list[torch.Tensor | None]:
    """Per-layer unit direction of mean(unlearned) - mean(original); None where it is ~0."""
    mu_u = mean_layer_activations(unlearned, input_ids, attention_mask, batch_size)
    mu_o = mean_layer_activations(original, input_ids, attention_mask, batch_size)
    if mu_u.shape != mu_o.shape:
        raise ValueError(
            f"ablate: unlearned and original models differ in shape "
            f"({tuple(mu_u.shape)} vs {tuple(mu_o.shape)} layers x width)"
        )
    out: list[torch.Tensor | None] = []
    for d in mu_u - mu_o:
        n = float(d.norm())
        scale = max(float(mu_u.norm(dim=-1).max()), 1.0)
        out.append(None if n <= eps * scale else d / n)
    return out


class DirectionAblation:
    """Context manager projecting ``directions[l]`` out of the output of every decoder layer l.

    ``h <- h - (h . d) d`` for unit d; layers whose direction is None are left untouched, so zero
    directions make this the identity.
    """

    def __init__(self, model: nn.Module, directions: list[torch.Tensor | None]) -> None:
        blocks = get_decoder_layers(model)
        if len(directions) != len(blocks):
            raise ValueError(f"{len(directions)} directions for {len(blocks)} decoder layers")
        self.model = model
        self.directions = directions
        self._handles: list[Any] = []

    def __enter__(self) -> DirectionAblation:
        for blk, d in zip(get_decoder_layers(self.model), self.directions, strict=True):
            if d is None:
                continue

            def hook(_m: nn.Module, _inp: Any, out: Any, d: torch.Tensor = d) -> Any:
                h = out[0] if isinstance(out, tuple) else out  # (B, T, D)
                u = d.to(h.device, h.dtype)
                h = h - (h @ u)[..., None] * u  # (B, T, D)
                return (h, *out[1:]) if isinstance(out, tuple) else h

            self._handles.append(blk.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def ablate_attack(
    model: nn.Module,
    original: nn.Module,
    scorer: Scorer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    initial: dict[str, float] | None = None,
    batch_size: int = 32,
) -> tuple[Curve, dict[str, Any]]:
    """Score ``model`` before (step 0) and after (step 1) direction ablation."""
    t0 = time.perf_counter()
    dirs = ablation_directions(model, original, input_ids, attention_mask, batch_size)
    p0 = {"step": 0, **(initial if initial is not None else scorer(model))}
    with DirectionAblation(model, dirs):
        p1 = {"step": 1, **scorer(model)}
    info = {
        "wall_s": time.perf_counter() - t0,
        "ablated_layers": [i for i, d in enumerate(dirs) if d is not None],
    }
    return [p0, p1], info


@register_attack("ablate")
class AblateAttack(Attack):
    """Project the unlearned-minus-original mean activation direction out of every layer
    (Lucki et al. 2024, "An Adversarial Perspective on Machine Unlearning for AI Safety")."""

    needs_original = True

    def run(
        self,
        model: nn.Module,
        attack: AttackConfig,
        ctx: AttackContext,
        *,
        corpora: dict[str, TokenizedCorpus],
        original: nn.Module | None,
        initial: dict[str, float] | None,
    ) -> AttackRun:
        if ctx.prompts is None:
            raise AttackSkipped("ablate needs hazard question prompts (none in the eval tasks)")
        assert original is not None  # needs_original: the runner skips without it
        pts, info = ablate_attack(model, original, ctx.scorer, *ctx.prompts, initial=initial)
        return AttackRun(points=pts, info={"ablated_layers": info["ablated_layers"]})
