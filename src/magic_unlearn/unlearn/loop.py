"""One explicit training loop shared by every unlearning method and every tampering attack.

The loop is deliberately plain (torchtune style): build the optimizer over the trainable
parameters, then for each step draw one micro-batch per corpus, call the method's loss, backward,
clip, step. Everything a method needs beyond that (reference copies, random control vectors,
lenses) is set up by the method object itself, through the hooks of
:class:`~magic_unlearn.unlearn.methods.Method` (see :mod:`magic_unlearn.unlearn.methods`).

Batching. Each corpus is read through an infinite stream of seeded per-epoch permutations; the
micro-batch of (step t, accumulation micro-step m, rank r) takes stream positions
``((t * grad_accum + m) * world_size + r) * batch_size + [0, batch_size)``. So the examples seen
depend only on the step, which makes resumption exact, and a run on W processes sees the same
examples as one process with ``grad_accum * W`` accumulation steps (same global batch).

Distributed. Under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) the loop initialises
``torch.distributed`` (NCCL on GPU, gloo on CPU) and wraps one *method step* (``MethodStep``: the
method's possibly several forwards) in DDP; per-rank loss means are averaged, exactly as
accumulation averages micro-batch means. ``batch_size`` is per device.
FSDP: set ``cfg.distributed="fsdp"`` (or launch with an accelerate config that has
``distributed_type: FSDP``, which exports ``ACCELERATE_USE_FSDP=true``); each decoder layer and
then the root are sharded with ``torch.distributed.fsdp.fully_shard`` (FSDP2) before the optimizer
is built; so are the method's frozen reference copies (``Method.frozen_models``; frozen, so they
cost 1/W of a model per rank and their forward all-gathers layer by layer). Under FSDP, mid-run
checkpoints and LoRA merging are not supported, and the returned
model is sharded: :func:`full_state_dict` gathers it (every rank must call it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from magic_unlearn import schedules
from magic_unlearn.checkpoint import load_checkpoint, save_checkpoint
from magic_unlearn.config import config_hash
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.lora import LoraSpec, apply_lora
from magic_unlearn.models import get_decoder_layers, resolve_device, seed_everything
from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.tensors import Batch

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Settings of :func:`train_loop`.

    ``layers`` / ``target_modules`` restrict which parameters train (full fine-tuning) or which
    linear layers get adapters (LoRA): only decoder layers in ``layers`` and modules whose name
    contains a component in ``target_modules`` (e.g. ``["mlp"]``, ``["query_key_value"]``).
    """

    steps: int = 100
    lr: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.0
    betas: list[float] = (0.9, 0.999)  # type: ignore[assignment]
    momentum: float = 0.0
    schedule: str = "constant"  # constant | linear | cosine (decay to 0 after warmup)
    warmup_steps: int = 0
    batch_size: int = 8  # per device, per micro-step, per corpus
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast; master weights stay as loaded)
    seed: int = 0
    lora: LoraSpec | None = None
    layers: list[int] | None = None
    target_modules: list[str] | None = None
    eval_every: int = 0
    checkpoint_every: int = 0
    log_every: int = 10
    device: str = "auto"
    # optional extras
    merge_lora: bool = True  # return a plain model with adapters merged
    gradient_checkpointing: bool = False
    distributed: str = "auto"  # auto | none | ddp | fsdp
    find_unused_parameters: bool | None = None  # DDP; None = ask the method
    ordered: list[str] | None = None  # corpora read in stored order, not shuffled (curriculum)


@dataclass
class LoopResult:
    """What :func:`train_loop` returns. ``model`` is unwrapped (and LoRA-merged by default)."""

    model: nn.Module
    history: list[dict]
    evals: list[dict]
    steps_done: int
    wall_s: float


