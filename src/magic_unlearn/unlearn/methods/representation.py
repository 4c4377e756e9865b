"""Representation-space forgetting: steer, reroute or scramble forget-token hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import LayerCapture, get_decoder_layers
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import register_method
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    CorpusBatch,
    add_retain_nll,
    frozen_copy,
    hidden_states,
    layer_indices,
    log_value,
    mean_over_layers,
    nll,
    progress,
    retain_l2,
    token_mean,
    unwrap_model,
    up,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


def _ramp(schedule: str, p: float, end: float) -> tuple[float, float]:
    """(reroute multiplier, retain multiplier) at training progress p in [0, 1]."""
    if schedule == "ramp":  # Deep Ignorance's variant: reroute 1 -> end, retain 0 -> 1
        return 1.0 - (1.0 - end) * p, p
    if schedule == "cb":  # Zou et al. 2024: c_s = 1 - t/2T, c_r = t/2T
        return 1.0 - p / 2, p / 2
    if schedule == "constant":
        return 1.0, 1.0
    raise ValueError(f"unknown coefficient schedule {schedule!r}; use ramp|cb|constant")


def orthogonality_loss(h: torch.Tensor, b: CorpusBatch) -> torch.Tensor:
    """Mean over pairs i != j of relu(cos(pool_i, pool_j)) x mean sequence length.

    ``pool_i`` is the token-weighted mean of sequence i's representations (B, D); rows with no
    weighted token are left out.
    """
    w = (b["token_weight"].clamp(min=0) * b["loss_mask"]).to(h.dtype)  # (B, L)
    keep = w.sum(-1) > 0
    h, w = h[keep], w[keep]
    n = h.shape[0]
    if n < 2:
        return h.sum() * 0
    pooled = (w[..., None] * h).sum(1) / w.sum(-1, keepdim=True)  # (n, D)
    z = F.normalize(pooled, dim=-1)
    cos = z @ z.T  # (n, n)
    off = ~torch.eye(n, dtype=torch.bool, device=h.device)
    mean_len = up(b["loss_mask"][keep].sum(-1)).mean()
    return F.relu(cos[off]).mean() * mean_len


@register_method("rmu")
class RMU(Method):
    """Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark").

    Forget: ``||h_l(x_f) - c u||^2`` (mean over dims) pushes layer-l activations toward a fixed
    random unit direction u scaled by c. Retain: ``alpha ||h_l(x_r) - h_l^frozen(x_r)||^2``.
    By default only the MLPs of layers l-2..l train (as in the paper); override with the loop's
    ``layers`` / ``target_modules``.

    Args:
        layer: the steered decoder layer (default: ~22% depth, the paper's 7 of 32).
        steering_coef: c. With ``relative=True``, c is this times the mean activation norm of the
            frozen model's forget tokens at the layer (scale-free across model sizes).
        alpha: retain weight (paper: 1200 for Zephyr-7B at c = 6.5).
    """

    find_unused_parameters = True

    def __init__(
        self,
        layer: int | None = None,
        steering_coef: float = 6.5,
        alpha: float = 100.0,
        relative: bool = False,
    ) -> None:
        self.layer, self.c, self.alpha, self.relative = layer, steering_coef, alpha, relative
        self.trainable_modules = ["mlp"]

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        n = len(get_decoder_layers(model))
        layer = round(0.22 * (n - 1)) if self.layer is None else self.layer
        self.layer = layer_indices(model, [layer])[0]
        self.trainable_layers = list(range(max(0, self.layer - 2), self.layer + 1))
        self.ref = frozen_copy(model)
        d = model.config.hidden_size
        g = torch.Generator().manual_seed(int(cfg.seed) + 17)
        u = torch.rand(d, generator=g, dtype=torch.float64)
        p = next(model.parameters())
        self.u = (u / u.norm()).to(p.device, torch.float32)
        self.scale = float(self.c)
        if self.relative:
            f = data["forget"].subset(list(range(min(16, len(data["forget"])))))
            b = {
                "input_ids": f.input_ids.to(p.device),
                "attention_mask": f.attention_mask.to(p.device),
            }
            h = hidden_states(self.ref, b, [self.layer], grad=False)[self.layer]
            self.scale = float(self.c * up(h).norm(dim=-1)[f.attention_mask.bool()].mean())

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f, r = batch["forget"], batch["retain"]
        h_f = up(hidden_states(model, f, [self.layer])[self.layer])  # (B, L, D)
        target = self.scale * self.u.to(h_f.device)
        forget = token_mean(((h_f - target) ** 2).mean(-1), f, nonneg=True)
        h_r = up(hidden_states(model, r, [self.layer])[self.layer])
        with torch.no_grad():
            h_r0 = up(hidden_states(self.ref, r, [self.layer], grad=False)[self.layer])
        retain = token_mean(((h_r - h_r0) ** 2).mean(-1), r)
        return forget + self.alpha * retain, {
            "rmu_forget": log_value(forget),
            "rmu_retain": log_value(retain),
        }


@register_method("rr")
class RR(Method):
    """Representation rerouting / circuit breakers (Zou et al. 2024, "Improving Alignment and
    Robustness with Circuit Breakers").

    Forget: ``relu(cos(h_l, h_l^ref))`` per forget token at each target layer (weighted by token
    weight). Retain: ``||h_l - h_l^ref||_2`` per retain token. Coefficients follow ``schedule``:
    ``ramp`` (Deep Ignorance, O'Brien et al. 2025: reroute 1 -> ``reroute_end``, retain 0 -> 1),
    ``cb`` (the paper: 1 - t/2T and t/2T) or ``constant``.

    Args:
        layers: target decoder layers (default: all, the coverage that persisted best).
        reroute_coef / retain_coef: multipliers of the two terms.
    """

    find_unused_parameters = True

    def __init__(
        self,
        layers: list[int] | None = None,
        reroute_coef: float = 1.0,
        retain_coef: float = 1.0,
        schedule: str = "ramp",
        reroute_end: float = 0.75,
    ) -> None:
        self.layers, self.reroute_coef, self.retain_coef = layers, reroute_coef, retain_coef
        self.schedule, self.reroute_end = schedule, reroute_end
        _ramp(schedule, 0.0, reroute_end)  # fail on a bad schedule now, not at step 0

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.layers = layer_indices(model, self.layers)
        self.ref = frozen_copy(model)

    def _terms(
        self, model: nn.Module, batch: Batch
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor, torch.Tensor]:
        f = batch["forget"]
        h_f = hidden_states(model, f, self.layers)
        h_f0 = hidden_states(self.ref, f, self.layers, grad=False)
        cos = [
            token_mean(F.relu(F.cosine_similarity(up(h_f[i]), up(h_f0[i]), dim=-1)), f, nonneg=True)
            for i in self.layers
        ]
        retain = torch.zeros((), device=f["input_ids"].device)
        if "retain" in batch:
            retain = retain_l2(model, self.ref, batch["retain"], self.layers)
        return h_f, mean_over_layers(cos), retain

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        _, cos, retain = self._terms(model, batch)
        a, b = _ramp(self.schedule, progress(step, total_steps), self.reroute_end)
        loss = self.reroute_coef * a * cos + self.retain_coef * b * retain
        return loss, {
            "cos": log_value(cos),
            "retain_l2": log_value(retain),
            "c_reroute": a,
            "c_retain": b,
        }


@register_method("orth_cb")
class OrthCB(RR):
    """Circuit breakers plus a within-batch orthogonality loss on mean-pooled forget
    representations, so each forget sequence is scrambled in a different direction (the seed's
    variant of Zou et al. 2024, "Improving Alignment and Robustness with Circuit Breakers").
    The orth coefficient ramps up 0 -> ``orth_coef``; its value depends on the per-device batch
    size (pairs are formed within a device's micro-batch).
    """

    def __init__(
        self,
        layers: list[int] | None = None,
        reroute_coef: float = 1.0,
        retain_coef: float = 1.0,
        orth_coef: float = 1.0,
        schedule: str = "ramp",
        reroute_end: float = 0.75,
    ) -> None:
        super().__init__(layers, reroute_coef, retain_coef, schedule, reroute_end)
        self.orth_coef = orth_coef

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        h_f, cos, retain = self._terms(model, batch)
        p = progress(step, total_steps)
        a, b = _ramp(self.schedule, p, self.reroute_end)
        orth = mean_over_layers(
            [orthogonality_loss(up(h_f[i]), batch["forget"]) for i in self.layers]
        )
        loss = (
            self.reroute_coef * a * cos + self.retain_coef * b * retain + self.orth_coef * p * orth
        )
        return loss, {
            "cos": log_value(cos),
            "retain_l2": log_value(retain),
            "orth": log_value(orth),
            "c_reroute": a,
            "c_retain": b,
            "c_orth": p,
        }


@register_method("ga_orth")
class GAOrth(Method):
    """Attribution approach 5: token-weighted gradient ascent on forget tokens, plus the
    ``orth_cb`` orthogonality loss on (weight-pooled) forget representations, plus retain NLL.
    Pair with retain data restricted to general-teaching tokens (``retain_weights`` in
    :class:`~magic_unlearn.unlearn.api.UnlearnConfig`). GA after Jang et al. 2023 ("Knowledge
    Unlearning for Mitigating Privacy Risks in Language Models"); the orthogonality term is the
    seed's ``orth_cb`` variant of Zou et al. 2024 ("Improving Alignment and Robustness with
    Circuit Breakers").
    """

    find_unused_parameters = True

    def __init__(
        self, layers: list[int] | None = None, orth_coef: float = 1.0, retain_coef: float = 1.0
    ) -> None:
        self.layers, self.orth_coef, self.retain_coef = layers, orth_coef, retain_coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.layers = layer_indices(model, self.layers)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = batch["forget"]
        with LayerCapture(unwrap_model(model), self.layers) as cap:
            x = nll(model, f)  # one forward: the NLL and the hidden states together
        ga = -token_mean(x, f)
        orth = mean_over_layers([orthogonality_loss(up(cap.outputs[i]), f) for i in self.layers])
        loss = ga + self.orth_coef * progress(step, total_steps) * orth
        logs = {"nll_forget": -log_value(ga), "orth": log_value(orth)}
        loss = add_retain_nll(loss, logs, model, batch, self.retain_coef)
        return loss, logs
