"""Benchmark: bergson 2.5.1's MAGIC next to ours, same workload, same card, same process.

bergson (EleutherAI) is a benchmark-only dependency: install its wheels and their missing
dependencies into a scratch folder first (the device README's prefix)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src

GPU (fp32, TF32 off, as bergson's defaults; Pythia-160m shape, seq 512, batch 8, T=100 SGD,
one held-out query)::

    PYTHONUNBUFFERED=1 python benchmarks/bench_bergson.py --out $OUT/bergson.json

CPU check of the calls (a minute or two)::

    python benchmarks/bench_bergson.py --tiny

bergson's MAGIC is what its ``bergson magic`` command runs: ``Trainer.train(save_mode="sqrt")``
(checkpoints written to disk with torch.distributed.checkpoint), the query gradient at the end
(``bergson.magic.cli.compute_query_gradients``, mean NLL), then ``Trainer.backward`` through the
saved trajectory for per-token weight gradients. Its model loads with eager attention in fp32
and its loss is ``weighted_causal_lm_ce`` (mean over the batch's target tokens), as in
``bergson.magic.trainer.prepare_trainer``; the model here is built from the same weights as
ours and trains on the same batches in the same order, so the two score tables must agree: the
script reports their correlation and relative L2 difference (bergson weights the loss of token
j + 1 at position j; the comparison shifts it onto our convention, token j at position j).

``bench_magic.py`` imports ``run_bergson`` to put bergson's row in its table; a bergson failure
is reported there without losing the other rows.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from typing import Any

import torch
from bench_magic import HeldoutNLL, make_corpus  # benchmarks/ is the script's folder

from magic_unlearn.attribution import TrajectoryConfig, attribute, batch_order
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import build_model


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def score_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """Correlation and relative L2 difference of two (N, L) per-token score tables."""
    a, b = theirs.flatten().double(), ours.flatten().double()
    return {
        "corr": float(torch.corrcoef(torch.stack([a, b]))[0, 1]),
        "rel_l2": float((a - b).norm() / b.norm().clamp_min(1e-300)),
    }


class _Rows:
    """The part of a ``datasets.Dataset`` that bergson's ``DataStream`` reads: ``len`` and
    ``rows[list of indices]["input_ids"]`` (lists of token ids). A stand-in keeps Arrow (and its
    version constraints) out of the benchmark; bergson indexes it once per step either way."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids.tolist()
        self.column_names = ["input_ids"]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: list[int]) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.ids[i] for i in idx]}