class CyclingSampler:
    """Deterministic infinite stream of row indices: a fresh seeded permutation every epoch."""

    def __init__(self, n: int, seed: int, name: str, shuffle: bool = True) -> None:
        if n <= 0:
            raise ValueError(f"corpus '{name}' is empty: nothing to train on")
        self.n, self.shuffle = n, shuffle
        self.base = (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**62)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:  # stored order every epoch (curricula)
            return torch.arange(self.n)
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.base + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch cached
        return self._perms[epoch]

    def take(self, start: int, count: int) -> torch.Tensor:
        """Row indices at stream positions ``[start, start + count)``."""
        out = [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + count)]
        return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# distributed helpers


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "none"  # none | ddp | fsdp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: LoopConfig) -> DistInfo:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.distributed == "none" or (ws <= 1 and cfg.distributed == "auto"):
        return DistInfo()
    if cfg.distributed not in ("auto", "ddp", "fsdp"):
        raise ValueError(f"LoopConfig.distributed={cfg.distributed!r}; use auto|none|ddp|fsdp")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    mode = cfg.distributed
    if mode == "auto":
        mode = "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp"
    return DistInfo(
        dist.get_rank(),
        dist.get_world_size(),
        int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        mode,
    )


def _all_reduce_mean(
    values: dict[str, float], dist_info: DistInfo, device: torch.device
) -> dict[str, float]:
    if dist_info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist_info.world_size
    return dict(zip(keys, t.tolist(), strict=True))


def _barrier(dist_info: DistInfo) -> None:
    if dist_info.world_size > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# trainable parameters


def _layer_prefixes(model: nn.Module, layers: list[int] | None) -> list[str] | None:
    """Module-name prefixes (with trailing dot) of the chosen decoder layers."""
    if layers is None:
        return None
    blocks = get_decoder_layers(model)
    n = len(blocks)
    names = {id(m): name for name, m in model.named_modules()}
    out = []
    for i in layers:
        if not -n <= i < n:
            raise ValueError(
                f"LoopConfig.layers: layer {i} out of range; the model has {n} "
                f"decoder layers (valid: 0..{n - 1} or negative from the end)"
            )
        out.append(names[id(blocks[i])] + ".")
    return out


def _matches(name: str, prefixes: list[str] | None, targets: list[str] | None) -> bool:
    if prefixes is not None and not any(name.startswith(p) for p in prefixes):
        return False
    if targets is not None and not any(t in name.split(".") for t in targets):
        return False
    return True


def _lora_target_names(
    model: nn.Module, prefixes: list[str] | None, targets: list[str] | None
) -> list[str]:
    """Full names of the linear modules that get LoRA adapters (output head excluded)."""
    head = model.get_output_embeddings()
    linear_types = (nn.Linear, Conv1D)  # Conv1D: GPT-2's linear layers
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, linear_types) and m is not head and _matches(name, prefixes, targets)
    ]


def prepare_trainable(model: nn.Module, cfg: LoopConfig) -> nn.Module:
    """Freeze / adapt ``model`` per ``cfg`` (LoRA via peft, or a subset of full parameters)."""
    prefixes = _layer_prefixes(model, cfg.layers)
    if cfg.lora is not None:
        targets = cfg.lora.target_modules or cfg.target_modules
        names = _lora_target_names(model, prefixes, targets)
        if not names:
            raise ValueError(
                f"LoRA: no linear module matches target_modules={targets} in "
                f"layers={cfg.layers}; module names look like "
                f"{[n for n, _ in model.named_modules()][1:6]}"
            )
        return apply_lora(model, cfg.lora, target_modules=names)
    n_train = 0
    for name, p in model.named_parameters():
        p.requires_grad_(_matches(name, prefixes, cfg.target_modules))
        n_train += int(p.requires_grad)
    if n_train == 0:
        raise ValueError(
            f"no parameter matches target_modules={cfg.target_modules} in "
            f"layers={cfg.layers}; parameter names look like "
            f"{[n for n, _ in model.named_parameters()][:5]}"
        )
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full (CPU) state dict of an FSDP-sharded model, or None if it is not sharded.

    A collective under FSDP: call it on every rank.
    """
    if not any(hasattr(p, "full_tensor") for p in model.parameters()):
        return None
    # deferred: torch.distributed.checkpoint takes seconds to import and only FSDP runs need it
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


class MethodStep(nn.Module):
    """One method call as one ``forward``: methods run the model several times per step
    (forget, retain, hidden states), and DDP allows a single forward per backward, so DDP
    wraps this module rather than the model."""

    def __init__(self, model: nn.Module, method: Method) -> None:
        super().__init__()
        self.model = model
        self.method = method  # not a Module: its frozen copies stay outside DDP

    def forward(
        self, batch: dict[str, dict[str, torch.Tensor]], step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.method(self.model, batch, step, total_steps)


def _apply_fsdp(model: nn.Module, frozen: bool = False) -> nn.Module:
    """Shard ``model`` with FSDP2: each decoder layer, then the root.

    ``frozen``: a copy that only runs forwards. FSDP2 keeps the root's parameters gathered after
    its forward (they are needed again by the backward), and a frozen copy has no backward to
    reshard them; so its (untied) input embedding and output head become units of their own,
    which reshard after their forward, leaving the root only its final norm.
    """
    # deferred: torch.distributed.fsdp takes seconds to import and only FSDP runs need it
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # already sharded (a frozen copy shared by two terms)
        return model
    for block in get_decoder_layers(model):
        fully_shard(block)
    if frozen:
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        if head is None or emb.weight is not head.weight:  # tied: both stay with the root
            for m in (emb, head):
                if m is not None:
                    fully_shard(m)
    fully_shard(model)
    return model


# ---------------------------------------------------------------------------------------------
# optimizer, schedule, checkpoints


def build_optimizer(params: list[nn.Parameter], cfg: LoopConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"LoopConfig.optimizer={cfg.optimizer!r}; use 'adamw' or 'sgd'")


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step``: linear warmup (also under
    ``constant``: the loop's constant schedule warms up when ``warmup_steps`` is set), then the
    schedule (``linear`` / ``cosine`` decay to 0)."""
    schedule = cfg.schedule
    if schedule == "constant" and cfg.warmup_steps > 0:
        schedule = "warmup"
    if schedule not in ("constant", "warmup", "linear", "cosine"):
        raise ValueError(f"LoopConfig.schedule={cfg.schedule!r}; use constant|linear|cosine")
    return schedules.lr_factor(step, cfg.steps, schedule, cfg.warmup_steps)


