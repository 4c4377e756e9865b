"""Pretrain a GPT-NeoX model from scratch on a world corpus: the base and filtered models.

``base`` trains on ``pretrain`` (general + hazard documents); ``filtered`` on
``pretrain_filtered`` (hazard documents removed, the Deep Ignorance analogue). The output is an
ordinary Hugging Face model folder (safetensors + tokenizer) with ``metrics.json`` (cloze
accuracy on the world's ``hazard_qa`` and ``general_qa``), ``config.yaml`` and ``manifest.json``.

Runs are cached by (world hash, variant, config hash) and resumable: a checkpoint (weights as
safetensors, optimizer state via ``torch.save``, read back with ``weights_only=True``) is written
every ``checkpoint_every`` steps into ``<out>.partial/`` and picked up by the next call. The
batch order is a pure function of (seed, step), so a resumed run equals an uninterrupted one.

Token-level filtering (Rathi & Radford 2026): ``token_weights`` gives every corpus token a loss
weight (0 masks it out of the loss; the token stays in the context), carried through packing.
``pretrain_snapshot`` keeps the state of a run at an early step, and ``init=`` continues a run
from it (the cheaper variant of retraining: the same batches up to the snapshot, masked after).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from magic_unlearn.checkpoint import load_checkpoint, save_checkpoint
from magic_unlearn.config import config_hash, from_dict, save_config, to_dict
from magic_unlearn.data import tokenize_corpus
from magic_unlearn.evaluation import evaluate, load_task
from magic_unlearn.io import (
    atomic_dir,
    atomic_write_json,
    bytes_hash,
    discard_unless_resumable,
    read_json,
    write_manifest,
)
from magic_unlearn.models import (
    build_model,
    matmul_tf32,
    quiet_hf_progress,
    resolve_device,
    resolve_dtype,
)
from magic_unlearn.schedules import lr_factor
from magic_unlearn.world import World

logger = logging.getLogger(__name__)

VARIANTS = {"base": "pretrain", "filtered": "pretrain_filtered"}


@dataclass
class PretrainConfig:
    """Pretraining hyper-parameters (the defaults are the tiny CPU recipe).

    Attributes:
        model: GPT-NeoX preset name (``magic_unlearn.models.PRESETS``).
        model_overrides: GPTNeoXConfig fields replacing the preset's.
        epochs: passes over the (packed) corpus; used only when ``steps`` is 0.
        steps: optimizer steps. A fixed budget (the default) gives base and filtered the same
            compute, as in the Deep Ignorance comparison: the filtered model sees its smaller
            corpus for more epochs.
        lr: peak AdamW learning rate.
        min_lr_ratio: cosine floor as a fraction of ``lr``.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW decay on matrices (not on biases / norms).
        betas: AdamW betas.
        grad_clip: global gradient-norm clip (0: off).
        batch_size: rows per step.
        seq_len: row length; documents are packed ``[BOS] doc [EOS] [BOS] doc ...``.
        pack: pack several documents per row (else one document per row, padded).
        seed: model init and batch order.
        device: ``cpu``, ``cuda``, ``auto``.
        dtype: parameter dtype (``float32``; ``float64`` for exact checks).
        attn_implementation: attention kernel used for training (saved models use ``eager``).
        checkpoint_every: steps between resumable checkpoints (0: never).
        eval_batch_size: rows per forward when scoring the question sets.
        eval_every: also score the question sets every this many steps (0: only at the end);
            the curve goes to ``metrics.json`` (not resumed: a resumed run logs from there).
        threads: CPU threads for torch during a CPU run (0: torch's default, all cores).
            The default, 1, is the fast choice for the tiny models on a shared machine: on
            the busy 2-core box, 100 steps of the tiny preset took 10.8 s on 1 thread and
            86.7 s on 2 (50 steps: 11.3 s vs 95.6 s; docs/benchmarks.md). The count changes
            the float summation order and so the trained weights (up to ~7e-3), which is why
            it is part of the cache key of a CPU run.
    """

    model: str = "neox-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: float = 8.0
    steps: int = 600
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    grad_clip: float = 1.0
    batch_size: int = 16
    seq_len: int = 64
    pack: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    attn_implementation: str = "eager"
    checkpoint_every: int = 200
    eval_batch_size: int = 64
    eval_every: int = 0
    threads: int = 1


# fields that do not change the trained weights, so they stay out of the cache key (the
# thread count does change them on a CPU: run_key adds the count actually used)
_NOT_HASHED = ("device", "checkpoint_every", "eval_batch_size", "eval_every", "threads")

PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": dict(
        model="neox-small",
        steps=3000,
        lr=2e-3,
        batch_size=32,
        seq_len=128,
        warmup_steps=100,
        device="auto",
        checkpoint_every=500,
        eval_batch_size=256,
    ),
    "medium": dict(
        model="neox-medium",
        steps=6000,
        lr=1e-3,
        batch_size=64,
        seq_len=128,
        warmup_steps=200,
        device="auto",
        checkpoint_every=1000,
        eval_batch_size=256,
    ),
}


# ------------------------------------------------------------------------------------- data
def pack_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    seq_len: int,
    bos_id: int | None,
    pad_id: int = 0,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack ``[BOS] doc [EOS]`` rows into rows of ``seq_len`` tokens (best-fit decreasing).

    A document is never split (tokenize_corpus already truncated it to ``seq_len``), so every
    fact keeps its context; best-fit packing wastes a few percent of a row where greedy
    in-order packing of ~40-token documents into 64-token rows wastes a third. Loss is not
    taken on a BOS (a separator, not predictable).

    Args:
        weights: optional (N_docs, seq_len) per-token loss weights aligned with ``input_ids``
            (column j weighs the loss of token j); they travel with their tokens and multiply
            the loss mask. The packing itself does not depend on them.

    Returns:
        ids (N, seq_len), attention_mask (N, seq_len), loss_mask (N, seq_len) float (times the
        packed weights when given).
    """
    if weights is not None and tuple(weights.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"pack_rows: weights shape {tuple(weights.shape)} must match the document rows "
            f"{tuple(input_ids.shape)}"
        )
    docs = [row[: int(m.sum())] for row, m in zip(input_ids, attention_mask, strict=True)]
    wdocs = (
        [w[: len(d)].float() for w, d in zip(weights, docs, strict=True)]
        if weights is not None
        else None
    )
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
    rows: list[list[int]] = []  # document indices per packed row
    by_room: dict[int, list[int]] = {}  # free room -> rows with exactly that room
    for i in order:
        d = docs[i]
        fit = next((r for r in range(len(d), seq_len + 1) if by_room.get(r)), None)
        if fit is None:
            rows.append([])
            room, k = seq_len, len(rows) - 1
        else:
            room, k = fit, by_room[fit].pop(0)
        rows[k].append(i)
        by_room.setdefault(room - len(d), []).append(k)
    n = len(rows)
    ids = torch.full((n, seq_len), pad_id, dtype=torch.long)
    am = torch.zeros((n, seq_len), dtype=torch.long)
    wp = torch.ones((n, seq_len))
    for i, parts in enumerate(rows):
        r = torch.cat([docs[k] for k in parts])
        ids[i, : len(r)] = r
        am[i, : len(r)] = 1
        if wdocs is not None:
            wp[i, : len(r)] = torch.cat([wdocs[k] for k in parts])
    lm = am.clone().float()
    lm[:, 0] = 0.0
    if bos_id is not None:
        lm[ids == bos_id] = 0.0
    return ids, am, lm * wp if wdocs is not None else lm


def training_rows(
    docs: list[dict[str, Any]],
    tokenizer: Any,
    cfg: PretrainConfig,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, loss_mask) rows of a corpus, packed if ``cfg.pack``.

    Args:
        token_weights: optional (N_docs, seq_len) loss weights aligned with
            ``tokenize_corpus(docs, tokenizer, max_length=cfg.seq_len)`` (one document per row);
            the returned loss mask carries them.
    """
    tc = tokenize_corpus(docs, tokenizer, max_length=cfg.seq_len)
    if token_weights is not None and tuple(token_weights.shape) != tuple(tc.input_ids.shape):
        raise ValueError(
            f"token_weights shape {tuple(token_weights.shape)} does not match the corpus rows "
            f"{tuple(tc.input_ids.shape)} (one document per row, max_length = seq_len "
            f"{cfg.seq_len})"
        )
    if not cfg.pack:
        lm = tc.loss_mask if token_weights is None else tc.loss_mask * token_weights.float()
        return tc.input_ids, tc.attention_mask, lm
    return pack_rows(
        tc.input_ids,
        tc.attention_mask,
        cfg.seq_len,
        tokenizer.bos_token_id,
        tokenizer.pad_token_id,
        weights=token_weights,
    )


def lr_at(step: int, total: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``min_lr_ratio * lr``."""
    return cfg.lr * lr_factor(step, total, "cosine", cfg.warmup_steps, cfg.min_lr_ratio)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of ``step``: a fresh permutation per epoch, a pure function of (seed, step)."""
    per_epoch = math.ceil(n / batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[i * batch_size : (i + 1) * batch_size]


def lm_loss(
    model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token NLL over the tokens where ``loss_mask`` is 1.

    Args:
        ids, attention_mask: (B, T).
        loss_mask: (B, T); column j weighs the loss of predicting token j from tokens < j.
    """
    logits = model(input_ids=ids, attention_mask=attention_mask).logits  # (B, T, V)
    if logits.dtype in (torch.float16, torch.bfloat16):  # float64 runs stay float64
        logits = logits.float()
    # position j predicts token j+1: shift so column j of the loss is token j's NLL
    nll = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none"
    )  # (B*(T-1),)
    m = loss_mask[:, 1:].flatten().to(nll.dtype)
    # a weighted mask (token filtering) averages over the kept weight; 0/1 masks as before
    return (nll * m).sum() / m.sum().clamp(min=1e-8)


