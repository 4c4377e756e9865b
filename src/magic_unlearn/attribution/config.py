"""Trajectory config: the fine-tuning run that MAGIC differentiates through.

Loadable with ``magic_unlearn.config.load_config(TrajectoryConfig, "traj.yaml", ["lr=1e-4"])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from magic_unlearn.attribution.optim import OPTIMIZERS
from magic_unlearn.lora import LoraSpec
from magic_unlearn.schedules import SCHEDULES

CHECKPOINTING = ("auto", "every", "sqrt", "kary")
STORAGE = ("auto", "gpu", "cpu", "disk")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrajectoryConfig:
    """One deterministic fine-tuning run (data order, optimiser, schedule) plus reverse-pass knobs.

    Attributes:
        optimizer: a registered trajectory optimiser (``optim.OPTIMIZERS``): "sgd" |
            "momentum" (heavy ball, torch convention) | "adamw".
        lr: peak learning rate.
        momentum: heavy-ball coefficient (optimizer="momentum").
        betas, eps, bias_correction: AdamW moments.
        weight_decay: coupled L2 for sgd/momentum (torch SGD), decoupled for adamw.
        schedule: "constant" | "warmup" (linear warmup then constant) | "linear" | "cosine"
            (warmup then decay to ``min_lr_ratio * lr`` at the last step).
        warmup_steps: linear warmup length (lr_t = lr * (t + 1) / warmup_steps).
        steps: number of optimiser steps T.
        batch_size: rows per step; the data order is a fixed permutation per epoch from ``seed``.
        seed: data order and LoRA init seed.
        max_length: row length used when the CLI tokenizes the corpus.
        dtype: parameter dtype the run uses ("float32", "float64", "bfloat16"; null keeps it).
        precision: "fp32" or "bf16" (autocast of the model forward; trajectory and reverse alike).
        lora: LoRA adapters, or None for full-parameter training.
        checkpointing: "auto" (sqrt, except that the last steps store every state, as many as
            fit in GPU memory: every state, no replay at all, when the whole run fits; plain
            sqrt with "cpu"/"disk" storage or on a CPU) | "every" (store every state) | "sqrt"
            (store every k-th, replay segments; k = ceil(sqrt(T)) by default) | "kary" (k-ary
            REPLAY, O(k log_k T) states).
        checkpoint_k: k for sqrt/auto (segment length) / kary (branching factor, default 2).
        storage: where checkpoints live: "auto" (GPU memory while states fit in a budget of
            free memory planned from the measured size of a training step, then pinned host
            memory; host memory on a CPU), "gpu" (model device), "cpu" (pinned host memory on
            a GPU), or "disk".
        resume_every: save the reverse-pass state every this many reverse steps (needs out=).
        drift_tol: max difference of a replayed state from the recorded one, in units of one
            training update (random projections). None: 0.05, or 0.5 with bf16 autocast, where
            bf16 rounding turns any varying summation order (atomics) into 1-ulp flips that
            compound over a replayed segment: 0.26 of an update was measured on an H200 with
            fused SDPA kernels; with the math kernel the engine now uses, replays were exact.
        reverse_microbatch: rows per double-backward pass in the reverse step (None: the whole
            batch); smaller uses less memory, same scores.
        cuda_graphs: on a GPU, capture the training step and the reverse step as CUDA graphs
            (each has fixed shapes) and replay them; removes the Python and kernel-launch
            overhead that dominates small and mid-size models. Falls back to eager execution,
            with a warning, when capture fails. Same scores either way.
        compile_attention: on a GPU, run the hand-derived double backwards of the reverse step
            (attention, LayerNorm, GELU) through ``torch.compile`` (fused kernels; ~5-10 s of
            compiling the first time, then loaded from the on-disk cache,
            ``compiled.compile_cache_dir``). Falls back to eager, with a warning.
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    bias_correction: bool = True
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    steps: int = 100
    batch_size: int = 8
    seed: int = 0
    max_length: int = 128
    dtype: str | None = "float32"
    precision: str = "fp32"
    lora: LoraSpec | None = None
    checkpointing: str = "auto"
    checkpoint_k: int | None = None
    storage: str = "auto"
    resume_every: int = 25
    drift_tol: float | None = None
    reverse_microbatch: int | None = None
    cuda_graphs: bool = True
    compile_attention: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, val: object, valid: object) -> ValueError:
            return ValueError(f"TrajectoryConfig.{name}={val!r} is invalid; use {valid}")

        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, tuple(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, SCHEDULES)
        if self.checkpointing not in CHECKPOINTING:
            raise bad("checkpointing", self.checkpointing, CHECKPOINTING)
        if self.storage not in STORAGE:
            raise bad("storage", self.storage, STORAGE)
        if self.precision not in PRECISIONS:
            raise bad("precision", self.precision, PRECISIONS)

        # numbers: checked here, before a forward pass trains on a NaN learning rate and the
        # replay reports the damage as trajectory drift
        def number(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v) and v <= hi
            ok = ok and (v > lo if lo_open else v >= lo)
            if not ok:
                span = f"{'>' if lo_open else '>='} {lo:g}" + (
                    f" and <= {hi:g}" if hi < math.inf else ""
                )
                raise bad(name, v, f"a finite number {span}")

        number("lr", 0.0, lo_open=True)
        number("momentum", 0.0, 1.0)
        number("eps", 0.0, lo_open=True)
        number("weight_decay", 0.0)
        number("min_lr_ratio", 0.0, 1.0)
        if self.drift_tol is not None:
            number("drift_tol", 0.0, lo_open=True)
        if self.steps < 1:
            raise bad("steps", self.steps, "an integer >= 1")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", self.warmup_steps, "an integer >= 0")
        if self.max_length < 2:
            raise bad("max_length", self.max_length, "an integer >= 2")
        if self.resume_every < 1:
            raise bad("resume_every", self.resume_every, "an integer >= 1")
        if self.reverse_microbatch is not None and self.reverse_microbatch < 1:
            raise bad("reverse_microbatch", self.reverse_microbatch, "null or an integer >= 1")
        if self.batch_size < 1:
            raise bad("batch_size", self.batch_size, "an integer >= 1")
        if len(self.betas) != 2:
            raise bad("betas", self.betas, "two numbers, e.g. [0.9, 0.999]")
        self.betas = [float(b) for b in self.betas]
        if not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise bad("betas", self.betas, "two finite numbers in [0, 1)")
        if self.checkpoint_k is not None and self.checkpoint_k < 1:
            raise bad("checkpoint_k", self.checkpoint_k, "null or an integer >= 1")
        if self.checkpointing == "kary" and (self.checkpoint_k or 2) < 2:
            raise bad("checkpoint_k", self.checkpoint_k, "an integer >= 2 for kary")
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)
        if self.lora is not None and self.lora.dropout:
            raise bad("lora.dropout", self.lora.dropout, "0 (a replayed trajectory has no dropout)")

    @property
    def drift_limit(self) -> float:
        if self.drift_tol is not None:
            return self.drift_tol
        return 0.5 if self.precision == "bf16" else 0.05

    @property
    def segment_k(self) -> int:
        """sqrt/auto: checkpoint spacing; kary: branching factor."""
        if self.checkpointing == "kary":
            return self.checkpoint_k or 2
        return self.checkpoint_k or max(1, math.ceil(math.sqrt(self.steps)))