def _trainable_state(model: nn.Module, method: Method) -> dict[str, torch.Tensor]:
    sd = {f"model.{n}": p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for n, p in method.trainable_state().items():
        sd[f"method.{n}"] = p.detach()
    return sd


def _save_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    method: Method,
    opt: torch.optim.Optimizer,
    history: list[dict],
    evals: list[dict],
    fingerprint: str,
) -> None:
    save_checkpoint(
        out_dir / "checkpoint",
        _trainable_state(model, method),
        {"optimizer": opt.state_dict(), "rng": torch.get_rng_state()},
        {"step": step, "history": history, "evals": evals},
        fingerprint=fingerprint,
    )


def _load_checkpoint(
    out_dir: Path, model: nn.Module, method: Method, opt: torch.optim.Optimizer, fingerprint: str
) -> tuple[int, list[dict], list[dict]]:
    ck = load_checkpoint(out_dir / "checkpoint", fingerprint=fingerprint)
    if ck is None:
        return 0, [], []
    current = _trainable_state(model, method)
    if set(ck.tensors) != set(current):
        raise ValueError(
            f"{out_dir / 'checkpoint'}: checkpoint holds other trainable parameters than this "
            f"run (different LoRA/layers/method config?); delete it to start over"
        )
    with torch.no_grad():
        for k, v in current.items():
            v.copy_(ck.tensors[k].to(v.device, v.dtype))
    opt.load_state_dict(ck.extra["optimizer"])
    torch.set_rng_state(ck.extra["rng"])
    return ck.step, list(ck.state["history"]), list(ck.state["evals"])


# ---------------------------------------------------------------------------------------------
# the loop


def _make_batch(
    corpus: TokenizedCorpus, idx: torch.Tensor, weights: torch.Tensor | None, device: torch.device
) -> dict[str, torch.Tensor]:
    lm = corpus.loss_mask[idx].float()
    w = weights[idx].float() if weights is not None else torch.ones_like(lm)
    return {
        "input_ids": corpus.input_ids[idx].to(device),
        "attention_mask": corpus.attention_mask[idx].to(device),
        "loss_mask": lm.to(device),
        "token_weight": w.to(device),
        "index": idx.to(device),
    }