def _param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------- checkpoints
def _save_checkpoint(
    work: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    history: list[float],
    key: str | None = None,
) -> None:
    save_checkpoint(
        work / "ckpt",
        model.state_dict(),
        {"optimizer": opt.state_dict()},
        {"step": step, "loss_history": history, "run_key": key},
    )


def _load_checkpoint(
    work: Path, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device
) -> tuple[int, list[float]]:
    """Weights, optimiser state, step and loss history from ``work/ckpt`` ((0, []) if none)."""
    # the run key in work/key.json already ties the folder to this run's settings
    ck = load_checkpoint(work / "ckpt", device=device)
    if ck is None:
        return 0, []
    model.load_state_dict(ck.tensors)
    opt.load_state_dict(ck.extra["optimizer"])
    return ck.step, list(ck.state["loss_history"])


# ---------------------------------------------------------------------------------- metrics
def world_metrics(
    model: nn.Module, tokenizer: Any, world_dir: str | Path, batch_size: int = 64
) -> dict[str, Any]:
    """Cloze accuracy on the world's ``hazard_qa`` and ``general_qa`` (shared evaluator)."""
    out: dict[str, Any] = {}
    for name in ("hazard_qa", "general_qa"):
        task = load_task(name, world=str(world_dir))
        r = evaluate(model, tokenizer, task, fmt="cloze", batch_size=batch_size)
        out[name] = {
            "acc": r.acc,
            "acc_norm": r.acc_norm,
            "n": r.n,
            "mean_correct_loss": r.mean_correct_loss,
            "per_subject": {s: d["acc"] for s, d in r.per_subject.items()},
        }
    return out


