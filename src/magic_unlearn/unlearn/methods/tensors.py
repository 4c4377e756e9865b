"""Tensor helpers shared by the unlearning methods (and the loop's DDP unwrapping).

Conventions: a corpus batch ``b`` holds ``input_ids``, ``attention_mask``, ``loss_mask`` and
``token_weight`` (all (B, L)); column j of a per-token quantity refers to token j (its loss is
that of predicting token j from tokens < j). Token-level means are
``sum(w * m * x) / sum(|w| * m)`` so a 0/1 mask averages over the selected tokens only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from magic_unlearn.data import per_token_nll
from magic_unlearn.models import LayerCapture, get_decoder_layers

CorpusBatch = dict[str, torch.Tensor]


class Batch(dict[str, CorpusBatch]):
    """Corpus name ("forget", "retain", ...) -> its micro-batch. A method asking for a corpus
    the run does not have gets a message that names it and the fix (not a bare KeyError)."""

    def __missing__(self, key: str) -> CorpusBatch:
        fix = "pass --retain CORPUS (retain: in the config)" if key == "retain" else "add it"
        raise KeyError(
            f"this method needs the {key!r} corpus but the run has only {sorted(self)}: {fix}"
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose layers can be found and hooked (strips DDP's ``.module``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy (the reference / starting model)."""
    ref = copy.deepcopy(unwrap_model(model))
    ref.eval().requires_grad_(False)
    return ref


def layer_indices(model: nn.Module, layers: list[int] | None) -> list[int]:
    """Decoder layer indices in ``[0, n)``: all layers for None, negatives counted from the end.

    Raises:
        ValueError: a layer outside ``[-n, n)``.
    """
    n = len(get_decoder_layers(unwrap_model(model)))
    if layers is None:
        return list(range(n))
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the model has {n} decoder layers")
    return [i % n for i in layers]


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 activations are upcast; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def log_value(x: torch.Tensor | float) -> float:
    """A loss term as a plain float for the logs (detached: no autograd warning)."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def progress(step: int, total: int) -> float:
    """Training progress in [0, 1] (coefficient schedules ramp with it)."""
    return step / max(1, total)


def token_mean(x: torch.Tensor, b: CorpusBatch, nonneg: bool = False) -> torch.Tensor:
    """Weighted mean of per-token values ``x`` (B, L): ``sum(w m x) / sum(|w| m)``.

    With ``nonneg`` negative weights count as 0 (representation losses treat weights as
    importances).
    """
    w = b["token_weight"].to(x.dtype)
    if nonneg:
        w = w.clamp(min=0)
    wm = w * b["loss_mask"].to(x.dtype)  # (B, L)
    return (wm * x).sum() / wm.abs().sum().clamp(min=1e-8)


def mean_over_layers(values: list[torch.Tensor]) -> torch.Tensor:
    """Mean of per-layer scalar terms."""
    return torch.stack(values).mean()


def nll(model: nn.Module, b: CorpusBatch) -> torch.Tensor:
    """(B, L) per-token NLL, column j = -log p(x_j | x_<j)."""
    return per_token_nll(model, b["input_ids"], b["attention_mask"])


def seq_logprob(model: nn.Module, b: CorpusBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence weighted log-prob ``sum_j w m log p`` (B,) and weighted length (B,)."""
    wm = b["token_weight"].float() * b["loss_mask"].float()
    return -(nll(model, b) * wm).sum(-1), wm.abs().sum(-1)


def kl_per_token(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, L) KL(p_ref || p) of the distribution predicting token j, placed at column j."""
    lp = torch.log_softmax(up(logits[:, :-1]), -1)
    lq = torch.log_softmax(up(ref_logits[:, :-1]), -1)
    kl = (lq.exp() * (lq - lp)).sum(-1)  # (B, L-1)
    return torch.cat([torch.zeros_like(kl[:, :1]), kl], dim=1)


def logits_kl(model: nn.Module, ref: nn.Module, b: CorpusBatch) -> torch.Tensor:
    """(B, L) :func:`kl_per_token` of ``ref``'s (no grad) and ``model``'s logits on ``b``."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    with torch.no_grad():
        ref_logits = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    return kl_per_token(ref_logits, logits)


def hidden_states(
    model: nn.Module, b: CorpusBatch, layers: list[int], grad: bool = True
) -> dict[int, torch.Tensor]:
    """Outputs of decoder ``layers`` for one corpus batch: layer -> (B, L, D).

    Hooks sit on the unwrapped model (:func:`unwrap_model` strips a DDP wrapper if one is
    passed).
    """
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, LayerCapture(unwrap_model(model), layers, detach=not grad) as cap:
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return dict(cap.outputs)


def retain_l2(model: nn.Module, ref: nn.Module, b: CorpusBatch, layers: list[int]) -> torch.Tensor:
    """Mean over ``layers`` of the token mean of ``||h_l - h_l^ref||_2`` on a retain batch."""
    h = hidden_states(model, b, layers)
    h0 = hidden_states(ref, b, layers, grad=False)
    return mean_over_layers([token_mean((up(h[i]) - up(h0[i])).norm(dim=-1), b) for i in layers])


def add_retain_nll(
    loss: torch.Tensor, logs: dict[str, float], model: nn.Module, batch: Batch, coef: float
) -> torch.Tensor:
    """``loss + coef * retain NLL`` (logged as ``nll_retain``) when a retain batch is present."""
    if not coef or "retain" not in batch:
        return loss
    r = token_mean(nll(model, batch["retain"]), batch["retain"])
    logs["nll_retain"] = log_value(r)
    return loss + coef * r