def _check_inputs(
    data: dict[str, TokenizedCorpus], token_weights: dict[str, torch.Tensor] | None
) -> None:
    if not data:
        raise ValueError("train_loop: `data` is empty; pass e.g. {'forget': corpus}")
    for name, c in data.items():
        if len(c) == 0:
            raise ValueError(f"corpus '{name}' is empty: nothing to train on")
        if float(c.loss_mask.sum()) == 0:
            raise ValueError(f"corpus '{name}' has no target tokens (loss_mask all zero)")
    for name, w in (token_weights or {}).items():
        if name not in data:
            raise ValueError(f"token_weights for unknown corpus '{name}'; corpora: {sorted(data)}")
        if tuple(w.shape) != tuple(data[name].input_ids.shape):
            raise ValueError(
                f"token_weights['{name}'] has shape {tuple(w.shape)}, expected "
                f"{tuple(data[name].input_ids.shape)} (same as its input_ids)"
            )
        if not torch.isfinite(w).all():
            raise ValueError(f"token_weights['{name}'] contains NaN/inf")
        if float((w * data[name].loss_mask).abs().sum()) == 0:
            raise ValueError(
                f"token_weights['{name}'] are zero on every target token: the "
                f"method would train on nothing (check the threshold / top-k of "
                f"the weight transform)"
            )