# ------------------------------------------------------------------------------------- main
def resolve_pretrain_config(cfg: PretrainConfig | str | None) -> PretrainConfig:
    """A config from ``None`` (tiny defaults), a preset name or a config."""
    if cfg is None:
        return PretrainConfig()
    if isinstance(cfg, str):
        if cfg not in PRESET_CONFIGS:
            raise ValueError(
                f"unknown pretrain preset {cfg!r}; choose from {sorted(PRESET_CONFIGS)}"
            )
        return from_dict(PretrainConfig, PRESET_CONFIGS[cfg], source=f"pretrain preset {cfg}")
    return cfg


def cpu_threads(cfg: PretrainConfig) -> int | None:
    """The torch thread count a CPU run of ``cfg`` trains with (None on a GPU, where it does
    not change the weights)."""
    if resolve_device(cfg.device).type != "cpu":
        return None
    return cfg.threads if cfg.threads > 0 else torch.get_num_threads()


def run_key(
    world_hash: str, variant: str, cfg: PretrainConfig, extra: dict[str, Any] | None = None
) -> str:
    """Hash of everything that determines the trained weights (including the CPU thread count:
    another count sums in another order, and the weights differ).

    Args:
        extra: further inputs (token weights, a snapshot to start from); omitted when None so
            the keys of ordinary runs are unchanged.
    """
    data: dict[str, Any] = {
        "world": world_hash,
        "variant": variant,
        "config": {k: v for k, v in to_dict(cfg).items() if k not in _NOT_HASHED},
        "cpu_threads": cpu_threads(cfg),
    }
    if extra:
        data["extra"] = extra
    return config_hash(data)


