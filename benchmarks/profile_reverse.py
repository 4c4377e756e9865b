"""Profile one MAGIC reverse step (fused double backward) against one training-gradient step.

    python benchmarks/profile_reverse.py [--preset pythia-160m --batch 8 --seq 512 --rows 30]

Prints CUDA time per step (eager and CUDA-graphed) and the top kernels of each by GPU time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from magic_unlearn.attribution import TrajectoryConfig
from magic_unlearn.attribution.graphs import GraphedFn
from magic_unlearn.attribution.reverse import ReverseFn
from magic_unlearn.attribution.trajectory import StepGrads, prepare_model
from magic_unlearn.models import build_model


def timed(fn, n: int = 5) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="pythia-160m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    dev = torch.device("cuda")
    model = build_model(args.preset, args.vocab, attn_implementation=args.attn).to(dev)
    cfg = TrajectoryConfig(precision=args.precision, batch_size=args.batch, max_length=args.seq)
    model, params = prepare_model(model, cfg, inplace=True)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), device=dev)
    lm = torch.ones(args.batch, args.seq, device=dev)
    lm[:, 0] = 0
    n_t = lm.sum()
    gbar = [torch.randn_like(p) * 1e-3 for p in params]
    adj = [torch.zeros_like(p) for p in params]
    table = torch.zeros(args.batch, args.seq, device=dev)
    idx = torch.arange(args.batch, device=dev)
    pers = [*gbar, *adj, table]
    rev = ReverseFn(model, params, cfg, 1, masked=False)
    tr = StepGrads(model, params, cfg)
    tr.graphs.enabled = False
    w = torch.ones_like(lm)
    ms = {
        "train step eager": timed(lambda: tr._fn(ids, lm, n_t, w)),
        "reverse step eager": timed(lambda: rev(ids, lm, n_t, idx, *pers)),
    }
    gt = GraphedFn(tr._fn, [ids, lm, n_t, w])
    gr = GraphedFn(rev, [ids, lm, n_t, idx], pers, pool=gt.pool)
    ms["train step graph"] = timed(lambda: gt(ids, lm, n_t, w))
    ms["reverse step graph"] = timed(lambda: gr(ids, lm, n_t, idx))
    for k, v in ms.items():
        print(f"{k}: {v:.1f} ms", flush=True)
    for name, fn in [
        ("train", lambda: tr._fn(ids, lm, n_t, w)),
        ("reverse", lambda: rev(ids, lm, n_t, idx, *pers)),
    ]:
        with profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True
        ) as prof:
            fn()
            torch.cuda.synchronize()
        total = sum(e.self_device_time_total for e in prof.key_averages()) / 1e3
        print(f"\n## {name} step: {total:.1f} ms of GPU time; aten ops by self CUDA time")
        for e in sorted(
            prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_device_time_total
        )[: args.rows]:
            print(
                f"{e.self_device_time_total / 1e3:8.2f} ms  x{e.count:<4d} {e.key[:40]:40s} "
                f"{str(e.input_shapes)[:110]}"
            )


if __name__ == "__main__":
    main()
