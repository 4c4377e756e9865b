"""The MAGIC step kernels with the fused attention node vs plain eager attention (GPU).

    python benchmarks/compare_attention.py [--preset pythia-160m --batch 8 --seq 512]

For each attention variant ("fused": ``attribution.attention`` with FlashAttention forward and
backward and the hand-written double backward; "autograd": the same math as separate eager ops
that autograd differentiates twice; "fused+compile": the double backward through torch.compile)
it prints the time of a training-gradient step and of a reverse step (eager and CUDA-graphed),
checks that two graphed replays give bit-identical results (replays must reproduce the recorded
run), and compares gradients, HVPs and per-token scores with an fp32 reference (no autocast).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from profile_reverse import timed  # benchmarks/ is the script's folder

from magic_unlearn.attribution import TrajectoryConfig
from magic_unlearn.attribution.graphs import GraphedFn
from magic_unlearn.attribution.reverse import ReverseFn
from magic_unlearn.attribution.trajectory import StepGrads, exact_eager_attention, prepare_model
from magic_unlearn.models import build_model


def set_variant(name: str) -> None:
    """Register "eager_exact" as the fused node or as plain autograd attention."""
    from transformers import AttentionInterface

    if name == "autograd":

        def fn(*a: Any, **k: Any):
            k["output_attentions"] = True  # forces the plain-op branch
            return exact_eager_attention(*a, **k)
    else:
        fn = exact_eager_attention
    AttentionInterface.register("eager_exact", fn)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="pythia-160m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--variants", default="fused,autograd,fused+compile")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, CPU, no timings")
    args = ap.parse_args()
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cpu_smoke:
        args.preset, args.vocab, args.seq, args.batch = "neox-tiny", 128, 16, 2
        args.variants = "fused,autograd"
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"# {name}, torch {torch.__version__}, {args.preset}, batch {args.batch} x {args.seq}",
        flush=True,
    )
    base = build_model(args.preset, args.vocab, attn_implementation="sdpa").to(dev)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(dev)
    lm = torch.ones(args.batch, args.seq, device=dev)
    lm[:, 0] = 0
    n_t = lm.sum()
    w = torch.ones_like(lm)
    idx = torch.arange(args.batch, device=dev)

    def run_variant(variant: str, precision: str, graphs: bool) -> dict[str, Any]:
        cfg = TrajectoryConfig(
            precision=precision,
            batch_size=args.batch,
            max_length=args.seq,
            compile_attention=variant == "fused+compile",
        )
        model, params = prepare_model(base, cfg)
        set_variant(variant)  # after prepare_model, which registers the default
        gen = torch.Generator(device=dev).manual_seed(1)
        gbar = [torch.randn(p.shape, device=dev, generator=gen) * 1e-3 for p in params]
        adj = [torch.zeros_like(p) for p in params]
        table = torch.zeros(args.batch, args.seq, device=dev)
        pers = [*gbar, *adj, table]
        rev = ReverseFn(model, params, cfg, 1, masked=False)
        tr = StepGrads(model, params, cfg)
        tr.graphs.enabled = False
        out: dict[str, Any] = {}
        if graphs:
            out["train eager ms"] = timed(lambda: tr._fn(ids, lm, n_t, w), 10)
            out["reverse eager ms"] = timed(lambda: rev(ids, lm, n_t, idx, *pers), 10)
            gt = GraphedFn(tr._fn, [ids, lm, n_t, w])
            rev(ids, lm, n_t, idx, *pers)  # eager warm-up of the in-place function
            gr = GraphedFn(rev, [ids, lm, n_t, idx], pers, pool=gt.pool, warmup=0)
            out["train graph ms"] = timed(lambda: gt(ids, lm, n_t, w), 10)
            out["reverse graph ms"] = timed(lambda: gr(ids, lm, n_t, idx), 10)
            a = [x.clone() for x in gt(ids, lm, n_t, w)]
            b = gt(ids, lm, n_t, w)
            out["train replay bit-identical"] = all(
                torch.equal(x, y) for x, y in zip(a, b, strict=True)
            )
            for x in [*adj, table]:
                x.zero_()
            gr(ids, lm, n_t, idx)
            r1 = [x.clone() for x in [*adj, table]]
            for x in [*adj, table]:
                x.zero_()
            gr(ids, lm, n_t, idx)
            out["reverse replay bit-identical"] = all(
                torch.equal(x, y) for x, y in zip(r1, [*adj, table], strict=True)
            )
            torch.cuda.reset_peak_memory_stats(dev)
            torch.cuda.synchronize()
            m0 = torch.cuda.memory_allocated(dev)
            rev(ids, lm, n_t, idx, *pers)
            torch.cuda.synchronize()
            out["reverse eager peak extra GiB"] = (
                torch.cuda.max_memory_allocated(dev) - m0
            ) / 2**30
            del gt, gr
        for x in [*adj, table]:
            x.zero_()
        grads = [x.detach().clone() for x in tr._fn(ids, lm, n_t, w)[:-1]]
        rev(ids, lm, n_t, idx, *pers)
        out["_grads"], out["_hvp"], out["_scores"] = grads, [a.clone() for a in adj], table.clone()
        return out  # the model and its buffers are freed with this frame

    ref = run_variant("autograd", "fp32", graphs=False)
    rows = {}
    for v in [x for x in args.variants.split(",") if x]:
        try:
            r = run_variant(v, "fp32" if args.cpu_smoke else "bf16", graphs=not args.cpu_smoke)
        except Exception as e:  # noqa: BLE001 - report and go on with the next variant
            print(f"{v}: FAILED {type(e).__name__}: {str(e)[:500]}", flush=True)
            continue
        r["grad rel err vs fp32"] = rel(
            torch.cat([x.flatten() for x in r.pop("_grads")]),
            torch.cat([x.flatten() for x in ref["_grads"]]),
        )
        r["hvp rel err vs fp32"] = rel(
            torch.cat([x.flatten() for x in r.pop("_hvp")]),
            torch.cat([x.flatten() for x in ref["_hvp"]]),
        )
        r["score rel err vs fp32"] = rel(r.pop("_scores"), ref["_scores"])
        rows[v] = r
        print(
            v, {k: (round(x, 4) if isinstance(x, float) else x) for k, x in r.items()}, flush=True
        )
    keys = [k for k in next(iter(rows.values()))] if rows else []
    print("\n| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for v, r in rows.items():
        print(
            f"| {v} | "
            + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
