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
PRECISIONS = ("fp32", "tf32", "bf16")
# AdamW's default float64 prefix: its warmup, within these bounds (the cost is a float64 forward
# and reverse of k steps; measured: docs/benchmarks.md, "The filtered start's fp32 error")
PREFIX_AUTO_MIN, PREFIX_AUTO_MAX = 8, 16
TRUST_UNITS = ("doc", "token")
# fields that change only the reverse pass or the trust report, never the trained trajectory
# (retraining caches such as LDS ignore them)
REVERSE_ONLY = (
    "float64_prefix",
    "trust",
    "adam_denominator",
    "reverse_microbatch",
    "compile_attention",
)
ADAM_DENOMINATORS = ("exact", "frozen")


@dataclass
class TrustConfig:
    """The trust report that ``attribute`` adds to every MAGIC artifact (``attribution/trust.py``).

    Attributes:
        enabled: compute the report (costs ``directions * len(step_sizes)`` retrains of the
            trajectory, without reverse passes).
        directions: random drop-directions of the smoothness check; direction v is -1 on a
            random ``fraction`` of the ``unit``s (0 elsewhere), so step size h down-weights them
            by h and h = 1 drops them.
        step_sizes: the step sizes h at which the first-order prediction h <scores, v> is
            compared with the retrained change of each eval loss.
        fraction, unit: share of ``doc``s or ``token``s a direction touches.
        seed: seed of the directions.
        strict: refuse (raise ``UntrustworthyScoresError``, write nothing) unless the verdict is
            ``reliable``. CLI: ``magic-unlearn attribute --strict``.
        precision_samples: reverse steps after the float64 prefix (evenly spread) that are also
            recomputed in float64 for the precision check, from the run's own state and from
            the float64 trajectory's (costs two float64 reverse steps each, the float64 forward
            up to the last sample, and a host copy of the adjoints at each sample; 0, or the
            report off: the prefix's last steps only).
    """

    enabled: bool = True
    directions: int = 2
    step_sizes: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    fraction: float = 0.1
    unit: str = "doc"
    seed: int = 0
    strict: bool = False
    precision_samples: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.precision_samples, int) or self.precision_samples < 0:
            raise ValueError(
                f"TrustConfig.precision_samples={self.precision_samples!r}: use an integer >= 0"
            )
        if self.directions < 1:
            raise ValueError(f"TrustConfig.directions={self.directions!r}: use an integer >= 1")
        self.step_sizes = [float(h) for h in self.step_sizes]
        if not self.step_sizes or any(not 0 < h <= 1 for h in self.step_sizes):
            raise ValueError(
                f"TrustConfig.step_sizes={self.step_sizes!r}: use one or more numbers in (0, 1]"
            )
        if not 0 < self.fraction < 1:
            raise ValueError(f"TrustConfig.fraction={self.fraction!r}: use a number in (0, 1)")
        if self.unit not in TRUST_UNITS:
            raise ValueError(f"TrustConfig.unit={self.unit!r}: use one of {TRUST_UNITS}")
        if self.strict and not self.enabled:
            raise ValueError(
                "TrustConfig.strict=true needs trust.enabled=true (there is nothing to enforce)"
            )


