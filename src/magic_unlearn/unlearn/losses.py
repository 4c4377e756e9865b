"""Unlearning (and fine-tuning) losses as small objects, registered by name.

A method is called by :func:`magic_unlearn.unlearn.loop.train_loop` as::

    method.setup(model, data, cfg)          # once, before adapters: frozen copies, vectors, lenses
    loss, logs = method(model, batch, step, total_steps)

``batch[name]`` holds ``input_ids``, ``attention_mask``, ``loss_mask``, ``token_weight`` (all
(B, L)) and ``index`` (B,) for every corpus (``"forget"``, ``"retain"``, ...). A per-token weight
at position j scales the loss of predicting token j; weights of 1 give the unweighted loss.
Token-level means are ``sum(w * m * x) / sum(|w| * m)`` so a 0/1 mask averages over the selected
tokens only. Representation losses treat weights as non-negative importances (negatives -> 0).

Optional method hooks the loop uses: ``trainable_layers`` (default decoder layers to train when the
config names none), ``find_unused_parameters`` (DDP), ``on_train_start(model)`` (after adapters),
``trainable_parameters()`` / ``trainable_state()`` (extra trained tensors, checkpointed).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from magic_unlearn.data import TokenizedCorpus, per_token_nll
from magic_unlearn.models import LayerCapture, get_decoder_layers, get_unembedding

Batch = dict[str, dict[str, torch.Tensor]]
METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator adding a method to :data:`METHODS` under ``name``."""

    def deco(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name]}")
        METHODS[name] = cls
        cls.name = name
        return cls

    return deco


def get_method(name: str, **kwargs: Any) -> Any:
    """Instantiate a registered method. Regulariser kwargs work with any method.

    Args:
        name: a key of :data:`METHODS`.
        **kwargs: the method's own arguments, plus ``l2sp``, ``retain_kl``, ``retain_nll``
            (coefficients; > 0 adds :class:`L2SP` / :class:`RetainKL` / :class:`RetainNLL`).
    """
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; registered: {sorted(METHODS)}")
    kwargs = dict(kwargs)
    reg_kw = {k: kwargs.pop(k) for k in ("l2sp", "retain_kl", "retain_nll") if k in kwargs}
    cls = METHODS[name]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(
            f"method {name!r} got unknown argument(s) {bad}; valid: {valid} "
            f"(+ regularisers l2sp, retain_kl, retain_nll)"
        )
    method = cls(**kwargs)
    regs: list[Any] = []
    if float(reg_kw.get("l2sp") or 0) > 0:
        regs.append(L2SP(float(reg_kw["l2sp"])))
    if float(reg_kw.get("retain_kl") or 0) > 0:
        regs.append(RetainKL(float(reg_kw["retain_kl"])))
    if float(reg_kw.get("retain_nll") or 0) > 0:
        regs.append(RetainNLL(float(reg_kw["retain_nll"])))
    return Regularized(method, regs) if regs else method


