"""The attacks: fine-tuning through the unlearning loop, direction ablation, logit-lens probe.

Every attack produces a *curve*: a list of points ``{"step", "hazard_acc", "hazard_loss",
"general_acc", "general_loss", ...}`` measured by a :data:`Scorer` (for ``probe`` the x value is
the layer). Fine-tuning attacks are ``sft`` runs of :func:`magic_unlearn.unlearn.loop.train_loop`
so they share every detail (batching, LoRA, precision) with unlearning itself.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import get_decoder_layers, get_unembedding
from magic_unlearn.tamper.config import AttackConfig

# model -> {"hazard_acc", "hazard_loss", "general_acc", "general_loss", ...}
Scorer = Callable[[nn.Module], dict[str, float]]


class TimedScorer:
    """Wraps a scorer and accumulates the seconds spent in it (for the eval-overhead benchmark)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = dict(self.scorer(model))
        model.train(was_training)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


# ---------------------------------------------------------------------------------------------
# fine-tuning attacks


def loop_config(attack: AttackConfig, lr: float, steps: int, device: str) -> Any:
    """The :class:`LoopConfig` of one fine-tuning phase of ``attack``."""
    from magic_unlearn.lora import LoraSpec
    from magic_unlearn.unlearn.loop import LoopConfig

    return LoopConfig(
        steps=steps,
        lr=lr,
        optimizer=attack.optimizer,
        weight_decay=attack.weight_decay,
        schedule=attack.schedule,
        warmup_steps=attack.warmup_steps,
        batch_size=attack.batch_size,
        grad_accum=attack.grad_accum,
        max_grad_norm=attack.max_grad_norm,
        precision=attack.precision,
        seed=attack.seed,
        lora=(LoraSpec(r=attack.lora_r, alpha=attack.lora_alpha) if attack.lora else None),
        eval_every=attack.eval_every,
        log_every=1,
        device=device,
        distributed="none",
    )


def _sft_method() -> Any:
    from magic_unlearn.unlearn.methods import get_method

    return get_method("sft")


def finetune_attack(
    model: nn.Module,
    attack: AttackConfig,
    corpora: dict[str, TokenizedCorpus],
    scorer: Scorer,
    lr: float,
    *,
    device: str = "auto",
    initial: dict[str, float] | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Fine-tune a copy of ``model`` per ``attack`` and return its recovery curve.

    Args:
        model: the model under attack (not modified).
        attack: the attack config (``kind == "finetune"``).
        corpora: ``{"data": rows, ["pre_data": rows]}`` already tokenized.
        scorer: measures a model (called in eval mode, no grad).
        lr: learning rate of this run.
        device: training device.
        initial: the step-0 point if already measured (it is the same for every attack).
        progress: tqdm bar of the loop.

    Returns:
        (points, info): one point per evaluated step (step 0 included), and timings
        ``{"wall_s", "eval_s", "train_loss_last"}``.
    """
    from magic_unlearn.unlearn.loop import train_loop

    if attack.kind != "finetune":
        raise ValueError(f"finetune_attack got an attack of kind {attack.kind!r}")
    t0 = time.perf_counter()
    timed = scorer if isinstance(scorer, TimedScorer) else TimedScorer(scorer)
    eval_s0 = timed.seconds
    points: list[dict[str, Any]] = [
        {"step": 0, **(initial if initial is not None else timed(model))}
    ]
    phases = []
    if attack.pre_data and attack.pre_steps > 0:
        phases.append(("pre_data", attack.pre_steps))
    if attack.steps > 0:
        phases.append(("data", attack.steps))
    history: list[dict[str, Any]] = []
    if phases:
        work = copy.deepcopy(model)
        offset = 0
        for key, steps in phases:
            method = _sft_method()
            cfg = loop_config(attack, lr, steps, device)
            off = offset

            def eval_fn(m: nn.Module, step: int, off: int = off) -> dict[str, float]:
                return timed(m)

            # sft trains on every corpus it is given: the one of this phase
            res = train_loop(
                work, method, {key: corpora[key]}, cfg, eval_fn=eval_fn, progress=progress
            )
            work = res.model
            for e in res.evals:
                e = dict(e)
                e["step"] = int(e["step"]) + off
                e["phase"] = key
                points.append(e)
            for h in res.history:
                history.append({**h, "step": int(h["step"]) + off, "phase": key})
            offset += steps
        del work
    loss_at = {h["step"]: h.get("loss") for h in history}
    for p in points:
        if p["step"] in loss_at and loss_at[p["step"]] is not None:
            p["train_loss"] = float(loss_at[p["step"]])
    info = {
        "wall_s": time.perf_counter() - t0,
        "eval_s": timed.seconds - eval_s0,
        "lr": lr,
        "history": history,
    }
    return points, info


def worst_case(runs: dict[float, list[dict[str, Any]]]) -> float:
    """The learning rate whose curve reaches the highest hazard accuracy (ties: higher mean)."""
    from magic_unlearn.tamper.verdict import auc

    return max(runs, key=lambda lr: (max(p["hazard_acc"] for p in runs[lr]), auc(runs[lr])))


# ---------------------------------------------------------------------------------------------
# direction ablation (Lucki et al. 2024, "An Adversarial Perspective on Machine Unlearning for
# AI Safety"): unlearning methods like RMU push hazard activations along a direction; the
# difference of mean activations between the unlearned and the original model on hazard prompts
# estimates it, and projecting it out of the residual stream at every layer can undo the method.


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
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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


# ---------------------------------------------------------------------------------------------
# logit-lens probe


class LensModel(nn.Module):
    """A causal LM whose logits are decoded from decoder layer ``layer`` (logit lens).

    The layer's output hidden state goes through the model's final norm and unembedding
    (nostalgebraist 2020). With ``lens`` (called as ``lens(h, layer) -> logits``, e.g.
    :class:`magic_unlearn.lens.TunedLens`, Belrose et al. 2023) that decodes instead.
    Decoding the last layer with the logit lens gives the model's own logits. Anything that
    scores a causal LM (the MCQ evaluator) scores this.
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


def probe_attack(
    model: nn.Module, scorer: Scorer, lens: nn.Module | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Hazard/general accuracy decoded from every layer; x = layer index.

    With ``lens`` (a tuned lens of this model) the points hold the tuned-lens numbers and the
    logit-lens ones under ``logit_*`` keys; otherwise the logit lens.
    """
    t0 = time.perf_counter()
    pts = []
    for i in range(len(get_decoder_layers(model))):
        logit = scorer(LensModel(model, i))
        if lens is None:
            pts.append({"step": i, **logit})
        else:
            tuned = scorer(LensModel(model, i, lens))
            pts.append({"step": i, **tuned, **{f"logit_{k}": v for k, v in logit.items()}})
    return pts, {"wall_s": time.perf_counter() - t0}