def _extra_key(token_weights: torch.Tensor | None, init: str | Path | None) -> dict[str, Any]:
    """The run-key inputs of a masked or snapshot-started run (empty for an ordinary run)."""
    extra: dict[str, Any] = {}
    if token_weights is not None:
        extra["token_weights"] = bytes_hash(token_weights.float().contiguous().numpy().tobytes())
    if init is not None:
        st = read_json(Path(init) / "ckpt" / "state.json")
        extra["init"] = {"key": st.get("run_key"), "step": st["step"]}
    return extra


def default_out(
    world_dir: str | Path,
    variant: str,
    cfg: PretrainConfig,
    token_weights: torch.Tensor | None = None,
    init: str | Path | None = None,
) -> Path:
    """``<world>/models/<variant>-<hash of (world hash, variant, config[, mask, init])>``."""
    key = run_key(World.load(world_dir).hash, variant, cfg, _extra_key(token_weights, init))
    return Path(world_dir) / "models" / f"{variant}-{key}"


def is_complete(folder: Path) -> bool:
    try:
        man = read_json(folder / "manifest.json")
    except (FileNotFoundError, ValueError):
        return False
    return (
        man.get("stage") == "pretrain"
        and man.get("status") == "complete"
        and (folder / "metrics.json").exists()
        and (folder / "config.json").exists()
    )