def run_bergson(
    model: torch.nn.Module,
    corpus: TokenizedCorpus,
    query_ids: torch.Tensor,
    cfg: TrajectoryConfig,
    device: torch.device,
    work: str | None = None,
) -> dict[str, Any]:
    """bergson's MAGIC on our workload: wall time, peak memory, phases, scores in our layout.

    Args:
        model: the start model (not modified: bergson gets a copy, whose trainable parameters
            it moves to the meta device).
        corpus: training rows (full-length, no padding: the benchmark's random tokens).
        query_ids: (n, L) held-out rows; the measurement is their mean next-token NLL.
        cfg: our trajectory config (SGD without momentum, its lr, steps, batch size, seed:
            bergson trains on ``batch_order(len(corpus), cfg)``, our data order).
        device: where bergson runs.
        work: folder for bergson's checkpoints (default: a temporary folder, removed).

    Returns:
        ``wall_s`` (train + query gradient + backward, device-synchronised), ``peak_gb``,
        ``train_s``, ``query_s``, ``backward_s`` and ``scores`` (N, L) in our convention.
    """
    if cfg.optimizer != "sgd" or cfg.weight_decay:
        raise ValueError("the bergson comparison runs plain SGD (its torchopt.sgd, momentum 0)")
    import copy
    from functools import partial

    import torchopt
    from bergson.magic.cli import compute_query_gradients
    from bergson.magic.data_stream import DataStream
    from bergson.magic.trainer import BackwardState, Trainer
    from bergson.utils.math import weighted_causal_lm_ce
    from torchopt.pytree import tree_iter

    own = tempfile.mkdtemp(prefix="bergson-ckpt-") if work is None else work
    try:
        order = batch_order(len(corpus), cfg).flatten()  # stream row i = our corpus row order[i]
        n_rows, length = len(order), corpus.input_ids.shape[1]
        m = copy.deepcopy(model).to(device, torch.float32)
        # as bergson.magic.trainer.prepare_trainer: eager attention, eval mode, its loss
        m.config._attn_implementation = "eager"
        for sub in m.modules():
            c = getattr(sub, "config", None)
            if c is not None and hasattr(c, "_attn_implementation"):
                c._attn_implementation = "eager"
        m.eval()
        m.requires_grad_(True)
        m.loss_function = partial(weighted_causal_lm_ce, reduction="mean")
        train_ds = _Rows(corpus.input_ids[order])
        stream = DataStream(train_ds, cfg.batch_size, device=device, weight_shape=(n_rows, length))
        query_ds = _Rows(query_ids.cpu())
        qstream = DataStream(
            query_ds, len(query_ids), device=device, weight_shape=(len(query_ids),)
        )
        trainer, state = Trainer.initialize(m, torchopt.sgd(cfg.lr, momentum=0.0))
        if device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        state = trainer.train(state, stream, inplace=True, save_dir=own, save_mode="sqrt")
        _sync(device)
        t1 = time.perf_counter()
        qgrads, qloss = compute_query_gradients(state, m, qstream, "mean")
        _sync(device)
        t2 = time.perf_counter()
        stream.requires_grad = True
        opt_grads = [
            torch.zeros_like(b)
            for b in tree_iter(state.opt_state)
            if isinstance(b, torch.Tensor) and b.is_floating_point()
        ]
        bwd = BackwardState(qgrads, opt_grads, torch.zeros_like(stream.weights))
        bwd = trainer.backward(own, stream, bwd, state, inplace=True, save_mode="sqrt")
        _sync(device)
        t3 = time.perf_counter()
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        raw = bwd.weight_grads.detach().float().cpu()  # (n_rows, L), stream order
        scores = torch.zeros(corpus.input_ids.shape)
        # bergson's weight at position j scales the loss of token j + 1; ours, of token j
        scores[order, 1:] = raw[:, :-1]
        return {
            "wall_s": t3 - t0,
            "peak_gb": peak,
            "train_s": t1 - t0,
            "query_s": t2 - t1,
            "backward_s": t3 - t2,
            "query_loss": float(qloss),
            "scores": scores * corpus.loss_mask,
        }
    finally:
        if work is None:
            shutil.rmtree(own, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="pythia-160m")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--q-rows", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="CPU check: neox-tiny, seq 32, T=6")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.tiny:
        args.preset, args.vocab, args.seq, args.batch, args.steps = "neox-tiny", 256, 32, 2, 6
        args.q_rows, args.lr = 2, 0.05
    dev = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    corpus = make_corpus(args.steps * args.batch, args.seq, args.vocab)
    g = torch.Generator().manual_seed(1)
    qids = torch.randint(0, args.vocab, (args.q_rows, args.seq), generator=g)
    cfg = TrajectoryConfig(
        optimizer="sgd",
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch,
        dtype="float32",
        precision="fp32",
        max_length=args.seq,
    )
    model = build_model(args.preset, args.vocab, seed=0, attn_implementation="sdpa").to(dev)
    res: dict[str, Any] = {"device": name, "preset": args.preset, "rows": {}}
    # ours, fp32; a 2-step warm-up first (kernels, compile), not timed
    wcfg = TrajectoryConfig(**{**cfg.__dict__, "steps": 2})
    q = {"q0": HeldoutNLL(qids.to(dev), "q0")}
    attribute(model, corpus, q, wcfg, progress=False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t0 = time.perf_counter()
    art = attribute(model, corpus, q, cfg, progress=False)
    _sync(dev)
    ours = {
        "wall_s": time.perf_counter() - t0,
        "peak_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0,
    }
    res["rows"]["magic fp32 (ours)"] = ours
    try:
        b = run_bergson(model, corpus, qids, cfg, dev)
        res["agreement"] = score_agreement(art.scores["q0"], b.pop("scores"))
        res["rows"]["bergson 2.5.1 fp32"] = b
    except Exception as e:  # noqa: BLE001 - report, keep our numbers
        import traceback

        traceback.print_exc()
        res["rows"]["bergson 2.5.1 fp32"] = {"wall_s": float("nan"), "error": repr(e)[:300]}
    print(f"\n{name}, {args.preset}, seq {args.seq}, batch {args.batch}, T={args.steps} SGD")
    print("| run | wall s | peak GiB | x ours |")
    print("|---|---|---|---|")
    for k, r in res["rows"].items():
        print(
            f"| {k} | {r['wall_s']:.2f} | {r.get('peak_gb', float('nan')):.2f} "
            f"| {r['wall_s'] / ours['wall_s']:.2f} |"
        )
    if "agreement" in res:
        print(
            f"scores, bergson vs ours: corr {res['agreement']['corr']:.6f}, "
            f"rel L2 {res['agreement']['rel_l2']:.3g}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
