"""Lenses: decoding a decoder layer's hidden states into next-token logits.

One module for the lens concept, shared by the unlearning methods (the ``lens`` method forgets
through a lens at every layer) and the tamper attacks (the ``probe`` attack scores every layer
through a lens):

* :class:`TunedLens`: per-layer affine translators before the frozen final norm and unembedding
  (Belrose et al. 2023); with ``tuned=False`` the logit lens (nostalgebraist 2020).
* :func:`train_tuned_lens`: fits the translators of a frozen model.
* :class:`LensModel`: a causal LM whose logits come from one layer through a lens, so anything
  that scores a causal LM (the MCQ evaluator) scores a layer.

This module sits below ``unlearn/`` and ``tamper/`` in the import graph: it imports neither.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import LayerCapture, get_decoder_layers, get_unembedding


class TunedLens(nn.Module):
    """Per-layer affine translators ``h + A_l h + b_l`` (A, b start at 0) decoded by the frozen
    final norm and unembedding (Belrose et al. 2023, "Eliciting Latent Predictions from
    Transformers with the Tuned Lens"). With ``tuned=False`` it is the logit lens."""

    def __init__(
        self, norm: nn.Module, head: nn.Module, n_layers: int, d: int, tuned: bool = True
    ) -> None:
        super().__init__()
        self.norm, self.head, self.tuned = norm, head, tuned
        self.translators = nn.ModuleList(
            [nn.Linear(d, d) for _ in range(n_layers)] if tuned else []
        )
        for t in self.translators:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)

    @classmethod
    def logit_lens(cls, model: nn.Module) -> TunedLens:
        """The (untrained, translator-free) logit lens of ``model``."""
        norm, head = get_unembedding(model)
        return cls(
            norm, head, len(get_decoder_layers(model)), model.config.hidden_size, tuned=False
        )

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, L, D) hidden state of ``layer`` -> (B, L, V) logits."""
        if self.tuned and layer < len(self.translators) - 1:  # last layer: exact model logits
            t = self.translators[layer]
            h = h + t(h.to(t.weight.dtype)).to(h.dtype)
        return self.head(self.norm(h))


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 logits are upcast for the softmax; float64 stays float64 (the exactness checks)
    return x.to(torch.promote_types(x.dtype, torch.float32))


def train_tuned_lens(
    ref: nn.Module,
    corpus: TokenizedCorpus,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[TunedLens, list[float]]:
    """Fit a tuned lens on ``ref`` (frozen) by minimising KL(final || lens) summed over layers.

    Args:
        ref: the model to decode; its parameters' ``requires_grad`` flags are restored after.
        corpus: rows the lens is fitted on (benign text).
        steps / lr / batch_size / seed: Adam steps on random batches of ``corpus``.

    Returns:
        ``(lens, per-step mean KL per layer)``; the lens's translators are frozen.
    """
    norm, head = get_unembedding(ref)
    n = len(get_decoder_layers(ref))
    p = next(ref.parameters())
    lens = TunedLens(norm, head, n, ref.config.hidden_size).to(p.device, p.dtype)
    flags = [(q, q.requires_grad) for q in (*norm.parameters(), *head.parameters())]
    for q, _ in flags:  # the decoder is fixed; restored below so the model is left untouched
        q.requires_grad_(False)
    opt = torch.optim.Adam(lens.translators.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 29)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(corpus), (min(batch_size, len(corpus)),), generator=g)
        b = {
            "input_ids": corpus.input_ids[idx].to(p.device),
            "attention_mask": corpus.attention_mask[idx].to(p.device),
        }
        mask = b["attention_mask"].bool()
        with torch.no_grad(), LayerCapture(ref, list(range(n)), detach=True) as cap:
            final = _at_least_fp32(ref(**b).logits)
        logq = torch.log_softmax(final, -1)[mask]  # (T, V)
        loss = torch.zeros((), device=p.device)
        for i in range(n - 1):
            logp = torch.log_softmax(_at_least_fp32(lens(cap.outputs[i], i)), -1)[mask]
            loss = loss + (logq.exp() * (logq - logp)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / max(1, n - 1))
    lens.translators.requires_grad_(False)
    for q, flag in flags:
        q.requires_grad_(flag)
    return lens, losses


class LensModel(nn.Module):
    """A causal LM whose logits are decoded from decoder layer ``layer`` (logit lens).

    The layer's output hidden state goes through the model's final norm and unembedding
    (nostalgebraist 2020). With ``lens`` (called as ``lens(h, layer) -> logits``, e.g. a
    :class:`TunedLens`, Belrose et al. 2023) that decodes instead. Decoding the last layer with
    the logit lens gives the model's own logits. Anything that scores a causal LM (the MCQ
    evaluator) scores this.
    """

    def __init__(self, model: nn.Module, layer: int, lens: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.lens = lens
        self.norm, self.head = get_unembedding(model)
        self.blocks = get_decoder_layers(model)
        n = len(self.blocks)
        if not -n <= layer < n:
            raise ValueError(f"probe layer {layer} out of range: model has {n} decoder layers")

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kw: Any,
    ) -> Any:
        store: dict[str, torch.Tensor] = {}

        def grab(_m: nn.Module, _inp: Any, out: Any) -> None:
            store["h"] = out[0] if isinstance(out, tuple) else out  # (B, T, D)

        handle = self.blocks[self.layer].register_forward_hook(grab)
        try:
            extra = {"position_ids": position_ids} if position_ids is not None else {}
            self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        finally:
            handle.remove()
        h = store["h"]
        if isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]  # (B, K, D)
        elif logits_to_keep:
            h = h[:, -logits_to_keep:]
        if self.lens is not None:
            logits = self.lens(h, self.layer % len(self.blocks))  # (B, T, V)
        else:
            logits = self.head(self.norm(h))  # (B, T, V)
        return SimpleNamespace(logits=logits)


__all__ = ["LensModel", "TunedLens", "train_tuned_lens"]