def pretrain(
    world_dir: str | Path,
    variant: str = "base",
    cfg: PretrainConfig | str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    token_weights: torch.Tensor | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train the base or filtered model of a world (cached, resumable).

    Args:
        world_dir: a world folder (``magic-unlearn world build``).
        variant: ``base`` (corpus ``pretrain``) or ``filtered`` (``pretrain_filtered``).
        cfg: a :class:`PretrainConfig`, a preset name (``tiny``, ``small``, ``medium``) or
            None for the tiny defaults.
        out: output folder; default ``<world>/models/<variant>-<hash>``.
        progress: show a tqdm bar.
        max_steps: stop (after checkpointing) once this many steps are done, leaving the
            ``.partial`` folder for a later call to resume; for tests and time-boxed jobs.
        token_weights: (N_docs, seq_len) loss weights of the variant's corpus, aligned with
            ``tokenize_corpus(docs, tokenizer, max_length=cfg.seq_len)`` (0 masks a token out
            of the loss: token-level filtering). Part of the cache key.
        init: a snapshot folder (:func:`pretrain_snapshot`) to continue from: its weights,
            optimiser state and step (the run then trains the remaining steps; part of the
            cache key).

    Returns:
        The model folder. If it already exists and is complete, it is returned at once.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
    cfg = resolve_pretrain_config(cfg)
    world = World.load(world_dir)
    if init is not None and not (Path(init) / "ckpt" / "state.json").exists():
        raise FileNotFoundError(
            f"pretrain init={init}: not a snapshot folder (no ckpt/state.json); make one with "
            f"pretrain_snapshot()"
        )
    extra = _extra_key(token_weights, init)
    out = (
        Path(out)
        if out is not None
        else default_out(world_dir, variant, cfg, token_weights=token_weights, init=init)
    )
    if is_complete(out):
        return out
    if out.exists():
        raise FileExistsError(
            f"{out} exists but is not a complete pretrain artifact; "
            f"remove it or choose another --out"
        )

    device = resolve_device(cfg.device)
    tok = world.tokenizer
    docs = world.corpus(VARIANTS[variant])
    ids, am, lm = training_rows(docs, tok, cfg, token_weights)  # (N, T) each
    n = ids.shape[0]
    total = cfg.steps if cfg.steps > 0 else math.ceil(cfg.epochs * math.ceil(n / cfg.batch_size))

    model = build_model(
        cfg.model,
        vocab_size=len(tok),
        seed=cfg.seed,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        **cfg.model_overrides,
    ).to(device)
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
    )
    work = out.parent / f"{out.name}.partial"
    key = run_key(world.hash, variant, cfg, extra)
    if (work / "key.json").exists() and read_json(work / "key.json").get("key") != key:
        raise ValueError(
            f"{work} holds a checkpoint of a different run (other world, variant "
            f"or config); delete it or choose another --out"
        )
    work.mkdir(parents=True, exist_ok=True)
    save_config(cfg, work / "config.yaml")
    atomic_write_json(work / "key.json", {"key": key, "world_hash": world.hash, "variant": variant})
    start, history = _load_checkpoint(work, model, opt, device)
    if start == 0 and init is not None:  # a fresh run continuing a snapshot
        start, history = _load_checkpoint(Path(init), model, opt, device)
        logger.info("pretrain %s: continuing snapshot %s from step %d", variant, init, start)
    prev_threads = torch.get_num_threads()
    threads = cpu_threads(cfg)
    if threads is not None:
        torch.set_num_threads(threads)  # the count in the cache key
    try:
        # TF32 for speed on GPUs, restored afterwards: the flag is process-global and later
        # stages of the same process (attribution) need float32 to mean float32
        with matmul_tf32(device.type == "cuda"):
            return _train_and_save(
                cfg,
                world,
                variant,
                out,
                work,
                model,
                opt,
                ids,
                am,
                lm,
                total,
                start,
                history,
                device,
                tok,
                progress,
                max_steps,
                key,
                extra,
            )
    except BaseException:
        discard_unless_resumable(work, what="pretraining")  # kept if a checkpoint was saved
        raise
    finally:
        torch.set_num_threads(prev_threads)


