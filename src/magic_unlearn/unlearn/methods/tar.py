"""Meta-unlearning against simulated fine-tuning attacks, with exact metagradients.

TAR (Tamirisa et al. 2025, "Tamper-Resistant Safeguards for Open-Weight LLMs") trains the
weights theta so that the forget objective stays bad *after* an adversary fine-tunes them:

    min_theta  base(theta) + tr_coef * E_attack[ -L_forget(attack_K(theta)) ] + retain(theta)

where attack_K runs K optimiser steps on forget text with a sampled learning rate and sampled
documents. TAR differentiates through attack_K to first order (it averages gradients taken at
the attacked weights). Here d L_forget(attack_K(theta)) / d theta is exact:
:func:`magic_unlearn.attribution.attack_metagradient` replays the K steps and runs MAGIC's
reverse pass (optimiser state, Hessian-vector products) back to theta.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.metagrad import attack_metagradient
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.registry import get_method, register_method
from magic_unlearn.unlearn.methods.sam import linear_surrogate
from magic_unlearn.unlearn.methods.tensors import (
    Batch,
    CorpusBatch,
    log_value,
    nll,
    token_mean,
    unwrap_model,
    up,
)

if TYPE_CHECKING:  # typing only: the loop imports the methods (a cycle at runtime)
    from magic_unlearn.unlearn.loop import LoopConfig

TR_LOSSES = ("nll", "entropy")


def tamper_loss(model: nn.Module, b: CorpusBatch, kind: str, cap: float | None) -> torch.Tensor:
    """The tamper-resistance objective on a forget batch, to be *minimised* after the attack.

    ``nll``: ``-min(NLL, cap)`` (token-weighted mean NLL; the cap stops the push once the
    attacked model is that bad). ``entropy``: ``-H`` (mean entropy of the next-token
    distribution at weighted positions; TAR's choice, bounded by log |V|).
    """
    if kind == "nll":
        v = token_mean(nll(model, b), b)
        return -(v.clamp(max=cap) if cap is not None else v)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    lp = torch.log_softmax(up(logits[:, :-1]), -1)
    ent = -(lp.exp() * lp).sum(-1)  # (B, L-1): entropy of the distribution predicting token j
    ent = torch.cat([torch.zeros_like(ent[:, :1]), ent], dim=1)  # column j = token j
    return -token_mean(ent, b)


@register_method("tar")
class TAR(Method):
    """Tamper-resistant unlearning: a base unlearning loss plus the forget loss *after* a
    sampled K-step simulated fine-tuning attack, differentiated exactly through the attack
    (TAR, Tamirisa et al. 2025, "Tamper-Resistant Safeguards for Open-Weight LLMs"; exact
    metagradients as in Engstrom et al. 2025, "Optimizing ML Training with Metagradient
    Descent").

    Each step (every ``every`` steps) samples an attack: a learning rate from ``attack_lrs``
    and ``attack_steps * attack_batch_size`` forget rows other than the current forget batch,
    then takes ``d tamper_loss(attack_K(theta)) / d theta`` on the current forget batch (its
    token weights select which tokens must stay unlearned: the MAGIC-guided variant).

    Args:
        base: a registered method whose loss runs at theta on the whole batch (``rr``,
            ``npo``, ...), or ``none``.
        base_kwargs: its constructor arguments.
        tr_coef: weight of the post-attack term.
        tr_loss: ``nll`` (``-min(NLL, tr_cap)``) or ``entropy`` (``-H``).
        tr_cap: cap of the post-attack NLL (``nll`` only; None: uncapped).
        attack_steps: K, the simulated attack's optimiser steps.
        attack_lrs: learning rates the attack samples from (uniformly).
        attack_batch_size: rows per attack step.
        attack_optimizer: ``sgd`` | ``momentum`` | ``adamw`` (the attribution engine's).
        attack_eps: AdamW's eps in the simulation (a larger eps keeps Adam's first-step
            derivative, ~1/eps for tiny gradients, well conditioned in fp32).
        retain_coef: weight of a retain NLL at theta (needs a retain corpus when > 0).
        every: simulate an attack every this many steps (the others run base + retain only).
    """

    def __init__(
        self,
        base: str = "none",
        base_kwargs: dict[str, Any] | None = None,
        tr_coef: float = 1.0,
        tr_loss: str = "nll",
        tr_cap: float | None = None,
        attack_steps: int = 4,
        attack_lrs: list[float] | None = None,
        attack_batch_size: int = 8,
        attack_optimizer: str = "adamw",
        attack_eps: float = 1e-6,
        retain_coef: float = 1.0,
        every: int = 1,
    ) -> None:
        if tr_loss not in TR_LOSSES:
            raise ValueError(f"tar: tr_loss={tr_loss!r}; use one of {TR_LOSSES}")
        if base == "tar":
            raise ValueError("tar: base cannot be 'tar'")
        if attack_steps < 1 or attack_batch_size < 1 or every < 1:
            raise ValueError("tar: attack_steps, attack_batch_size and every must be >= 1")
        self.base = None if base in (None, "none") else get_method(base, **(base_kwargs or {}))
        self.tr_coef, self.tr_loss, self.tr_cap = float(tr_coef), tr_loss, tr_cap
        self.attack_steps, self.attack_batch_size = int(attack_steps), int(attack_batch_size)
        self.attack_lrs = [float(x) for x in (attack_lrs or [1e-3])]
        self.attack_optimizer, self.attack_eps = attack_optimizer, float(attack_eps)
        self.retain_coef, self.every = float(retain_coef), int(every)
        TrajectoryConfig(optimizer=attack_optimizer)  # fail on a bad optimizer name now
        self.forget: TokenizedCorpus | None = None
        self.seed = 0

    @property
    def trainable_layers(self) -> list[int] | None:  # type: ignore[override]
        return self.base.trainable_layers if self.base is not None else None

    @property
    def trainable_modules(self) -> list[str] | None:  # type: ignore[override]
        return self.base.trainable_modules if self.base is not None else None

    @property
    def find_unused_parameters(self) -> bool:  # type: ignore[override]
        return bool(self.base.find_unused_parameters) if self.base is not None else False

    @property
    def ref(self) -> nn.Module | None:  # type: ignore[override]
        return self.base.ref if self.base is not None else None

    def setup(self, model: nn.Module, data: dict[str, TokenizedCorpus], cfg: LoopConfig) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("tar runs single-process (its metagradient is not synchronised)")
        if self.retain_coef > 0 and "retain" not in data:
            raise ValueError("tar: retain_coef > 0 needs a 'retain' corpus (or retain_coef: 0)")
        self.forget = data["forget"]
        self.seed = int(cfg.seed)
        if self.base is not None:
            self.base.setup(model, data, cfg)

    def on_train_start(self, model: nn.Module) -> None:
        if self.base is not None:
            self.base.on_train_start(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.base.trainable_parameters() if self.base is not None else []

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.base.trainable_state() if self.base is not None else {}

    def attack(self, step: int, exclude: torch.Tensor) -> tuple[TokenizedCorpus, TrajectoryConfig]:
        """The simulated attack of ``step``: its rows (not in ``exclude``) and its run."""
        assert self.forget is not None, "setup() was not called"
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        n = len(self.forget)
        need = self.attack_steps * self.attack_batch_size
        pool = torch.tensor(
            [i for i in range(n) if i not in set(exclude.tolist())] or list(range(n))
        )
        reps = -(-need // len(pool))
        rows = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])[:need]
        lr = self.attack_lrs[int(torch.randint(len(self.attack_lrs), (1,), generator=g))]
        cfg = TrajectoryConfig(
            optimizer=self.attack_optimizer,
            lr=lr,
            eps=self.attack_eps,
            steps=self.attack_steps,
            batch_size=self.attack_batch_size,
            seed=step,
            dtype=None,
            checkpointing="every",
            storage="gpu",  # the model's device
            cuda_graphs=False,
            compile_attention=False,
        )
        return self.forget.subset(rows), cfg

    def __call__(
        self, model: nn.Module, batch: Batch, step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = torch.zeros((), device=batch["forget"]["input_ids"].device)
        logs: dict[str, float] = {}
        if self.base is not None:
            loss, logs = self.base(model, batch, step, total_steps)
            logs = dict(logs)
        if self.retain_coef > 0:
            r = token_mean(nll(model, batch["retain"]), batch["retain"])
            logs["nll_retain"] = log_value(r)
            loss = loss + self.retain_coef * r
        if self.tr_coef > 0 and step % self.every == 0:
            fb = batch["forget"]
            rows, tcfg = self.attack(step, fb["index"].cpu())
            inner = unwrap_model(model)

            def post_attack(m: nn.Module) -> torch.Tensor:
                return tamper_loss(m, fb, self.tr_loss, self.tr_cap)

            val, grads = attack_metagradient(inner, rows, post_attack, tcfg)
            pairs = [
                (p, g) for p, g in zip(inner.parameters(), grads, strict=True) if p.requires_grad
            ]
            tr = linear_surrogate(
                [p for p, _ in pairs],
                [g for _, g in pairs],
                torch.tensor(val, device=loss.device),
            )
            loss = loss + self.tr_coef * tr
            logs.update(tr_after_attack=val, attack_lr=tcfg.lr)
        return loss, logs