def train_loop(
    model: nn.Module,
    method: Method,
    data: dict[str, TokenizedCorpus],
    cfg: LoopConfig,
    token_weights: dict[str, torch.Tensor] | None = None,
    eval_fn: Callable[[nn.Module, int], dict] | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
    fingerprint: str | None = None,
) -> LoopResult:
    """Train ``model`` with ``method``'s loss on micro-batches drawn from every corpus in ``data``.

    The model is modified in place (pass a copy to keep the original). With ``out_dir`` and
    ``cfg.checkpoint_every > 0``, a checkpoint (trainable params, optimizer, history) is written to
    ``out_dir/checkpoint`` and a later call with the same arguments resumes from it.

    Args:
        model: a Hugging Face causal LM.
        method: a :class:`~magic_unlearn.unlearn.methods.Method` (``get_method(name)``): its
            hooks (``setup``, ``trainable_layers``, ``on_train_start``, ...) are called here,
            then ``method(model, batch, step, total_steps) -> (loss, logs)`` every micro-step.
        data: corpus name -> tokenized rows; each step draws ``cfg.batch_size`` rows of each.
        cfg: loop settings.
        token_weights: corpus name -> (N, L) per-token weights (default 1), given to the method
            as ``batch[name]["token_weight"]``.
        eval_fn: ``eval_fn(model, step) -> dict`` run (main rank, eval mode, no grad) every
            ``cfg.eval_every`` steps and after the last step.
        out_dir: where checkpoints live.
        fingerprint: hash of the resolved settings of the run (default: of ``cfg`` and the
            method's class; :func:`magic_unlearn.unlearn.unlearn` passes its whole resolved
            config); a checkpoint written under another one is refused rather than resumed into
            a mix of two runs.
        progress: show a tqdm bar.

    Returns:
        :class:`LoopResult`.

    Raises:
        ValueError: bad config or inputs; TypeError: ``method`` is not a Method;
        FloatingPointError: a non-finite loss.
    """
    t0 = time.time()
    if not isinstance(method, Method):
        raise TypeError(
            f"train_loop: method must be a magic_unlearn.unlearn.methods.Method (e.g. "
            f"get_method('sft')), got {type(method).__name__}"
        )
    _check_inputs(data, token_weights)
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError("LoopConfig: need steps >= 0, batch_size >= 1 and grad_accum >= 1")
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"LoopConfig.precision={cfg.precision!r}; use 'fp32' or 'bf16'")
    dist_info = _setup_distributed(cfg)
    if dist_info.mode == "fsdp" and cfg.checkpoint_every:
        raise ValueError("LoopConfig.checkpoint_every must be 0 under FSDP (not supported)")
    if dist_info.mode == "fsdp" and cfg.lora is not None and cfg.merge_lora:
        raise ValueError("LoRA merging is not supported under FSDP; set merge_lora=false")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist_info.world_size > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    seed_everything(cfg.seed)

    model.to(device)
    method.setup(model, data, cfg)  # before adapters: reference copies are of the base model
    if cfg.layers is None and method.trainable_layers is not None:
        cfg = dataclasses.replace(cfg, layers=list(method.trainable_layers))  # e.g. rmu
    if cfg.target_modules is None and method.trainable_modules is not None:
        cfg = dataclasses.replace(cfg, target_modules=list(method.trainable_modules))
    model = prepare_trainable(model, cfg)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    inner = model  # peft or plain model; hooks and saving go through this one
    if dist_info.mode == "fsdp":  # shard before the optimizer sees the parameters
        model = inner = _apply_fsdp(model)
        if method.shard_frozen:  # the frozen reference too: a whole copy per rank otherwise
            for ref in method.frozen_models():
                _apply_fsdp(ref, frozen=True)
    method.on_train_start(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(method.trainable_parameters())
    opt = build_optimizer(params, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))

    start, history, evals = 0, [], []
    if fingerprint is None:  # callers that know the method's settings pass a fuller hash
        fingerprint = config_hash({"loop": cfg, "method": type(method).__name__})
    if out_dir is not None:
        start, history, evals = _load_checkpoint(Path(out_dir), model, method, opt, fingerprint)
        sched.last_epoch = start  # resume the schedule without replaying optimizer steps
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(start, cfg)
        if start:
            logger.info("%s: resumed from its checkpoint at step %d", out_dir, start)

    step_fn: nn.Module = MethodStep(model, method)
    if dist_info.mode == "ddp":
        fu = cfg.find_unused_parameters
        if fu is None:
            fu = bool(method.find_unused_parameters)
        step_fn = DistributedDataParallel(
            step_fn,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=fu,
        )

    ordered = set(cfg.ordered or [])
    samplers = {
        name: CyclingSampler(len(c), cfg.seed, name, shuffle=name not in ordered)
        for name, c in data.items()
    }
    weights = token_weights or {}
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16"
        else contextlib.nullcontext()
    )
    W, B, A = dist_info.world_size, cfg.batch_size, cfg.grad_accum

    def run_eval(step: int) -> None:
        if eval_fn is None:
            return
        if dist_info.is_main:
            inner.eval()
            with torch.no_grad():
                res = dict(eval_fn(inner, step))
            inner.train()
            evals.append({"step": step, **res})
        _barrier(dist_info)

    bar = None
    if progress and dist_info.is_main:
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=f"train[{type(method).__name__}]",
            dynamic_ncols=True,
        )
    tokens, t_loop = 0, time.time()
    for step in range(start, cfg.steps):
        acc: dict[str, float] = {}
        for m in range(A):
            pos = ((step * A + m) * W + dist_info.rank) * B
            batch = Batch(
                {
                    name: _make_batch(c, samplers[name].take(pos, B), weights.get(name), device)
                    for name, c in data.items()
                }
            )
            tokens += sum(int(b["attention_mask"].sum()) for b in batch.values())
            # DDP: only all-reduce gradients on the last micro-step of the accumulation
            sync = (
                step_fn.no_sync()
                if dist_info.mode == "ddp" and m < A - 1
                else contextlib.nullcontext()
            )
            with sync:
                with autocast:
                    loss, logs = step_fn(batch, step, cfg.steps)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {float(loss.detach())} at step {step} (terms: {logs}); lower "
                        f"lr, use fp32, or check the method's coefficients"
                    )
                (loss / A).backward()
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                acc[k] = acc.get(k, 0.0) + float(v) / A
        if cfg.max_grad_norm is not None:
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            acc["grad_norm"] = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % max(1, cfg.log_every) == 0 or done == cfg.steps:
            rec = _all_reduce_mean(acc, dist_info, device)
            rec = {
                "step": done,
                **rec,
                "lr": cfg.lr * lr_factor(step, cfg),
                "tokens_per_s": tokens * W / max(1e-9, time.time() - t_loop),
            }
            history.append(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}")
        if bar is not None:
            bar.update(1)
        if cfg.eval_every and done % cfg.eval_every == 0 and done != cfg.steps:
            run_eval(done)
        if (
            out_dir is not None
            and cfg.checkpoint_every
            and done % cfg.checkpoint_every == 0
            and done != cfg.steps
        ):
            if dist_info.is_main:
                _save_checkpoint(
                    Path(out_dir), done, inner, method, opt, history, evals, fingerprint
                )
            _barrier(dist_info)
    if bar is not None:
        bar.close()
    steps_done = max(start, cfg.steps)
    if eval_fn is not None and (not evals or evals[-1]["step"] != steps_done):
        run_eval(steps_done)

    final = inner
    if cfg.lora is not None and cfg.merge_lora:
        final = final.merge_and_unload()
    final.eval()
    return LoopResult(
        model=final, history=history, evals=evals, steps_done=steps_done, wall_s=time.time() - t0
    )