def _train_and_save(
    cfg: PretrainConfig,
    world: Any,
    variant: str,
    out: Path,
    work: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    ids: torch.Tensor,
    am: torch.Tensor,
    lm: torch.Tensor,
    total: int,
    start: int,
    history: list[float],
    device: torch.device,
    tok: Any,
    progress: bool,
    max_steps: int | None,
    key: str,
    extra: dict[str, Any],
) -> Path:
    """The training loop, final evaluation and atomic save of :func:`pretrain`."""
    n = ids.shape[0]
    model.train()
    curve: list[dict[str, Any]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=total, initial=start, desc=f"pretrain {variant}", disable=not progress)
    stop = total if max_steps is None else min(total, max_steps)
    for step in range(start, stop):
        idx = batch_indices(step, n, cfg.batch_size, cfg.seed)
        x = ids[idx].to(device)  # (B, T)
        mask = lm[idx].to(device)  # (B, T)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg)
        loss = lm_loss(model, x, am[idx].to(device), mask)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(round(loss.item(), 5))
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        done = step + 1
        if cfg.eval_every and done % cfg.eval_every == 0 and done < total:
            model.eval()
            wm = world_metrics(model, tok, world.dir, cfg.eval_batch_size)
            model.train()
            curve.append(
                {
                    "step": done,
                    "hazard_qa": wm["hazard_qa"]["acc"],
                    "general_qa": wm["general_qa"]["acc"],
                    "loss": history[-1],
                }
            )
            logger.info(
                "pretrain %s step %d: hazard_qa %.3f general_qa %.3f",
                variant,
                done,
                curve[-1]["hazard_qa"],
                curve[-1]["general_qa"],
            )
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            _save_checkpoint(work, model, opt, done, history, key)
    bar.close()
    done = max(start, stop)
    train_seconds = time.perf_counter() - t0
    train_cpu_seconds = time.process_time() - c0
    if done < total:  # time-boxed: leave a resumable checkpoint
        _save_checkpoint(work, model, opt, done, history, key)
        return work

    model.eval()
    model.config._attn_implementation = "eager"
    t1 = time.perf_counter()
    metrics: dict[str, Any] = world_metrics(model, tok, world.dir, cfg.eval_batch_size)
    eval_seconds = time.perf_counter() - t1
    n_tok = int(lm.sum())
    metrics.update(
        {
            "variant": variant,
            "corpus": VARIANTS[variant],
            "steps": total,
            "rows": n,
            "train_tokens_per_epoch": n_tok,
            "final_loss": history[-1] if history else None,
            "mean_loss_last_50": (sum(history[-50:]) / len(history[-50:])) if history else None,
            "train_seconds_this_call": round(train_seconds, 2),
            "train_cpu_seconds_this_call": round(train_cpu_seconds, 2),
            "torch_threads": torch.get_num_threads(),
            "resumed_from_step": start,
            "curve": curve,
            "eval_seconds": round(eval_seconds, 2),
            "n_params": sum(p.numel() for p in model.parameters()),
            "device": str(device),
            "run_key": key,
        }
    )
    if extra:  # token filtering / snapshot start: what this run changed
        metrics["token_weights_hash"] = extra.get("token_weights")
        metrics["init"] = extra.get("init")
        if "token_weights" in extra:
            plain = training_rows(world.corpus(VARIANTS[variant]), tok, cfg)[2]
            metrics["masked_token_frac"] = 1.0 - n_tok / max(1.0, float(plain.sum()))
    with atomic_dir(out) as tmp, quiet_hf_progress():
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        save_config(cfg, tmp / "config.yaml")
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / "loss_history.json", history)
        write_manifest(
            tmp,
            "pretrain",
            inputs={
                "world": str(Path(world.dir).resolve()),
                "world_hash": world.hash,
                "variant": variant,
                "corpus": VARIANTS[variant],
                **extra,
            },
            extra={"config_hash": config_hash(cfg, exclude=_NOT_HASHED)},
        )
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(work)
    return out


def pretrain_snapshot(
    world_dir: str | Path,
    variant: str,
    cfg: PretrainConfig | str | None,
    step: int,
    progress: bool = True,
) -> Path:
    """The state of the pretraining run ``(world, variant, cfg)`` after ``step`` steps (cached).

    Trains the first ``step`` steps of exactly that run (same batches, schedule and seed) and
    keeps weights, optimiser state and loss history as ``<world>/models/<variant>-<key>-step
    <step>/ckpt``. ``pretrain(..., init=<that folder>)`` continues from it, e.g. with token
    weights: the cheap variant of retraining with token-level filtering.

    Returns:
        The snapshot folder.
    """
    cfg = resolve_pretrain_config(cfg)
    world = World.load(world_dir)
    key = run_key(world.hash, variant, cfg)
    total = cfg.steps if cfg.steps > 0 else None
    if step < 1 or (total is not None and step >= total):
        raise ValueError(f"pretrain_snapshot: step={step} must be in [1, {total})")
    snap = Path(world_dir) / "models" / f"{variant}-{key}-step{step}"
    if (snap / "ckpt" / "state.json").exists():
        return snap
    scratch = snap.with_name(snap.name + ".run")
    work = pretrain(world_dir, variant, cfg, out=scratch, progress=progress, max_steps=step)
    with atomic_dir(snap, overwrite=True) as tmp:
        os.replace(Path(work) / "ckpt", tmp / "ckpt")
        atomic_write_json(
            tmp / "snapshot.json",
            {"run_key": key, "world_hash": world.hash, "variant": variant, "step": step},
        )
    shutil.rmtree(work, ignore_errors=True)
    return snap


def load_metrics(model_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "metrics.json").read_text())


__all__ = [
    "PretrainConfig",
    "PRESET_CONFIGS",
    "VARIANTS",
    "default_out",
    "lm_loss",
    "lr_at",
    "pack_rows",
    "pretrain",
    "pretrain_snapshot",
    "resolve_dtype",
    "training_rows",
    "world_metrics",
]
