"""Memory model of (sharded) MAGIC: bytes per GPU and per host for W shards, before running.

What one rank holds during MAGIC's reverse pass (``magic.attribute`` for W = 1,
``sharded.attribute_sharded`` for W ranks). P trained parameters of ``param_bytes`` each (bf16:
2), F frozen ones (LoRA's base model), Q queries, b optimiser buffers per parameter (SGD 0,
momentum 1, AdamW 2), adjoints of ``adjoint_bytes`` (4; 8 for float64 runs):

Persistent, all run long:

============  ===================================================================================
params        P / W * param_bytes (the rank's shards; the module's tensors when W = 1)
frozen        F * frozen_bytes (replicated)
optimizer     b * P / W * param_bytes
adjoints      Q * (1 + b) * P / W * adjoint_bytes (of theta_t and of the buffers)
adjoint of g  Q * P / W * adjoint_bytes (reused by every step)
staging       CPU storage: one state (1 + b) * P / W * param_bytes, the prefetch buffer;
              GPU storage: every stored state
============  ===================================================================================

Transient, the largest of three phases of a reverse step:

- double backward: ``gathered`` full weights P * param_bytes (W > 1: kept by the graph; W = 1:
  the module's own tensors), g_t P / W * param_bytes (output of the first backward) and the
  ``activations`` of the graph, rows * seq * act_bytes / 2 * (layers * hidden * c_layer +
  vocab * c_vocab) for rows = min(ceil(B / W), reverse_microbatch);
- Hessian-vector product: g_t plus the HVP, P / W * param_bytes (added into the fp32 adjoints
  element by element);
- AdamW's VJP: the recomputed g_t P / W * param_bytes plus ~10 fp32 temporaries of the largest
  tensor the VJP loops over (a unit's shard when sharded, a weight matrix when not).

Host (CPU storage) or disk, per rank: the peak number of stored states (:func:`stored_states`, the
REPLAY schedule of ``replay.py``) times (1 + b) * P / W * param_bytes.

Activation coefficients are bytes per token and layer in units of ``hidden`` (16-bit
activations). A priori: 34 for a training step (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", fused attention: no s^2 term) and about three times
that for MAGIC's double backward, which keeps the first backward's graph. The benchmark
(``benchmarks/bench_scale.py``) fits c_layer on one measured run (:func:`fit_c_layer`) and checks
the model on the others; ``docs/scale.md`` has the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

GB = 2**30

# a priori activation coefficients (bytes per token and layer / hidden; 16-bit activations)
C_LAYER_TRAIN = 34.0
C_LAYER_REVERSE = 100.0
C_VOCAB_TRAIN = 10.0  # bf16 logits, fp32 log-softmax and its gradient (bytes / vocab / token)
C_VOCAB_REVERSE = 20.0
OPT_BUFFERS = {"sgd": 0, "momentum": 1, "adamw": 2}
_ADAMW_TEMPS = 10  # fp32 temporaries of optim.AdamW.vjp per tensor


@dataclass
class ModelStats:
    """Sizes of a decoder-only model for the memory model.

    Attributes:
        trained: trained parameters P (the whole model, or the LoRA adapters).
        frozen: frozen parameters F (LoRA's base model; 0 for full training).
        layers, hidden, vocab: the transformer's shape (activations).
        max_tensor: elements of the largest trained tensor (the plain engine's VJP loop).
        max_unit: elements of the largest shard unit before sharding (a decoder layer, or the
            embeddings and the rest; ``shard.py``).
    """

    trained: int
    frozen: int
    layers: int
    hidden: int
    vocab: int
    max_tensor: int = 0
    max_unit: int = 0

    @classmethod
    def gpt_neox(
        cls,
        hidden: int,
        layers: int,
        intermediate: int,
        vocab: int,
        lora_r: int | None = None,
        lora_targets: tuple[str, ...] = (
            "query_key_value",
            "dense",
            "dense_h_to_4h",
            "dense_4h_to_h",
        ),
    ) -> ModelStats:
        """Parameter counts of a GPT-NeoX (untied embeddings), optionally with LoRA adapters."""
        h, i = hidden, intermediate
        linears = {
            "query_key_value": (h, 3 * h),
            "dense": (h, h),
            "dense_h_to_4h": (h, i),
            "dense_4h_to_h": (i, h),
        }
        per_layer = sum(a * b + b for a, b in linears.values()) + 4 * h  # + 2 layer norms
        rest = 2 * vocab * h + 2 * h
        total = rest + layers * per_layer
        if lora_r is None:
            biggest = max(vocab * h, *(a * b for a, b in linears.values()))
            return cls(total, 0, layers, h, vocab, biggest, max(per_layer, rest))
        adapters = {n: lora_r * (a + b) for n, (a, b) in linears.items() if n in lora_targets}
        per_lora = sum(adapters.values())
        biggest = max(max(lora_r * a, lora_r * b) for n, (a, b) in linears.items())
        return cls(layers * per_lora, total, layers, h, vocab, biggest, per_lora)

    @classmethod
    def of_model(
        cls, model: Any, trained: int, max_tensor: int = 0, max_unit: int = 0
    ) -> ModelStats:
        """Stats of a built Hugging Face model with ``trained`` trained parameters."""
        c = model.config
        total = sum(p.numel() for p in model.parameters())
        return cls(
            trained,
            max(0, total - trained),
            c.num_hidden_layers,
            c.hidden_size,
            c.vocab_size,
            max_tensor,
            max_unit,
        )


@dataclass
class MemoryEstimate:
    """Bytes per GPU by component (``gpu``) and per rank on the host or disk (``host``).

    ``gpu`` holds the persistent components plus ``transient``, the largest phase, named in
    ``phase``; ``phases`` has all three.
    """

    gpu: dict[str, float] = field(default_factory=dict)
    host: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    stored_states: int = 0
    replayed_steps: int = 0

    @property
    def gpu_total(self) -> float:
        return float(sum(self.gpu.values()))

    @property
    def host_total(self) -> float:
        return float(sum(self.host.values()))

    def summary(self) -> dict[str, Any]:
        """GiB per component plus totals (what the benchmark prints)."""
        out: dict[str, Any] = {f"gpu.{k}": round(v / GB, 3) for k, v in self.gpu.items()}
        out.update({f"host.{k}": round(v / GB, 3) for k, v in self.host.items()})
        out.update(
            gpu_total=round(self.gpu_total / GB, 3),
            host_total=round(self.host_total / GB, 3),
            phase=self.phase,
            stored_states=self.stored_states,
            replayed_steps=self.replayed_steps,
        )
        return out


def stored_states(steps: int, checkpointing: str, k: int | None = None) -> tuple[int, int]:
    """(peak stored states, replayed training steps) of the REPLAY schedule of ``replay.py``.

    ``every`` stores every state; ``sqrt`` every k-th (k = ceil(sqrt T)) plus the states of the
    segment being reversed; ``kary`` k top states, each segment split k ways recursively.
    """
    if checkpointing == "auto":  # at most sqrt's states when they do not all fit on the GPU
        checkpointing = "sqrt"
    if checkpointing == "every":
        return steps, 0
    if checkpointing not in ("sqrt", "kary"):
        raise ValueError(f"checkpointing={checkpointing!r}; use auto | every | sqrt | kary")
    kary = checkpointing == "kary"
    kk = (k or 2) if kary else (k or max(1, math.ceil(math.sqrt(steps))))
    top = list(range(0, steps, math.ceil(steps / kk) if kary else kk))
    live, peak, replayed = len(top), len(top), 0

    def rev(a: int, b: int, owned: bool) -> None:
        nonlocal live, peak, replayed
        if b - a > 1:
            pts = list(range(a, b, math.ceil((b - a) / kk) if kary else 1))
            for p0, p1 in zip(pts, pts[1:], strict=False):
                replayed += p1 - p0
                live += 1
                peak = max(peak, live)
            for i in reversed(range(len(pts))):
                rev(pts[i], pts[i + 1] if i + 1 < len(pts) else b, owned=i > 0)
        if owned:
            live -= 1

    for i in reversed(range(len(top))):
        # a top state is freed once its segment is reversed, but s_0 (the trust report's
        # start) stays (replay.Replay.reverse_states)
        rev(top[i], top[i + 1] if i + 1 < len(top) else steps, owned=i > 0)
    return peak, replayed


def _activations(
    stats: ModelStats, rows: int, seq: int, act_bytes: int, c_layer: float, c_vocab: float
) -> float:
    per_token = stats.layers * stats.hidden * c_layer + stats.vocab * c_vocab
    return rows * seq * act_bytes / 2 * per_token


def magic_memory(
    stats: ModelStats,
    *,
    world_size: int = 1,
    batch_size: int = 4,
    seq: int = 1024,
    optimizer: str = "sgd",
    queries: int = 1,
    param_bytes: int = 2,
    frozen_bytes: int | None = None,
    adjoint_bytes: int | None = None,
    act_bytes: int = 2,
    storage: str = "cpu",
    checkpointing: str = "sqrt",
    steps: int = 16,
    checkpoint_k: int | None = None,
    reverse_microbatch: int | None = None,
    sharded: bool | None = None,
    c_layer: float = C_LAYER_REVERSE,
    c_vocab: float = C_VOCAB_REVERSE,
) -> MemoryEstimate:
    """Predicted peak memory of MAGIC's reverse pass per GPU (and host) on ``world_size`` ranks.

    Args:
        stats: model sizes.
        world_size: shards W (ranks).
        batch_size, seq: rows B per step and their length; each rank runs ceil(B / W) rows.
        optimizer: ``sgd`` | ``momentum`` | ``adamw``.
        queries: measurements Q (each has its own adjoints).
        param_bytes, frozen_bytes, adjoint_bytes, act_bytes: bytes per element of trained
            parameters (LoRA adapters of a bf16 model: 4), frozen ones (None: ``param_bytes``),
            adjoints (None: 4, or 8 for float64) and activations (2 under bf16 autocast).
        storage, checkpointing, steps, checkpoint_k: the trajectory's checkpoint settings.
        reverse_microbatch: rows per double backward (None: all of the rank's rows).
        sharded: the sharded engine (flat units); None: ``world_size > 1``.
        c_layer, c_vocab: activation coefficients (module docstring).
    """
    if optimizer not in OPT_BUFFERS:
        raise ValueError(f"optimizer={optimizer!r}; use one of {tuple(OPT_BUFFERS)}")
    W, P, nb, pb = world_size, stats.trained, OPT_BUFFERS[optimizer], param_bytes
    ab = adjoint_bytes or (8 if param_bytes == 8 else 4)
    sharded = W > 1 if sharded is None else sharded
    shard = P / W
    rows = math.ceil(batch_size / W)
    if reverse_microbatch:
        rows = min(rows, reverse_microbatch)
    if storage == "auto":  # GPU while the planned budget lasts, then pinned host: count as cpu
        storage = "cpu"
    n_states, replayed = stored_states(steps, checkpointing, checkpoint_k)
    state = (1 + nb) * shard * pb
    gpu = {
        "frozen": stats.frozen * (frozen_bytes or pb),
        "params": shard * pb,
        "optimizer": nb * shard * pb,
        "adjoints": queries * (1 + nb) * shard * ab,
        "adjoint_of_g": queries * shard * ab,
        "staging": state * {"gpu": n_states, "cpu": 1}.get(storage, 0),
    }
    g = shard * pb
    vjp_tensor = (stats.max_unit / W if sharded else stats.max_tensor) or shard
    phases = {
        "double_backward": (P * pb if W > 1 else 0.0)
        + g
        + _activations(stats, rows, seq, act_bytes, c_layer, c_vocab),
        "hvp": g + shard * pb,
        "optimizer_vjp": g + _ADAMW_TEMPS * vjp_tensor * ab if optimizer == "adamw" else 0.0,
    }
    phase = max(phases, key=lambda k: phases[k])
    gpu["transient"] = phases[phase]
    host = {"checkpoints": state * n_states if storage in ("cpu", "disk") else 0.0}
    return MemoryEstimate(gpu, host, phases, phase, n_states, replayed)


def training_memory(
    stats: ModelStats,
    *,
    world_size: int = 1,
    batch_size: int = 4,
    seq: int = 1024,
    optimizer: str = "sgd",
    param_bytes: int = 2,
    frozen_bytes: int | None = None,
    act_bytes: int = 2,
    c_layer: float = C_LAYER_TRAIN,
    c_vocab: float = C_VOCAB_TRAIN,
) -> MemoryEstimate:
    """Predicted peak memory per GPU of plain training of the same run (FSDP-style when W > 1).

    Parameters, gradients and optimizer state are sharded; a unit's full weights are gathered
    while it runs (two units at a time: FSDP prefetches); activations are those of a first-order
    backward.
    """
    W, P, nb, pb = world_size, stats.trained, OPT_BUFFERS[optimizer], param_bytes
    rows = math.ceil(batch_size / W)
    gpu = {
        "frozen": stats.frozen * (frozen_bytes or pb),
        "params": P / W * pb,
        "grads": P / W * pb,
        "optimizer": nb * P / W * pb,
        # FSDP frees a unit's gathered weights after its forward (and prefetches the next)
        "transient": (2 * stats.max_unit * pb if W > 1 else 0.0)
        + _activations(stats, rows, seq, act_bytes, c_layer, c_vocab),
    }
    return MemoryEstimate(gpu=gpu, phases={"backward": gpu["transient"]}, phase="backward")


def fit_c_layer(measured_bytes: float, stats: ModelStats, kind: str = "magic", **kw: Any) -> float:
    """The c_layer for which the model (``magic`` or ``training``) predicts ``measured_bytes``.

    Assumes the double backward is the peak phase (it is for the benchmark's runs; the estimate
    names its phase). The prediction is affine in c_layer there, so two evaluations solve it.
    """
    fn = training_memory if kind == "training" else magic_memory

    def total(c: float) -> float:
        e = fn(stats, c_layer=c, **kw)
        tr = e.phases.get("double_backward", e.phases.get("backward", 0.0))
        return e.gpu_total - e.gpu["transient"] + tr

    at0, at1 = total(0.0), total(1.0)
    return (measured_bytes - at0) / (at1 - at0)


__all__ = [
    "C_LAYER_REVERSE",
    "C_LAYER_TRAIN",
    "GB",
    "MemoryEstimate",
    "ModelStats",
    "fit_c_layer",
    "magic_memory",
    "stored_states",
    "training_memory",
]
