"""Forgetting at every layer: through a lens (``lens``) or one layer at a time (``sequential``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.lens import TunedLens, train_tuned_lens
from magic_unlearn.models import get_decoder_layers
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import register_method
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    CorpusBatch,
    frozen_copy,
    hidden_states,
    layer_indices,
    log_value,
    logits_kl,
    mean_over_layers,
    retain_l2,
    token_mean,
    unwrap_model,
    up,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig


@register_method("lens")
class Lens(Method):
    """Forget at every layer through a logit lens or a tuned lens (Belrose et al. 2023,
    "Eliciting Latent Predictions from Transformers with the Tuned Lens").

    Each target layer's forget hidden states are decoded by the (frozen) lens; the forget loss
    maximises the decoded entropy (``objective="entropy"``, loss = log V - H) or fits random
    target tokens (``"random"``, cross-entropy to uniform random ids drawn per step). Retain:
    ``"l2"`` distance of retain hidden states to the reference, or ``"kl"`` of the final logits.

    Args:
        lens: ``"logit"`` or ``"tuned"`` (trained in ``setup`` on the retain corpus, else forget).
        layers: target layers (default all).
    """

    find_unused_parameters = True
    shard_frozen = False  # the lens calls the reference's final norm and head directly

    def __init__(
        self,
        lens: str = "tuned",
        objective: str = "entropy",
        layers: list[int] | None = None,
        retain: str = "l2",
        retain_coef: float = 1.0,
        lens_steps: int = 100,
        lens_lr: float = 1e-3,
    ) -> None:
        if lens not in ("logit", "tuned"):
            raise ValueError(f"lens={lens!r}; use 'logit' or 'tuned'")
        if objective not in ("entropy", "random"):
            raise ValueError(f"objective={objective!r}; use 'entropy' or 'random'")
        if retain not in ("l2", "kl"):
            raise ValueError(f"retain={retain!r}; use 'l2' or 'kl'")
        self.lens_kind, self.objective, self.layers = lens, objective, layers
        self.retain, self.retain_coef = retain, retain_coef
        self.lens_steps, self.lens_lr = lens_steps, lens_lr
        self.lens_fit: list[float] = []

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.layers = layer_indices(model, self.layers)
        self.ref = frozen_copy(model)
        self.seed = int(cfg.seed)
        if self.lens_kind == "tuned":
            corpus = data.get("retain", data["forget"])
            self.lens, self.lens_fit = train_tuned_lens(
                self.ref, corpus, self.lens_steps, self.lens_lr, seed=self.seed
            )
        else:
            self.lens = TunedLens.logit_lens(self.ref)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = batch["forget"]
        h = hidden_states(model, f, self.layers)
        terms = []
        for i in self.layers:
            logits = up(self.lens(h[i], i))[:, :-1]  # (B, L-1, V): predicts token j at j-1
            logp = torch.log_softmax(logits, -1)
            if self.objective == "entropy":
                ent = -(logp.exp() * logp).sum(-1)
                x = math.log(logits.shape[-1]) - ent
            else:
                g = torch.Generator().manual_seed(self.seed * 100_003 + step)
                tgt = torch.randint(logits.shape[-1], logits.shape[:2], generator=g).to(
                    logits.device
                )
                x = -logp.gather(-1, tgt[..., None]).squeeze(-1)
            x = torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)  # column j <-> token j
            terms.append(token_mean(x, f, nonneg=True))
        forget = mean_over_layers(terms)
        loss, logs = forget, {"lens_forget": log_value(forget)}
        if self.retain_coef and "retain" in batch:
            r = batch["retain"]
            if self.retain == "l2":
                ret = retain_l2(model, self.ref, r, self.layers)
            else:
                ret = token_mean(logits_kl(model, self.ref, r), r)
            loss = loss + self.retain_coef * ret
            logs["lens_retain"] = log_value(ret)
        return loss, logs


@register_method("sequential")
class Sequential(Method):
    """Unlearn one decoder layer at a time, from the last to the first (the seed's layer-wise
    method; no single paper: its objectives are gradient ascent, Jang et al. 2023, "Knowledge
    Unlearning for Mitigating Privacy Risks in Language Models", or entropy maximisation).

    Training is split into equal stages, one per layer. In the stage of layer l only layer l
    moves (its input is detached); its forget activations are mapped to the output through the
    frozen *base* model's layers > l (the base forward with layer l's output replaced), and the
    objective there is GA (``"ga"``: -NLL) or entropy maximisation (``"entropy"``). The retain
    term is the NLL of retain tokens through the same path (``retain_coef``).

    Args:
        layers: layers to unlearn (default all), processed from last to first.
    """

    find_unused_parameters = True

    def __init__(
        self, objective: str = "ga", retain_coef: float = 1.0, layers: list[int] | None = None
    ) -> None:
        if objective not in ("ga", "entropy"):
            raise ValueError(f"objective={objective!r}; use 'ga' or 'entropy'")
        self.objective, self.retain_coef, self.layers = objective, retain_coef, layers

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        self.order = sorted(layer_indices(model, self.layers), reverse=True)
        self.trainable_layers = list(self.order)
        self.ref = frozen_copy(model)

    def stage_layer(self, step: int, total_steps: int) -> int:
        """The layer trained at ``step``."""
        k = min(len(self.order) - 1, step * len(self.order) // max(1, total_steps))
        return self.order[k]

    def _mapped_logits(self, model: nn.Module, b: CorpusBatch, layer: int) -> torch.Tensor:
        blocks = get_decoder_layers(unwrap_model(model))

        def detach_input(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if args:
                return (args[0].detach(), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}

        pre = blocks[layer].register_forward_pre_hook(detach_input, with_kwargs=True)
        try:
            h = hidden_states(model, b, [layer])[layer]  # (B, L, D), grad only into layer l
        finally:
            pre.remove()

        def replace(_m: nn.Module, _inp: Any, out: Any) -> Any:
            return (h, *out[1:]) if isinstance(out, tuple) else h

        hook = get_decoder_layers(self.ref)[layer].register_forward_hook(replace)
        try:
            return self.ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        finally:
            hook.remove()

    @staticmethod
    def _token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(up(logits[:, :-1]), -1)
        x = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)  # (B, L)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        layer = self.stage_layer(step, total_steps)
        f = batch["forget"]
        logits = self._mapped_logits(model, f, layer)
        if self.objective == "ga":
            forget = -token_mean(self._token_nll(logits, f["input_ids"]), f)
        else:
            logp = torch.log_softmax(up(logits[:, :-1]), -1)
            x = math.log(logits.shape[-1]) + (logp.exp() * logp).sum(-1)
            forget = token_mean(torch.cat([torch.zeros_like(x[:, :1]), x], 1), f, nonneg=True)
        loss, logs = forget, {"seq_forget": log_value(forget), "layer": float(layer)}
        if self.retain_coef and "retain" in batch:
            r = batch["retain"]
            ret = token_mean(
                self._token_nll(self._mapped_logits(model, r, layer), r["input_ids"]), r
            )
            loss = loss + self.retain_coef * ret
            logs["seq_retain"] = log_value(ret)
        return loss, logs