class Method:
    """Base of loss objects: a no-op ``setup`` and the ``__call__`` contract."""

    name = "method"

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        """Prepare state (called once, on the base model, before adapters / DDP)."""

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# shared helpers


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose layers can be hooked (strips DDP's ``.module``)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy (the reference / starting model)."""
    ref = copy.deepcopy(unwrap(model))
    ref.eval().requires_grad_(False)
    return ref


def token_mean(x: torch.Tensor, b: dict[str, torch.Tensor], nonneg: bool = False) -> torch.Tensor:
    """Weighted mean of per-token values ``x`` (B, L): ``sum(w m x) / sum(|w| m)``."""
    w = b["token_weight"].to(x.dtype)
    if nonneg:
        w = w.clamp(min=0)
    wm = w * b["loss_mask"].to(x.dtype)  # (B, L)
    return (wm * x).sum() / wm.abs().sum().clamp(min=1e-8)


def add_retain_nll(
    loss: torch.Tensor,
    logs: dict[str, float],
    model: nn.Module,
    batch: dict[str, dict[str, torch.Tensor]],
    coef: float,
) -> torch.Tensor:
    """``loss + coef * retain NLL`` (logged as ``nll_retain``) when a retain batch is present."""
    if not coef or "retain" not in batch:
        return loss
    r = token_mean(nll(model, batch["retain"]), batch["retain"])
    logs["nll_retain"] = _f(r)
    return loss + coef * r


def nll(model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) per-token NLL, column j = -log p(x_j | x_<j)."""
    return per_token_nll(model, b["input_ids"], b["attention_mask"])


def seq_logprob(model: nn.Module, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence weighted log-prob ``sum_j w m log p`` (B,) and weighted length (B,)."""
    wm = b["token_weight"].float() * b["loss_mask"].float()
    return -(nll(model, b) * wm).sum(-1), wm.abs().sum(-1)


def _f(x: torch.Tensor | float) -> float:
    """A log value (no autograd warning)."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _progress(step: int, total: int) -> float:
    return step / max(1, total)


def _layer_list(model: nn.Module, layers: list[int] | None) -> list[int]:
    n = len(get_decoder_layers(unwrap(model)))
    if layers is None:
        return list(range(n))
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} out of range: the model has {n} decoder layers")
    return [i % n for i in layers]


# ---------------------------------------------------------------------------------------------
# output-space methods


@register_method("sft")
class SFT(Method):
    """Plain (token-weighted) next-token NLL; the fine-tuning / relearning objective.

    Args:
        corpora: which corpora of the batch to train on (default: all), averaged.
    """

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
        return loss, {f"nll_{c}": _f(v) for c, v in terms.items()}


@register_method("ga")
class GradientAscent(Method):
    """Gradient ascent on forget tokens: minimise -NLL (Jang et al. 2023, "Knowledge Unlearning
    for Mitigating Privacy Risks in Language Models")."""

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = token_mean(nll(model, batch["forget"]), batch["forget"])
        return -f, {"nll_forget": _f(f)}


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
        return -f + self.retain_coef * r, {"nll_forget": _f(f), "nll_retain": _f(r)}


@register_method("npo")
class NPO(Method):
    """Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization:
    From Catastrophic Collapse to Effective Unlearning"):
    ``-(2/beta) E log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))`` + retain NLL."""

    def __init__(self, beta: float = 0.1, retain_coef: float = 1.0) -> None:
        self.beta, self.retain_coef = beta, retain_coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        lp, _ = seq_logprob(model, batch["forget"])  # (B,)
        with torch.no_grad():
            lp_ref, _ = seq_logprob(self.ref, batch["forget"])
        f = -(2.0 / self.beta) * F.logsigmoid(-self.beta * (lp - lp_ref)).mean()
        logs = {"npo": _f(f), "logratio": _f((lp - lp_ref).mean())}
        loss = f
        loss = add_retain_nll(loss, logs, model, batch, self.retain_coef)
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
        logs = {"simnpo": _f(f)}
        loss = f
        loss = add_retain_nll(loss, logs, model, batch, self.retain_coef)
        return loss, logs


# ---------------------------------------------------------------------------------------------
# regularisers (compose with any method through get_method(..., l2sp=, retain_kl=, retain_nll=))


class L2SP:
    """L2-SP: ``coef * sum ||theta - theta_0||^2`` over trainable tensors (Li et al. 2018,
    "Explicit Inductive Bias for Transfer Learning with Convolutional Networks")."""

    def __init__(self, coef: float) -> None:
        self.coef = coef
        self.anchor: list[tuple[nn.Parameter, torch.Tensor]] = []

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        pass

    def on_train_start(self, model: nn.Module) -> None:
        # after adapters / freezing: anchor exactly the tensors that will move
        self.anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        d = sum(((p - p0) ** 2).sum() for p, p0 in self.anchor)
        return self.coef * d, {"l2sp": _f(d)}


class RetainKL:
    """``coef * KL(p_ref || p_theta)`` per retain token, averaged (as in TOFU's KL baseline)."""

    def __init__(self, coef: float) -> None:
        self.coef = coef
        self.ref: nn.Module | None = None

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        if "retain" not in data:
            raise ValueError("retain_kl needs a 'retain' corpus")
        if self.ref is None:
            self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        b = batch["retain"]
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        with torch.no_grad():
            ref_logits = self.ref(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"]
            ).logits
        kl = kl_per_token(ref_logits, logits)  # (B, L)
        v = token_mean(kl, b)
        return self.coef * v, {"kl_retain": _f(v)}


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 activations are upcast; float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def kl_per_token(ref_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(B, L) KL(p_ref || p) of the distribution predicting token j, placed at column j."""
    lp = torch.log_softmax(up(logits[:, :-1]), -1)
    lq = torch.log_softmax(up(ref_logits[:, :-1]), -1)
    kl = (lq.exp() * (lq - lp)).sum(-1)  # (B, L-1)
    return torch.cat([torch.zeros_like(kl[:, :1]), kl], dim=1)


class RetainNLL:
    """``coef * NLL`` on retain tokens."""

    def __init__(self, coef: float) -> None:
        self.coef = coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        if "retain" not in data:
            raise ValueError("retain_nll needs a 'retain' corpus")

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        v = token_mean(nll(model, batch["retain"]), batch["retain"])
        return self.coef * v, {"reg_nll_retain": _f(v)}


class Regularized(Method):
    """A method plus regularisers; loss = method loss + sum of regulariser terms."""

    def __init__(self, method: Any, regs: list[Any]) -> None:
        self.method, self.regs = method, regs
        self.name = getattr(method, "name", type(method).__name__)
        for attr in ("trainable_layers", "trainable_modules", "find_unused_parameters"):
            if hasattr(method, attr):
                setattr(self, attr, getattr(method, attr))

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.method.setup(model, data, cfg)
        for r in self.regs:
            if isinstance(r, RetainKL) and getattr(self.method, "ref", None) is not None:
                r.ref = self.method.ref  # share the frozen copy instead of making another
            r.setup(model, data, cfg)
        if hasattr(self.method, "trainable_layers"):
            self.trainable_layers = self.method.trainable_layers

    def on_train_start(self, model: nn.Module) -> None:
        for obj in (self.method, *self.regs):
            if hasattr(obj, "on_train_start"):
                obj.on_train_start(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(getattr(self.method, "trainable_parameters", lambda: [])())

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return dict(getattr(self.method, "trainable_state", lambda: {})())

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.method(model, batch, step, total_steps)
        logs = dict(logs)
        for r in self.regs:
            v, lg = r(model, batch, step, total_steps)
            loss = loss + v
            logs.update(lg)
        return loss, logs


# ---------------------------------------------------------------------------------------------
# representation-space methods


def hidden_states(
    model: nn.Module, b: dict[str, torch.Tensor], layers: list[int], grad: bool = True
) -> dict[int, torch.Tensor]:
    """Outputs of decoder ``layers`` for one corpus batch: layer -> (B, L, D).

    Hooks sit on the unwrapped model (``unwrap`` strips a DDP wrapper if one is passed).
    """
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, LayerCapture(unwrap(model), layers, detach=not grad) as cap:
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return dict(cap.outputs)


def _mean_over_layers(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean()


def _ramp(schedule: str, p: float, end: float) -> tuple[float, float]:
    """(reroute multiplier, retain multiplier) at training progress p in [0, 1]."""
    if schedule == "ramp":  # Deep Ignorance's variant: reroute 1 -> end, retain 0 -> 1
        return 1.0 - (1.0 - end) * p, p
    if schedule == "cb":  # Zou et al. 2024: c_s = 1 - t/2T, c_r = t/2T
        return 1.0 - p / 2, p / 2
    if schedule == "constant":
        return 1.0, 1.0
    raise ValueError(f"unknown coefficient schedule {schedule!r}; use ramp|cb|constant")


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

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        n = len(get_decoder_layers(model))
        layer = round(0.22 * (n - 1)) if self.layer is None else self.layer
        self.layer = _layer_list(model, [layer])[0]
        self.trainable_layers = list(range(max(0, self.layer - 2), self.layer + 1))
        self.ref = frozen_copy(model)
        d = model.config.hidden_size
        g = torch.Generator().manual_seed(int(getattr(cfg, "seed", 0)) + 17)
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
        return forget + self.alpha * retain, {"rmu_forget": _f(forget), "rmu_retain": _f(retain)}


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
        _ramp(schedule, 0.0, reroute_end)

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.layers = _layer_list(model, self.layers)
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
            r = batch["retain"]
            h_r = hidden_states(model, r, self.layers)
            h_r0 = hidden_states(self.ref, r, self.layers, grad=False)
            retain = _mean_over_layers(
                [token_mean((up(h_r[i]) - up(h_r0[i])).norm(dim=-1), r) for i in self.layers]
            )
        return h_f, _mean_over_layers(cos), retain

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        _, cos, retain = self._terms(model, batch)
        a, b = _ramp(self.schedule, _progress(step, total_steps), self.reroute_end)
        loss = self.reroute_coef * a * cos + self.retain_coef * b * retain
        return loss, {"cos": _f(cos), "retain_l2": _f(retain), "c_reroute": a, "c_retain": b}


def orthogonality_loss(h: torch.Tensor, b: dict[str, torch.Tensor]) -> torch.Tensor:
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


@register_method("orth_cb")
class OrthCB(RR):
    """Circuit breakers plus a within-batch orthogonality loss on mean-pooled forget
    representations, so each forget sequence is scrambled in a different direction (the seed's
    variant of Zou et al. 2024). The orth coefficient ramps up 0 -> ``orth_coef``; its value
    depends on the per-device batch size (pairs are formed within a device's micro-batch).
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
        p = _progress(step, total_steps)
        a, b = _ramp(self.schedule, p, self.reroute_end)
        orth = _mean_over_layers(
            [orthogonality_loss(up(h_f[i]), batch["forget"]) for i in self.layers]
        )
        loss = (
            self.reroute_coef * a * cos + self.retain_coef * b * retain + self.orth_coef * p * orth
        )
        return loss, {
            "cos": _f(cos),
            "retain_l2": _f(retain),
            "orth": _f(orth),
            "c_reroute": a,
            "c_retain": b,
            "c_orth": p,
        }


# ---------------------------------------------------------------------------------------------
# lenses


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

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """(B, L, D) hidden state of ``layer`` -> (B, L, V) logits."""
        if self.tuned and layer < len(self.translators) - 1:  # last layer: exact model logits
            t = self.translators[layer]
            h = h + t(h.to(t.weight.dtype)).to(h.dtype)
        return self.head(self.norm(h))


def train_tuned_lens(
    ref: nn.Module,
    corpus: TokenizedCorpus,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[TunedLens, list[float]]:
    """Fit a tuned lens on ``ref`` (frozen) by minimising KL(final || lens) summed over layers."""
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
            final = up(ref(**b).logits)
        logq = torch.log_softmax(final, -1)[mask]  # (T, V)
        loss = torch.zeros((), device=p.device)
        for i in range(n - 1):
            logp = torch.log_softmax(up(lens(cap.outputs[i], i)), -1)[mask]
            loss = loss + (logq.exp() * (logq - logp)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / max(1, n - 1))
    lens.translators.requires_grad_(False)
    for q, flag in flags:
        q.requires_grad_(flag)
    return lens, losses


@register_method("lens")
class Lens(Method):
    """Forget at every layer through a logit lens or a tuned lens (Belrose et al. 2023).

    Each target layer's forget hidden states are decoded by the (frozen) lens; the forget loss
    maximises the decoded entropy (``objective="entropy"``, loss = log V - H) or fits random
    target tokens (``"random"``, cross-entropy to uniform random ids drawn per step). Retain:
    ``"l2"`` distance of retain hidden states to the reference, or ``"kl"`` of the final logits.

    Args:
        lens: ``"logit"`` or ``"tuned"`` (trained in ``setup`` on the retain corpus, else forget).
        layers: target layers (default all).
    """

    find_unused_parameters = True

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

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.layers = _layer_list(model, self.layers)
        self.ref = frozen_copy(model)
        self.seed = int(getattr(cfg, "seed", 0))
        if self.lens_kind == "tuned":
            corpus = data.get("retain", data["forget"])
            self.lens, self.lens_fit = train_tuned_lens(
                self.ref, corpus, self.lens_steps, self.lens_lr, seed=self.seed
            )
        else:
            norm, head = get_unembedding(self.ref)
            self.lens = TunedLens(
                norm,
                head,
                len(get_decoder_layers(self.ref)),
                self.ref.config.hidden_size,
                tuned=False,
            )

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
        forget = _mean_over_layers(terms)
        loss, logs = forget, {"lens_forget": _f(forget)}
        if self.retain_coef and "retain" in batch:
            r = batch["retain"]
            if self.retain == "l2":
                h_r = hidden_states(model, r, self.layers)
                h_r0 = hidden_states(self.ref, r, self.layers, grad=False)
                ret = _mean_over_layers(
                    [token_mean(up(h_r[i] - h_r0[i]).norm(dim=-1), r) for i in self.layers]
                )
            else:
                logits = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
                with torch.no_grad():
                    ref_logits = self.ref(
                        input_ids=r["input_ids"], attention_mask=r["attention_mask"]
                    ).logits
                ret = token_mean(kl_per_token(ref_logits, logits), r)
            loss = loss + self.retain_coef * ret
            logs["lens_retain"] = _f(ret)
        return loss, logs


# ---------------------------------------------------------------------------------------------
# sequential (layer-by-layer) unlearning


@register_method("sequential")
class Sequential(Method):
    """Unlearn one decoder layer at a time, from the last to the first.

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

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.order = sorted(_layer_list(model, self.layers), reverse=True)
        self.trainable_layers = list(self.order)
        self.ref = frozen_copy(model)

    def stage_layer(self, step: int, total_steps: int) -> int:
        k = min(len(self.order) - 1, step * len(self.order) // max(1, total_steps))
        return self.order[k]

    def _mapped_logits(
        self, model: nn.Module, b: dict[str, torch.Tensor], layer: int
    ) -> torch.Tensor:
        blocks = get_decoder_layers(unwrap(model))

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
        loss, logs = forget, {"seq_forget": _f(forget), "layer": float(layer)}
        if self.retain_coef and "retain" in batch:
            r = batch["retain"]
            ret = token_mean(
                self._token_nll(self._mapped_logits(model, r, layer), r["input_ids"]), r
            )
            loss = loss + self.retain_coef * ret
            logs["seq_retain"] = _f(ret)
        return loss, logs


# ---------------------------------------------------------------------------------------------
# attribution-guided combinations


@register_method("ga_orth")
class GAOrth(Method):
    """Attribution approach 5: token-weighted gradient ascent on forget tokens, plus the
    ``orth_cb`` orthogonality loss on (weight-pooled) forget representations, plus retain NLL.
    Pair with retain data restricted to general-teaching tokens (``retain_weights`` in
    :class:`~magic_unlearn.unlearn.api.UnlearnConfig`). GA after Jang et al. 2023; the
    orthogonality term is the seed's ``orth_cb`` variant of Zou et al. 2024.
    """

    find_unused_parameters = True

    def __init__(
        self, layers: list[int] | None = None, orth_coef: float = 1.0, retain_coef: float = 1.0
    ) -> None:
        self.layers, self.orth_coef, self.retain_coef = layers, orth_coef, retain_coef

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.layers = _layer_list(model, self.layers)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = batch["forget"]
        with LayerCapture(unwrap(model), self.layers) as cap:
            x = nll(model, f)
        ga = -token_mean(x, f)
        orth = _mean_over_layers([orthogonality_loss(up(cap.outputs[i]), f) for i in self.layers])
        p = _progress(step, total_steps)
        loss = ga + self.orth_coef * p * orth
        logs = {"nll_forget": -_f(ga), "orth": _f(orth)}
        loss = add_retain_nll(loss, logs, model, batch, self.retain_coef)
        return loss, logs


@register_method("dir_ablate")
class DirectionAblation(Method):
    """Trained ablation of given residual directions (attribution approach 4, trained variant):
    minimise the squared projection of forget hidden states on each layer's directions, with a
    retain L2 to the reference. Directions come from :func:`magic_unlearn.unlearn.edit.
    find_directions` (``directions={layer: (k, D) tensor}``), as in Arditi et al. 2024's
    directional ablation but learned into the weights.
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

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: Any) -> None:
        self.layers = _layer_list(model, list(self.directions))
        p = next(model.parameters())
        self.q = {
            i: self.directions[j].to(p.device, torch.float32)
            for i, j in zip(self.layers, self.directions, strict=True)
        }
        self.ref = frozen_copy(model)

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        f = batch["forget"]
        h = hidden_states(model, f, self.layers)
        proj = _mean_over_layers(
            [
                token_mean(
                    ((up(h[i]) @ self.q[i].T.to(up(h[i]).dtype)) ** 2).sum(-1), f, nonneg=True
                )
                for i in self.layers
            ]
        )
        loss, logs = proj, {"proj": _f(proj)}
        if self.retain_coef and "retain" in batch:
            r = batch["retain"]
            h_r = hidden_states(model, r, self.layers)
            h_r0 = hidden_states(self.ref, r, self.layers, grad=False)
            ret = _mean_over_layers(
                [token_mean(up(h_r[i] - h_r0[i]).norm(dim=-1), r) for i in self.layers]
            )
            loss = loss + self.retain_coef * ret
            logs["retain_l2"] = _f(ret)
        return loss, logs
