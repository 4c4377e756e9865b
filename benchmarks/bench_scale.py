"""Benchmark: MAGIC, unlearning and attacks at the seed's scale (Pythia-6.9B / deep-ignorance shape).

The seed study ran full-parameter MAGIC on ``EleutherAI/deep-ignorance-unfiltered`` (a 6.9B
GPT-NeoX, the Pythia-6.9B architecture): 250-1,250 SGD steps of batch 4 x 1024 tokens on 4 GH200s;
250 steps took 542 s of training and 511 s of backward, at 3.5 GB/GPU training and 43.1 GB/GPU
backward (EleutherAI/unlearn, ``unlearn/magic/magic_wmdp_results.md``). Here the same shape is
built from its config with random weights, directly on the GPU in bf16 (no hub access), and fed
random tokens: speed and memory do not depend on the weights.

Modes:

``--mode one`` (issue 16, one H200, about 5 minutes)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_scale.py --out $OUT 2>&1 | tee $OUT/bench_scale.log

  1. plain training of the shape (torch.optim, LoRA and full, SGD and AdamW): time per step;
  2. LoRA-subspace MAGIC, T=16, seq 1024, batch 4, SGD and AdamW; the activation coefficient of
     the memory model (``attribution/memory.py``) is fitted on the SGD run;
  3. full-parameter MAGIC, SGD (the seed's setting) and AdamW, on the deepest version of the shape
     that the fitted memory model says fits one H200 with CPU checkpoints (and its host memory);
  4. the unlearning loop (``rr``, the Deep Ignorance method) and the standard fine-tuning attack
     (the ``real`` suite's ``standard`` and ``lora`` attacks), LoRA and full, 10 steps each;
  5. the memory model against every measured peak, and the extrapolation to the seed's 250- and
     1,250-step runs on 2, 4 and 8 GPUs next to the seed's numbers.

``--mode small-ref`` then ``--mode dist`` under ``torchrun --nproc-per-node 2`` (issue 19):
``benchmarks/bench_scale_2gpu.sh`` runs both. ``small-ref`` writes one GPU's scores of a small
shape (Pythia-160m dims) to ``$OUT/small_ref.pt``; ``dist`` checks that sharded MAGIC on 2 GPUs
gives them (fp32 and bf16), then runs the 6.9B shape sharded over 2 GPUs (SGD and AdamW), plain
FSDP training of the same shape, and the unlearning loop and the standard attack with FSDP.

CPU smoke test of every code path (tiny shape, a minute or two)::

    python benchmarks/bench_scale.py --tiny
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/bench_scale.py \
        --tiny --mode dist        # after: python benchmarks/bench_scale.py --tiny --mode small-ref

Notes. MAGIC's content hash of theta_0 (sha256 of 13.8 GB, ~10 s, once per artifact) is replaced
by a hash of the parameter shapes here: it is not part of a training or reverse step. The big runs
use eager steps (``cuda_graphs=False``: a 6.9B step is not launch-bound, and capture would cost
memory and time) and the eager attention double backward (``--compile`` turns torch.compile on).
Every section is timed against ``--budget-s``; a section that would overrun is skipped and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from magic_unlearn.attribution import (
    LoraSpec,
    TrajectoryConfig,
    attribute,
    per_token_loss,
    pinned_pool_bytes,
    release_pinned_memory,
)
from magic_unlearn.attribution import magic as magic_mod
from magic_unlearn.attribution.config import TrustConfig
from magic_unlearn.attribution.memory import (
    C_LAYER_REVERSE,
    C_LAYER_TRAIN,
    GB,
    ModelStats,
    fit_c_layer,
    magic_memory,
    stored_states,
    training_memory,
)
from magic_unlearn.attribution.trajectory import batch_order, prepare_model
from magic_unlearn.data import TokenizedCorpus

# Pythia-6.9B = deep-ignorance-unfiltered architecture (GPT-NeoX, untied embeddings)
SHAPE_69B = dict(hidden=4096, layers=32, heads=32, intermediate=16384, vocab=50432, max_pos=2048)
SHAPE_160M = dict(hidden=768, layers=12, heads=12, intermediate=3072, vocab=50432, max_pos=2048)
SHAPE_TINY = dict(hidden=64, layers=4, heads=4, intermediate=256, vocab=512, max_pos=512)
LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
PIN_S_PER_GB = 0.45  # page-locking host memory for CPU checkpoints (store.py: 0.3-0.5 s/GB)
SEED = {  # EleutherAI/unlearn, unlearn/magic/magic_wmdp_results.md: 4 x GH200, 250 SGD steps
    "gpus": 4,
    "steps": 250,
    "train_s": 542.0,
    "backward_s": 511.0,
    "train_gb_per_gpu": 3.5,
    "backward_gb_per_gpu": 43.1,
}


# ------------------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def clean(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def mem_base(dev: torch.device, own: torch.nn.Module | None = None) -> int:
    """Reset the peak counter; the bytes allocated now (subtracted from the run's peak), less the
    parameters of ``own`` (a model trained in place: its weights are part of the run)."""
    clean(dev)
    if dev.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(dev)
    mine = 0
    if own is not None:
        for p in own.parameters():
            t = getattr(p, "_local_tensor", p)  # an FSDP2 DTensor: this rank's shard
            mine += t.numel() * t.element_size()
    return torch.cuda.memory_allocated(dev) - mine


def peak_since(dev: torch.device, base: int) -> float:
    """GiB allocated at the peak since ``mem_base``, above ``base`` (max over the ranks)."""
    if dev.type != "cuda":
        return float("nan")
    v = torch.tensor([(torch.cuda.max_memory_allocated(dev) - base) / GB], device=dev)
    if dist.is_initialized():
        dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return float(v)


def host_available() -> float:
    """Bytes of host memory available now (MemAvailable; a large number if unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return float("inf")


def _status_kb(field: str) -> float:
    """A ``/proc/self/status`` field in kB (VmRSS: resident now, VmHWM: peak resident)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def host_mem(stage: str, res: dict, dev: torch.device) -> dict:
    """Host memory of every rank now: resident (VmRSS), peak resident so far (VmHWM), MAGIC's
    idle pinned pool; and the host's MemAvailable. Logged by rank 0, kept in ``res["host"]``."""
    mine = torch.tensor(
        [_status_kb("VmRSS") / 2**20, _status_kb("VmHWM") / 2**20, pinned_pool_bytes() / GB],
        dtype=torch.float64,
        device=dev,
    )
    W = dist.get_world_size() if dist.is_initialized() else 1
    rows = [torch.empty_like(mine) for _ in range(W)] if W > 1 else [mine]
    if W > 1:
        dist.all_gather(rows, mine)
    out = {
        "rss_gb": [round(float(r[0]), 2) for r in rows],
        "peak_rss_gb": [round(float(r[1]), 2) for r in rows],
        "pinned_pool_gb": [round(float(r[2]), 2) for r in rows],
        "available_gb": round(host_available() / GB, 1),
    }
    res.setdefault("host", {})[stage] = out
    log(
        f"[host] {stage}: RSS GiB/rank {out['rss_gb']}, peak RSS {out['peak_rss_gb']}, "
        f"pinned pool {out['pinned_pool_gb']}, available {out['available_gb']} GiB"
    )
    return out


def build_neox(shape: dict, layers: int, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    """A random-init GPT-NeoX of ``shape`` with ``layers`` layers, allocated on ``dev`` in ``dtype``
    (no CPU copy: a 6.9B init on an H200 takes seconds)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=layers,
        num_attention_heads=shape["heads"],
        intermediate_size=shape["intermediate"],
        vocab_size=shape["vocab"],
        max_position_embeddings=shape["max_pos"],
        rotary_pct=0.25,
        use_parallel_residual=True,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = GPTNeoXForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def set_attn(model: torch.nn.Module, impl: str) -> None:
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            c._attn_implementation = impl


def make_corpus(n: int, seq: int, vocab: int, seed: int = 0) -> TokenizedCorpus:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g)
    am = torch.ones(n, seq, dtype=torch.long)
    lm = am.float()
    lm[:, 0] = 0
    neg = torch.full((n, seq), -1)
    return TokenizedCorpus(ids, am, lm, neg, neg.clone(), [str(i) for i in range(n)])


class HeldoutNLL:
    """Mean next-token NLL of fixed rows (a stand-in for an eval loss)."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        return per_token_loss(model, self.ids, None)[:, 1:].mean()


def _shape_hash(model: torch.nn.Module, n: int = 16, **_: Any):
    """Stand-in for MAGIC's content hash of theta_0 (see the module docstring)."""
    import hashlib

    sd = model.state_dict()
    val = hashlib.sha256(
        "".join(f"{k}:{tuple(v.shape)}:{v.dtype};" for k, v in sd.items()).encode()
    ).hexdigest()[:n]
    return lambda: val


class Budget:
    """Wall-clock budget of the whole command; sections are skipped rather than overrun."""

    def __init__(self, total_s: float, dev: torch.device) -> None:
        self.t0, self.total, self.dev = time.perf_counter(), total_s, dev

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, name: str, est_s: float) -> bool:
        left = self.total - self.elapsed()
        ok = est_s <= left
        if dist.is_initialized():  # every rank takes the same decision
            t = torch.tensor([1.0 if ok else 0.0], device=self.dev)
            dist.broadcast(t, 0)
            ok = bool(t.item())
        if not ok:
            log(f"[skip] {name}: needs ~{est_s:.0f} s, {left:.0f} s of the budget left")
        return ok


def guarded(res: dict, key: str, fn: Any, *a: Any, **kw: Any) -> Any:
    """Run one section; a failure (OOM included) is recorded instead of ending the run."""
    try:
        out = fn(*a, **kw)
        res[key] = out
        return out
    except Exception as e:  # noqa: BLE001 - keep the other sections of a scarce GPU run
        traceback.print_exc()
        res[key] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        log(f"[error] {key}: {type(e).__name__}: {str(e)[:200]}")
        return None


def save(res: dict, path: Path) -> None:
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    os.replace(tmp, path)


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ runs


def traj_cfg(args: Any, opt: str, lora: bool, **kw: Any) -> TrajectoryConfig:
    base = dict(
        optimizer=opt,
        lr=1e-4 if opt == "sgd" else 1e-5,
        steps=args.steps,
        batch_size=args.batch,
        dtype=args.dtype,
        precision=args.precision,
        lora=LoraSpec(r=16, alpha=32, target_modules=LORA_TARGETS) if lora else None,
        max_length=args.seq,
        cuda_graphs=args.cuda_graphs,
        compile_attention=args.compile,
        drift_tol=args.drift_tol,
        checkpointing="sqrt",
        storage="cpu",
        # the engine alone (the trust report's retrains and the float64 prefix are issue 14's)
        trust=TrustConfig(enabled=False),
        float64_prefix=0,
    )
    base.update(kw)
    return TrajectoryConfig(**base)


def plain_train(
    args: Any,
    model: torch.nn.Module,
    corpus: TokenizedCorpus,
    opt_name: str,
    lora: bool,
    dev: torch.device,
    steps: int = 3,
    fsdp: bool = False,
) -> dict:
    """Ordinary training steps (SDPA attention, torch.optim, loss.backward): time and memory.

    ``lora``: on a copy with adapters; else the model itself trains (in place, random anyway).
    ``fsdp``: the model is already sharded with FSDP2; each rank takes its slice of the batch.
    """
    base = mem_base(dev, None if lora else model)
    set_attn(model, "sdpa")
    tcfg = traj_cfg(args, opt_name, lora)
    m = copy.deepcopy(model) if lora else model
    m, params = prepare_model(m, tcfg, inplace=True, exact_attention=False)
    if fsdp:
        params = [p for p in m.parameters() if p.requires_grad]
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=tcfg.lr, foreach=True)
    else:
        opt = torch.optim.AdamW(params, lr=tcfg.lr, foreach=True)
    order = batch_order(len(corpus), tcfg)
    W = dist.get_world_size() if fsdp else 1
    r = dist.get_rank() if fsdp else 0
    b = math.ceil(args.batch / W)
    ac = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )

    def step(t: int) -> None:
        idx = order[t % len(order)][r * b : (r + 1) * b]
        ids = corpus.input_ids[idx].to(dev)
        with ac:
            logits = m(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up (allocator, cuBLAS, optimizer state)
    sync(dev)
    t0 = time.perf_counter()
    for t in range(1, steps + 1):
        step(t)
    sync(dev)
    dt = (time.perf_counter() - t0) / steps
    out = {
        "step_s": dt,
        "tokens_per_s": args.batch * args.seq / dt,
        "peak_gb": peak_since(dev, base),
        "trained": sum(p.numel() for p in params) * (W if fsdp else 1),
    }
    if not lora:  # locals (optimizer state, the LoRA copy) go with this frame
        for p in model.parameters():
            p.grad = None
    clean(dev)
    return out


def run_magic(
    args: Any,
    model: torch.nn.Module,
    corpus: TokenizedCorpus,
    queries: dict,
    cfg: TrajectoryConfig,
    dev: torch.device,
    inplace: bool,
) -> dict:
    base = mem_base(dev, model if inplace else None)
    set_attn(model, "sdpa")
    sync(dev)
    t0 = time.perf_counter()
    art = attribute(model, corpus, queries, cfg, progress=False, inplace=inplace)
    sync(dev)
    wall = time.perf_counter() - t0
    tm = art.meta["timings"]
    T = cfg.steps
    nb = {"sgd": 0, "momentum": 1, "adamw": 2}[cfg.optimizer]
    n_trained = art.meta["n_params_trained"]
    pb = (
        4
        if cfg.lora is not None
        else torch.empty((), dtype=getattr(torch, cfg.dtype)).element_size()
    )
    fwd_step = tm["forward_s"] / T
    rev_total = tm["reverse_s"] / T
    out = {
        "optimizer": cfg.optimizer,
        "lora": cfg.lora is not None,
        "steps": T,
        "checkpointing": f"{cfg.checkpointing}/{cfg.checkpoint_k}/{cfg.storage}",
        "reverse_microbatch": cfg.reverse_microbatch,
        "trained_params": n_trained,
        "wall_s": wall,
        "forward_s": tm["forward_s"],
        "reverse_s": tm["reverse_s"],
        "forward_step_s": fwd_step,
        # the reverse pass replays segments with training steps; the step itself without them
        "reverse_step_s": max(0.0, (tm["reverse_s"] - tm["replayed_steps"] * fwd_step) / T),
        "reverse_s_per_step": rev_total,
        "replayed_steps": tm["replayed_steps"],
        "stored_states": tm["max_stored_states"],
        "state_gb": (1 + nb) * n_trained * pb / GB / max(1, tm.get("world_size", 1)),
        "pin_s": tm.get("pin_s", 0.0),
        "max_replay_drift": tm.get("max_replay_drift", 0.0),
        "peak_gb": peak_since(dev, base),
        "world_size": tm.get("world_size", 1),
        "_scores": art.scores,
    }
    out["checkpoint_gb"] = out["state_gb"] * out["stored_states"]
    del art
    release_pinned_memory()
    clean(dev)
    return out


def loop_steps(res_history: list[dict], tokens_per_step: float) -> float:
    """Seconds per step after the first, from the loop's cumulative tokens/s history."""
    t = [h["step"] * tokens_per_step / h["tokens_per_s"] for h in res_history]
    if len(t) < 3:
        return t[-1] / max(1, res_history[-1]["step"])
    return (t[-1] - t[1]) / (res_history[-1]["step"] - res_history[1]["step"])


def run_loop(
    args: Any,
    model: torch.nn.Module,
    method: str,
    data: dict[str, TokenizedCorpus],
    lcfg: Any,
    dev: torch.device,
    copy_model: bool,
) -> dict:
    from magic_unlearn.unlearn.loop import train_loop
    from magic_unlearn.unlearn.methods import get_method

    base = mem_base(dev)
    set_attn(model, "sdpa")
    m = copy.deepcopy(model) if copy_model else model
    sync(dev)
    t0 = time.perf_counter()
    res = train_loop(m, get_method(method), data, lcfg, progress=False)
    sync(dev)
    wall = time.perf_counter() - t0
    W = dist.get_world_size() if dist.is_initialized() else 1
    tok_step = sum(lcfg.batch_size * c.input_ids.shape[1] for c in data.values()) * W
    step_s = loop_steps(res.history, tok_step)
    out = {
        "method": method,
        "steps": lcfg.steps,
        "lora": lcfg.lora is not None,
        "rows_per_step": lcfg.batch_size * len(data) * W,
        "seq": next(iter(data.values())).input_ids.shape[1],
        "wall_s": wall,
        "step_s": step_s,
        "tokens_per_s": tok_step / step_s,
        "peak_gb": peak_since(dev, base),
        "distributed": lcfg.distributed,
    }
    del res, m
    clean(dev)
    return out


def unlearn_cfg(args: Any, lora: bool, steps: int, batch: int, distributed: str = "none"):
    from magic_unlearn.unlearn.loop import LoopConfig

    return LoopConfig(
        steps=steps,
        lr=1e-5 if not lora else 1e-4,
        optimizer="adamw",
        batch_size=batch,
        precision=args.precision,
        lora=LoraSpec(r=16, alpha=32, target_modules=LORA_TARGETS) if lora else None,
        merge_lora=False,
        log_every=1,
        device=args.device,
        distributed=distributed,
    )


def attack_cfg(args: Any, name: str, steps: int, batch: int | None, distributed: str = "none"):
    """The ``real`` suite's attack ``name`` as a loop config (bf16 on a bf16 model)."""
    import dataclasses

    from magic_unlearn.tamper.attacks.finetune import loop_config
    from magic_unlearn.tamper.config import AttackConfig, suite_dict

    spec = dict(suite_dict("real")["attacks"][name])
    spec.update(precision=args.precision, eval_every=0)
    if batch is not None:
        spec["batch_size"] = batch
    att = AttackConfig(**spec)
    lcfg = loop_config(att, att.lr, steps, args.device)
    return dataclasses.replace(lcfg, distributed=distributed, merge_lora=False), att.max_length


# ------------------------------------------------------------------------------ memory / scale


def stats_for(args: Any, layers: int, lora: bool) -> ModelStats:
    s = args.shape
    return ModelStats.gpt_neox(
        s["hidden"], layers, s["intermediate"], s["vocab"], lora_r=16 if lora else None
    )


def predict(args: Any, r: dict, layers: int, c_layer: float, world: int = 1) -> dict:
    """The memory model's prediction for a measured MAGIC row ``r``."""
    lora = r["lora"]
    ck = r["checkpointing"].split("/")
    est = magic_memory(
        stats_for(args, layers, lora),
        world_size=world,
        batch_size=args.batch,
        seq=args.seq,
        optimizer=r["optimizer"],
        param_bytes=4 if lora else args.pbytes,
        frozen_bytes=args.pbytes,
        act_bytes=2 if args.precision == "bf16" else 4,
        storage=ck[2],
        checkpointing=ck[0],
        steps=r["steps"],
        checkpoint_k=None if ck[1] == "None" else int(ck[1]),
        reverse_microbatch=r["reverse_microbatch"],
        c_layer=c_layer,
    )
    return est.summary()


def choose_layers(
    args: Any, opt: str, c_layer: float, gpu_budget: float, host_budget: float, world: int = 1
) -> tuple[int, dict, dict]:
    """The deepest version of the shape whose predicted MAGIC memory fits (and its settings)."""
    for L in range(args.shape["layers"], 0, -1):
        for ck, k in (("sqrt", None), ("kary", 2)):
            kw = dict(
                world_size=world,
                batch_size=args.batch,
                seq=args.seq,
                optimizer=opt,
                param_bytes=args.pbytes,
                act_bytes=2 if args.precision == "bf16" else 4,
                storage="cpu",
                checkpointing=ck,
                checkpoint_k=k,
                steps=args.steps,
                reverse_microbatch=1,
                c_layer=c_layer,
            )
            est = magic_memory(stats_for(args, L, False), **kw)
            if est.gpu_total <= gpu_budget and est.host_total <= host_budget:
                return (
                    L,
                    {"checkpointing": ck, "checkpoint_k": k, "reverse_microbatch": 1},
                    (est.summary()),
                )
    return 0, {}, {}


def comm_s(P: int, W: int, pbytes: int, bw: float, passes: float) -> float:
    """All-gather (pbytes) + reduce-scatter (fp32) time of ``passes`` forward/backward pairs."""
    if W == 1:
        return 0.0
    return passes * (W - 1) / W * P * (pbytes + 4) / bw


def extrapolate(args: Any, res: dict) -> list[dict]:
    """The seed's runs (T = 250, 1250; batch 4 x 1024; SGD) on W = 2, 4, 8 GPUs.

    Per-step compute scales with the rows a rank runs, ceil(4 / W) of 4 (ghost rows beyond);
    collectives add the all-gather / reduce-scatter volume at ``--nvlink-gbs``; replayed steps
    come from the REPLAY schedule; memory from the memory model with the fitted c_layer. Runs
    measured on fewer layers are scaled to 32 by trained parameters (compute ~ parameters).
    """
    full = res.get("full_magic_sgd") or {}
    if "forward_step_s" not in full:
        return []
    L = full.get("layers", args.shape["layers"])
    P32 = stats_for(args, args.shape["layers"], False).trained
    scale = P32 / stats_for(args, L, False).trained
    t_fwd1, t_rev1 = full["forward_step_s"] * scale, full["reverse_step_s"] * scale
    plain = res.get(f"plain_full_sgd_L{L}") or res.get("plain_full_sgd") or {}
    t_train1 = plain.get("step_s", float("nan")) * scale
    fit = res.get("memory_fit", {})
    c_rev = fit.get("c_layer_reverse_full", fit.get("c_layer_used", C_LAYER_REVERSE))
    c_tr = res.get("memory_fit", {}).get("c_layer_train", C_LAYER_TRAIN)
    bw = args.nvlink_gbs * 1e9
    rows = []
    stats = stats_for(args, args.shape["layers"], False)
    for T in (250, 1250):
        for W in (2, 4, 8):
            frac = math.ceil(args.batch / W) / args.batch
            f = t_fwd1 * frac + comm_s(P32, W, args.pbytes, bw, 1)
            rv = t_rev1 * frac + comm_s(P32, W, args.pbytes, bw, 2)
            for ck, k in (("sqrt", None), ("kary", 2)):
                n_states, replayed = stored_states(T, ck, k)
                est = magic_memory(
                    stats,
                    world_size=W,
                    batch_size=args.batch,
                    seq=args.seq,
                    optimizer="sgd",
                    param_bytes=args.pbytes,
                    storage="cpu",
                    checkpointing=ck,
                    checkpoint_k=k,
                    steps=T,
                    reverse_microbatch=1,
                    c_layer=c_rev,
                )
                tr = training_memory(
                    stats, world_size=W, batch_size=args.batch, seq=args.seq, c_layer=c_tr
                )
                rows.append(
                    {
                        "T": T,
                        "gpus": W,
                        "checkpointing": ck if k is None else f"{ck}{k}",
                        "train_s (plain)": T
                        * (t_train1 * frac + comm_s(P32, W, args.pbytes, bw, 1)),
                        "forward_s": T * f,
                        "reverse_s": T * rv + replayed * f,
                        "magic_total_s": T * f + T * rv + replayed * f,
                        "gpu_gb_train": tr.gpu_total / GB,
                        "gpu_gb_reverse": est.gpu_total / GB,
                        "host_gb_per_rank": est.host_total / GB,
                        "stored_states": n_states,
                        "replayed": replayed,
                    }
                )
    return rows


# ------------------------------------------------------------------------------ mode: one GPU


def mode_one(args: Any, dev: torch.device, res: dict, out: Path) -> None:
    budget = Budget(args.budget_s, dev)
    T, B, S, V = args.steps, args.batch, args.seq, args.shape["vocab"]
    corpus = make_corpus(T * B, S, V)
    g = torch.Generator().manual_seed(1)
    q = {"heldout": HeldoutNLL(torch.randint(0, V, (args.q_rows, args.q_len), generator=g).to(dev))}
    gpu_total = (
        torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 64 * GB
    )
    gpu_budget = args.gpu_frac * gpu_total
    host_budget = args.host_frac * host_available()
    res["budgets"] = {"gpu_gb": gpu_budget / GB, "host_gb": host_budget / GB}
    L0 = args.shape["layers"]

    t0 = time.perf_counter()
    model = build_neox(args.shape, L0, dev, args.torch_dtype)
    sync(dev)
    res["build"] = {
        "s": time.perf_counter() - t0,
        "params": sum(p.numel() for p in model.parameters()),
        "layers": L0,
    }
    log(f"built {res['build']['params'] / 1e9:.2f}B params in {res['build']['s']:.1f} s")
    save(res, out)

    # 1. plain training of the shape
    if budget.allows("plain training", 25 * args.est):
        for lora, opt in ((True, "sgd"), (True, "adamw"), (False, "sgd"), (False, "adamw")):
            key = f"plain_{'lora' if lora else 'full'}_{opt}"
            guarded(res, key, plain_train, args, model, corpus, opt, lora, dev)
            log(f"{key}: {res[key]}")
        save(res, out)

    # 2. LoRA-subspace MAGIC (T >= 16, seq 1024, batch 4), SGD and AdamW
    fit: dict[str, float] = {}
    for opt in ("sgd", "adamw"):
        key = f"lora_magic_{opt}"
        if not budget.allows(key, (40 if opt == "sgd" else 50) * args.est):
            continue
        cfg = traj_cfg(args, opt, True, checkpointing="every", storage="gpu")
        r = guarded(res, key, run_magic, args, model, corpus, q, cfg, dev, inplace=False)
        if r:
            r.pop("_scores", None)
            r["layers"] = L0
            log(f"{key}: {r}")
            if opt == "sgd" and dev.type == "cuda":
                fit["c_layer_reverse"] = fit_c_layer(
                    r["peak_gb"] * GB,
                    stats_for(args, L0, True),
                    world_size=1,
                    batch_size=B,
                    seq=S,
                    optimizer="sgd",
                    param_bytes=4,
                    frozen_bytes=args.pbytes,
                    storage="gpu",
                    checkpointing="every",
                    steps=T,
                )
        save(res, out)
    pt = res.get("plain_full_sgd", {})
    if "peak_gb" in pt and dev.type == "cuda":
        fit["c_layer_train"] = fit_c_layer(
            pt["peak_gb"] * GB,
            stats_for(args, L0, False),
            kind="training",
            batch_size=B,
            seq=S,
            optimizer="sgd",
            param_bytes=args.pbytes,
        )
    # LoRA's double backward keeps fewer tensors than full training's (no weight-gradient
    # products), so the shape choice for full runs never goes below the a priori coefficient
    c_rev = args.c_layer or max(fit.get("c_layer_reverse", 0.0), C_LAYER_REVERSE)
    res["memory_fit"] = {**fit, "c_layer_used": c_rev}
    log(f"memory model: activation coefficients {res['memory_fit']}")

    # 3a. full-parameter MAGIC, SGD, on the deepest shape that fits
    L, kw, pred = choose_layers(args, "sgd", c_rev, gpu_budget, host_budget)
    res["full_sgd_choice"] = {"layers": L, **kw, "predicted": pred}
    est = args.est * (70 * L / L0 + PIN_S_PER_GB * pred.get("host_total", 0))
    if L and budget.allows("full_magic_sgd", est):
        if L != L0:  # a shallower copy of the shape (same width), fresh
            del model
            clean(dev)
            model = build_neox(args.shape, L, dev, args.torch_dtype)
            guarded(
                res, f"plain_full_sgd_L{L}", plain_train, args, model, corpus, "sgd", False, dev
            )
        cfg = traj_cfg(args, "sgd", False, **kw)
        r = guarded(
            res, "full_magic_sgd", run_magic, args, model, corpus, q, cfg, dev, inplace=True
        )
        if r:
            r.pop("_scores", None)
            r["layers"] = L
            log(f"full_magic_sgd (L={L}): {r}")
            if dev.type == "cuda":  # the full-parameter coefficient, for the extrapolation
                res["memory_fit"]["c_layer_reverse_full"] = fit_c_layer(
                    r["peak_gb"] * GB,
                    stats_for(args, L, False),
                    batch_size=B,
                    seq=S,
                    optimizer="sgd",
                    param_bytes=args.pbytes,
                    storage="cpu",
                    steps=T,
                    **kw,
                )
        save(res, out)

    # 4. the unlearning loop and the standard attack, 10 steps each (LoRA and full)
    if L != L0:
        del model
        clean(dev)
        model = build_neox(args.shape, L0, dev, args.torch_dtype)
    forget, retain = make_corpus(64, S, V, seed=2), make_corpus(64, S, V, seed=3)
    for lora in (True, False):
        key = f"unlearn_rr_{'lora' if lora else 'full'}"
        if budget.allows(key, 30 * args.est):
            guarded(
                res,
                key,
                run_loop,
                args,
                model,
                "rr",
                {"forget": forget, "retain": retain},
                unlearn_cfg(args, lora, args.loop_steps, B),
                dev,
                copy_model=lora,
            )
            log(f"{key}: {res[key]}")
            save(res, out)
    for name in ("lora", "standard"):
        key = f"attack_{name}"
        if budget.allows(key, 25 * args.est):
            lcfg, max_len = attack_cfg(args, name, args.loop_steps, args.attack_batch)
            data = {"data": make_corpus(64, min(max_len, args.seq), V, seed=4)}
            guarded(
                res,
                key,
                run_loop,
                args,
                model,
                "sft",
                data,
                lcfg,
                dev,
                copy_model=lcfg.lora is not None,
            )
            log(f"{key}: {res[key]}")
            save(res, out)

    # 3b. full-parameter MAGIC, AdamW, on the deepest shape that fits
    L, kw, pred = choose_layers(args, "adamw", c_rev, gpu_budget, host_budget)
    res["full_adamw_choice"] = {"layers": L, **kw, "predicted": pred}
    est = args.est * (15 + 90 * L / L0 + PIN_S_PER_GB * pred.get("host_total", 0))
    if L and budget.allows("full_magic_adamw", est):
        del model
        clean(dev)
        model = build_neox(args.shape, L, dev, args.torch_dtype)
        guarded(
            res, f"plain_full_adamw_L{L}", plain_train, args, model, corpus, "adamw", False, dev
        )
        cfg = traj_cfg(args, "adamw", False, **kw)
        r = guarded(
            res, "full_magic_adamw", run_magic, args, model, corpus, q, cfg, dev, inplace=True
        )
        if r:
            r.pop("_scores", None)
            r["layers"] = L
            log(f"full_magic_adamw (L={L}): {r}")
        save(res, out)
    del model
    clean(dev)
    report(args, res)
    res["elapsed_s"] = budget.elapsed()
    save(res, out)


def report(args: Any, res: dict) -> None:
    """Print the tables: ratios to plain training, the memory model check, the extrapolation."""
    fit = res.get("memory_fit", {})
    coefs = [("a priori", C_LAYER_REVERSE)]
    coefs += [
        (name, fit[k])
        for name, k in (
            ("fit LoRA SGD", "c_layer_reverse"),
            ("fit full SGD", "c_layer_reverse_full"),
        )
        if k in fit
    ]
    rows, mem = [], []
    for key in ("lora_magic_sgd", "lora_magic_adamw", "full_magic_sgd", "full_magic_adamw"):
        r = res.get(key) or {}
        if "forward_step_s" not in r:
            continue
        L = r["layers"]
        kind = "lora" if r["lora"] else "full"
        plain = res.get(f"plain_{kind}_{r['optimizer']}_L{L}") or res.get(
            f"plain_{kind}_{r['optimizer']}", {}
        )
        p = plain.get("step_s", float("nan"))
        rows.append(
            {
                "run": key,
                "layers": L,
                "train step s (plain)": p,
                "fwd step s": r["forward_step_s"],
                "rev step s": r["reverse_step_s"],
                "rev/plain": r["reverse_step_s"] / p,
                "MAGIC/T plain": r["wall_s"] / (r["steps"] * p),
                "peak GiB": r["peak_gb"],
                "plain peak GiB": plain.get("peak_gb", float("nan")),
                "ckpt GiB": r["checkpoint_gb"],
                "states": r["stored_states"],
                "pin s": r["pin_s"],
                "drift": r["max_replay_drift"],
            }
        )
        for name, c in coefs:
            pr = predict(args, r, L, c, r.get("world_size", 1))
            mem.append(
                {
                    "run": key,
                    "c_layer": f"{name} {c:.0f}",
                    "measured GiB": r["peak_gb"],
                    "predicted GiB": pr["gpu_total"],
                    "pred/meas": pr["gpu_total"] / r["peak_gb"],
                    "phase": pr["phase"],
                    "host GiB pred": pr["host_total"],
                    "host GiB meas": r["checkpoint_gb"],
                }
            )
    res["ratios"], res["memory_check"] = rows, mem
    log("\nMAGIC vs plain training of the same shape (one GPU):")
    log(table(rows, list(rows[0]) if rows else ["run"]))
    log("\nMemory model vs measured peak (GiB, above the resident model where it was shared):")
    log(table(mem, list(mem[0]) if mem else ["run"]))
    loops = [
        {
            "run": k,
            **{
                c: v
                for c, v in res[k].items()
                if c in ("step_s", "tokens_per_s", "peak_gb", "rows_per_step", "seq", "distributed")
            },
        }
        for k in res
        if k.startswith(("unlearn_", "attack_")) and "step_s" in res[k]
    ]
    if loops:
        log("\nUnlearning loop and standard attack (10 steps):")
        log(table(loops, list(loops[0])))
    ext = extrapolate(args, res)
    res["extrapolation"] = ext
    if ext:
        log(
            f"\nExtrapolation to the seed's runs (SGD, batch {args.batch} x {args.seq}; NVLink "
            f"{args.nvlink_gbs:g} GB/s assumed). Seed, {SEED['gpus']} x GH200, {SEED['steps']} "
            f"steps: training {SEED['train_s']:.0f} s, backward {SEED['backward_s']:.0f} s, "
            f"{SEED['train_gb_per_gpu']} GB/GPU training vs {SEED['backward_gb_per_gpu']} GB/GPU "
            f"backward."
        )
        log(table(ext, list(ext[0])))


# ------------------------------------------------------------------------------ small shape


SMALL_CASES = [("fp32", "sgd"), ("fp32", "adamw"), ("bf16", "sgd"), ("bf16", "adamw")]


def small_runs(args: Any, dev: torch.device) -> dict:
    """MAGIC of the small shape in the four (precision, optimizer) cases; scores and timings."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the comparison
    torch.backends.cudnn.allow_tf32 = False
    sh = SHAPE_TINY if args.tiny else SHAPE_160M
    seq, T, B = (32, 4, 4) if args.tiny else (512, 8, 4)
    corpus = make_corpus(T * B, seq, sh["vocab"], seed=5)
    g = torch.Generator().manual_seed(6)
    qids = torch.randint(0, sh["vocab"], (2, seq), generator=g)
    out = {}
    for prec, opt in SMALL_CASES:
        # theta_0 built on the CPU from the seed: the same on every rank and in the reference
        model = build_neox(sh, sh["layers"], torch.device("cpu"), torch.float32).to(dev)
        cfg = TrajectoryConfig(
            optimizer=opt,
            lr=1e-3 if opt == "sgd" else 1e-4,
            steps=T,
            batch_size=B,
            dtype="float32",
            precision=prec if dev.type == "cuda" else "fp32",
            checkpointing="sqrt",
            storage="cpu",
            compile_attention=False,
            drift_tol=args.drift_tol,
        )
        r = run_magic(args, model, corpus, {"q": HeldoutNLL(qids.to(dev))}, cfg, dev, True)
        out[f"{prec}_{opt}"] = r
        del model
    return out


def mode_small_ref(args: Any, dev: torch.device, res: dict, out: Path) -> None:
    runs = small_runs(args, dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.pop("_scores") for k, v in runs.items()}, out.parent / "small_ref.pt")
    res["small_ref"] = runs
    save(res, out)
    log(
        table(
            [
                {"case": k, **{c: v[c] for c in ("forward_step_s", "reverse_step_s", "peak_gb")}}
                for k, v in runs.items()
            ],
            ["case", "forward_step_s", "reverse_step_s", "peak_gb"],
        )
    )


# ------------------------------------------------------------------------------ mode: dist


def mode_dist(args: Any, dev: torch.device, res: dict, out: Path) -> None:
    from torch.distributed.fsdp import fully_shard

    budget = Budget(args.budget_s, dev)
    W = dist.get_world_size()
    res["world_size"] = W
    only = set(args.only.split(","))
    if not only <= {"small", "magic", "loops"}:
        sys.exit(f"--only {args.only}: use a comma-separated subset of small,magic,loops")
    host_mem("start", res, dev)

    # (a) sharded MAGIC on W GPUs equals one GPU (small shape, fp32 and bf16)
    ref_path = out.parent / "small_ref.pt"
    if "small" in only and ref_path.exists() and budget.allows("small shape", 60 * args.est):
        ref = torch.load(ref_path, weights_only=True)
        runs = guarded(res, "small_dist", small_runs, args, dev) or {}
        rows = []
        for k, r in runs.items():
            s = r.pop("_scores")
            for qn, a in s.items():
                b = ref[k][qn]
                rows.append(
                    {
                        "case": k,
                        "max |diff|": float((a - b).abs().max()),
                        "max |score|": float(b.abs().max()),
                        "rel L2": float((a - b).norm() / b.norm()),
                        "corr": float(
                            torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
                        ),
                        "fwd step s": r["forward_step_s"],
                        "rev step s": r["reverse_step_s"],
                        "peak GiB/GPU": r["peak_gb"],
                    }
                )
        res["small_equality"] = rows
        log(f"\nSharded MAGIC on {W} GPUs vs one GPU (small shape):")
        log(table(rows, list(rows[0]) if rows else ["case"]))
        host_mem("after small shape", res, dev)
        save(res, out)
    elif "small" in only and not ref_path.exists():
        log(f"[skip] small shape equality: no {ref_path} (run --mode small-ref first)")

    # (b) the 6.9B shape, full-parameter MAGIC sharded over W GPUs, and plain FSDP training
    T, B, S, V = args.steps, args.batch, args.seq, args.shape["vocab"]
    L0 = args.shape["layers"]
    corpus = make_corpus(T * B, S, V)
    g = torch.Generator().manual_seed(1)
    q = {"heldout": HeldoutNLL(torch.randint(0, V, (args.q_rows, args.q_len), generator=g).to(dev))}
    gpu_total = (
        torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 64 * GB
    )
    gpu_budget = args.gpu_frac * gpu_total
    c_rev = args.c_layer or C_LAYER_REVERSE
    res["budgets"] = {"gpu_gb": gpu_budget / GB, "c_layer": c_rev}
    for opt in ("sgd", "adamw") if "magic" in only else ():
        # what is free now, after the last run's pinned checkpoints were given back
        host = torch.tensor([host_available()], dtype=torch.float64, device=dev)
        dist.all_reduce(host, op=dist.ReduceOp.MIN)
        host_budget = args.host_frac * float(host) / W
        res["budgets"][f"host_gb_per_rank_{opt}"] = host_budget / GB
        L, kw, pred = choose_layers(args, opt, c_rev, gpu_budget, host_budget, world=W)
        res[f"dist_full_{opt}_choice"] = {"layers": L, **kw, "predicted": pred}
        if not L:
            log(f"[skip] dist_full_magic_{opt}: no depth fits {host_budget / GB:.0f} GiB host/rank")
        est = (50 if opt == "sgd" else 70) * L / L0 + PIN_S_PER_GB * pred.get("host_total", 0)
        if not L or not budget.allows(f"dist_full_magic_{opt}", args.est * (20 + est)):
            continue
        model = build_neox(args.shape, L, dev, args.torch_dtype)
        cfg = traj_cfg(args, opt, False, **kw)
        r = guarded(
            res, f"dist_full_magic_{opt}", run_magic, args, model, corpus, q, cfg, dev, inplace=True
        )
        if r:
            r.pop("_scores", None)
            r["layers"] = L
            pr = predict(args, r, L, c_rev, W)
            r["predicted_gb"] = pr["gpu_total"]
            r["predicted_host_gb"] = pr["host_total"]
            log(f"dist_full_magic_{opt} (L={L}, {W} ranks): {r}")
        del model
        clean(dev)
        host_mem(f"after dist_full_magic_{opt} (pinned checkpoints released)", res, dev)
        # plain FSDP training of the same shape in the same run
        model = build_neox(args.shape, L, dev, args.torch_dtype)
        for layer in model.gpt_neox.layers:
            fully_shard(layer)
        fully_shard(model)
        guarded(
            res,
            f"dist_plain_fsdp_{opt}",
            plain_train,
            args,
            model,
            corpus,
            opt,
            False,
            dev,
            fsdp=True,
        )
        log(f"dist_plain_fsdp_{opt}: {res[f'dist_plain_fsdp_{opt}']}")
        if r and "step_s" in res[f"dist_plain_fsdp_{opt}"]:
            p = res[f"dist_plain_fsdp_{opt}"]["step_s"]
            r["rev/plain"] = r["reverse_step_s"] / p
            r["fwd/plain"] = r["forward_step_s"] / p
        del model
        clean(dev)
        host_mem(f"after dist_plain_fsdp_{opt}", res, dev)
        save(res, out)

    # (c) the unlearning loop and the standard attack with FSDP, 10 steps each. Each run gets a
    # fresh model built on its GPU (no host copy, no second copy to deep-copy from); the loop
    # shards it and rr's frozen reference.
    forget, retain = make_corpus(64, S, V, seed=2), make_corpus(64, S, V, seed=3)
    b = max(1, B // W)
    if "loops" in only and budget.allows("dist_unlearn_rr_full", 40 * args.est):
        model = build_neox(args.shape, L0, dev, args.torch_dtype)
        host_mem("built the model for dist_unlearn_rr_full", res, dev)
        guarded(
            res,
            "dist_unlearn_rr_full",
            run_loop,
            args,
            model,
            "rr",
            {"forget": forget, "retain": retain},
            unlearn_cfg(args, False, args.loop_steps, b, distributed="fsdp"),
            dev,
            copy_model=False,
        )
        log(f"dist_unlearn_rr_full: {res['dist_unlearn_rr_full']}")
        del model
        clean(dev)
        host_mem("after dist_unlearn_rr_full", res, dev)
        save(res, out)
    if "loops" in only and budget.allows("dist_attack_standard", 30 * args.est):
        ab = max(1, (args.attack_batch or 16) // W)
        lcfg, max_len = attack_cfg(args, "standard", args.loop_steps, ab, distributed="fsdp")
        data = {"data": make_corpus(64, min(max_len, S), V, seed=4)}
        model = build_neox(args.shape, L0, dev, args.torch_dtype)
        guarded(
            res,
            "dist_attack_standard",
            run_loop,
            args,
            model,
            "sft",
            data,
            lcfg,
            dev,
            copy_model=False,
        )
        log(f"dist_attack_standard: {res['dist_attack_standard']}")
        del model
        clean(dev)
        host_mem("after dist_attack_standard", res, dev)
        save(res, out)
    rows = []
    for opt in ("sgd", "adamw"):
        r = res.get(f"dist_full_magic_{opt}") or {}
        if "forward_step_s" in r:
            rows.append(
                {
                    "run": f"{opt} L={r['layers']}",
                    "fwd step s": r["forward_step_s"],
                    "rev step s": r["reverse_step_s"],
                    "plain FSDP step s": res.get(f"dist_plain_fsdp_{opt}", {}).get("step_s"),
                    "rev/plain": r.get("rev/plain"),
                    "peak GiB/GPU": r["peak_gb"],
                    "predicted GiB/GPU": r.get("predicted_gb"),
                    "ckpt GiB/rank": r["checkpoint_gb"],
                    "states": r["stored_states"],
                }
            )
    res["dist_summary"] = rows
    if rows:
        log(f"\nFull-parameter MAGIC sharded over {W} GPUs vs plain FSDP training:")
        log(table(rows, list(rows[0])))
    res["elapsed_s"] = budget.elapsed()
    save(res, out)


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mode", default="one", choices=["one", "small-ref", "dist"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test at a tiny shape")
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=16, help="MAGIC steps T")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--loop-steps", type=int, default=10, help="unlearning / attack steps")
    ap.add_argument("--attack-batch", type=int, default=None, help="default: the suite's (16)")
    ap.add_argument("--q-rows", type=int, default=4, help="rows of the held-out measurement")
    ap.add_argument("--q-len", type=int, default=256)
    ap.add_argument(
        "--budget-s", type=float, default=None, help="seconds (default: one 300, dist 330)"
    )
    ap.add_argument("--gpu-frac", type=float, default=0.88, help="usable share of GPU memory")
    ap.add_argument("--host-frac", type=float, default=0.7, help="usable share of free host RAM")
    ap.add_argument("--c-layer", type=float, default=None, help="activation coefficient (dist)")
    ap.add_argument("--nvlink-gbs", type=float, default=150.0, help="collective bandwidth, GB/s")
    ap.add_argument(
        "--drift-tol",
        type=float,
        default=1e9,
        help="replay drift limit; default: report the drift, never stop on it (bf16 SGD on a "
        "random model makes updates below bf16 resolution, so the drift unit is ~0)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the attention node")
    ap.add_argument(
        "--only",
        default="small,magic,loops",
        help="dist mode: comma-separated sections to run: small (sharded = one GPU, small "
        "shape), magic (6.9B sharded MAGIC and plain FSDP), loops (unlearning loop and attack)",
    )
    args = ap.parse_args()

    if args.budget_s is None:
        args.budget_s = 330.0 if args.mode == "dist" else 300.0
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.mode == "dist" and not distributed:
        sys.exit("--mode dist runs under torchrun --nproc-per-node N (N >= 2)")
    if args.tiny:
        args.device = args.device or "cpu"
        args.shape = dict(SHAPE_TINY)
        args.seq, args.steps, args.q_len, args.loop_steps = 64, 4, 16, 3
        args.attack_batch = args.attack_batch or 4
        args.est = 0.02
    else:
        args.shape = dict(SHAPE_69B)
        args.est = 1.0
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(args.device)
    if distributed:
        from magic_unlearn.distributed import distributed_session

        session = distributed_session(args.device)
        dev = session.__enter__()
        args.device = str(dev)
    gpu = dev.type == "cuda"
    args.torch_dtype = torch.bfloat16 if gpu else torch.float32
    args.dtype = "bfloat16" if gpu else "float32"
    args.precision = "bf16" if gpu else "fp32"
    args.pbytes = 2 if gpu else 4
    args.cuda_graphs = False
    magic_mod.model_hash_async = _shape_hash  # see the module docstring
    from magic_unlearn.attribution import sharded

    sharded.model_hash_async = _shape_hash
    out_dir = Path(args.out)
    name = {"one": "bench_scale", "small-ref": "small_ref", "dist": "bench_scale_2gpu"}[args.mode]
    if args.mode == "dist" and set(args.only.split(",")) != {"small", "magic", "loops"}:
        name += "_" + "_".join(sorted(set(args.only.split(","))))  # a partial rerun
    out = out_dir / f"{name}.json"
    res: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k != "torch_dtype"},
        "device": torch.cuda.get_device_name(dev) if gpu else "cpu",
        "torch": torch.__version__,
        "seed_reference": SEED,
    }
    log(f"{args.mode} on {res['device']}, shape {args.shape}")
    {"one": mode_one, "small-ref": mode_small_ref, "dist": mode_dist}[args.mode](
        args, dev, res, out
    )
    log(f"wrote {out}")
    if distributed:
        session.__exit__(None, None, None)


if __name__ == "__main__":
    main()