@dataclass
class TrajectoryConfig:
    """One deterministic fine-tuning run (data order, optimiser, schedule) plus reverse-pass knobs.

    Attributes:
        optimizer: a registered trajectory optimiser (``optim.OPTIMIZERS``): "sgd" |
            "momentum" (heavy ball, torch convention) | "adamw".
        lr: peak learning rate.
        momentum: heavy-ball coefficient (optimizer="momentum").
        betas, eps, bias_correction: AdamW moments.
        adam_denominator: AdamW's reverse pass. "exact": differentiate through the
            normalisation by sqrt(v_hat) + eps (the true derivative; mean-relative, the scores
            sum to ~0). "frozen": hold each step's sqrt(v_hat) + eps at its recorded value, i.e.
            differentiate the recorded preconditioned momentum steps (absolute semantics; an
            approximation of the derivative, not the derivative).
        weight_decay: coupled L2 for sgd/momentum (torch SGD), decoupled for adamw.
        schedule: "constant" | "warmup" (linear warmup then constant) | "linear" | "cosine"
            (warmup then decay to ``min_lr_ratio * lr`` at the last step).
        warmup_steps: linear warmup length (lr_t = lr * (t + 1) / warmup_steps).
        steps: number of optimiser steps T.
        batch_size: rows per step; the data order is a fixed permutation per epoch from ``seed``.
        seed: data order and LoRA init seed.
        max_length: row length used when the CLI tokenizes the corpus.
        dtype: parameter dtype the run uses ("float32", "float64", "bfloat16"; null keeps it).
        precision: "fp32" (true float32 matmuls, whatever the process's TF32 flag), "tf32"
            (CUDA float32 matmuls on TF32 tensor cores: faster, ~1e-3 relative error per
            matmul; the same as fp32 on a CPU) or "bf16" (autocast of the model forward);
            trajectory and reverse alike.
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
        float64_prefix: recompute the reverse steps of the first this many training steps in
            float64 and use those (0: off; float64 runs need nothing). None (default): for
            AdamW its warmup, at least 8 and at most 16 steps (the cost is a float64 forward
            and reverse of that many steps), never more than ``steps``; 2 for the other
            optimisers (there it only measures precision, to ~1e-5, for the trust report).
            AdamW is ill-conditioned while its second moment is small: the derivative of
            g / (sqrt(v) + eps) reaches ~1/(4 eps) where |g| ~ eps, so the scores of those
            steps depend on g to ~1e-10, which fp32 and bf16 cannot resolve
            (``attribution/prefix.py``). On the small world's filtered start (AdamW 1e-4,
            warmup 8, eps 1e-8) fp32 agrees with float64 at Pearson 0.92-0.95 with 2 float64
            steps, 0.99 with 4, 1.0000 with 8; on the tiny world without warmup (AdamW 1e-3)
            the relative error falls from 1.1e-2 (2 steps) to 1.2e-3 (8) and 9e-5 (16)
            (docs/benchmarks.md, "The filtered start's fp32 error found, and fixed"). Under
            bf16 and tf32 the float64 steps only measure precision for the trust report (their
            errors are in every step; replacing the first ones made bf16 scores worse) and the
            scores are kept.
        trust: the trust report (:class:`TrustConfig`); ``trust.strict`` refuses scores whose
            verdict is not ``reliable``.
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    adam_denominator: str = "exact"
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
    float64_prefix: int | None = None
    trust: TrustConfig = field(default_factory=TrustConfig)

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
        if self.adam_denominator not in ADAM_DENOMINATORS:
            raise bad("adam_denominator", self.adam_denominator, ADAM_DENOMINATORS)
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
        if self.float64_prefix is not None and (
            not isinstance(self.float64_prefix, int) or self.float64_prefix < 0
        ):
            raise bad("float64_prefix", self.float64_prefix, "null (auto) or an integer >= 0")
        if isinstance(self.trust, dict):
            self.trust = TrustConfig(**self.trust)
        elif self.trust is None:
            self.trust = TrustConfig(enabled=False)
        if self.lora is not None and self.lora.dropout:
            raise bad("lora.dropout", self.lora.dropout, "0 (a replayed trajectory has no dropout)")

    @property
    def prefix_len(self) -> int:
        """Training steps whose reverse steps run in float64 (``float64_prefix`` resolved)."""
        if self.float64_prefix is not None:
            k = self.float64_prefix
        elif self.optimizer == "adamw":
            k = min(max(PREFIX_AUTO_MIN, self.warmup_steps), PREFIX_AUTO_MAX)
        else:
            k = 2
        return min(k, self.steps)

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
