"""Tokens/s of our training loop (method ``sft``) vs a plain Hugging Face ``Trainer`` fine-tune.

Same model (a GPT-NeoX preset built from scratch), batch, sequence length, precision, optimizer
(AdamW, constant lr, clipping at 1.0) and number of steps; full-length rows so both process the
same tokens. Each side runs a short warm-up first, then the timed run; we report the median of
``--repeats`` timed runs. Target: ours >= 0.9x Trainer.

    python benchmarks/bench_unlearn.py                      # CPU, small settings
    python benchmarks/bench_unlearn.py --device cuda --preset pythia-160m --batch 16 --seq 512 \
        --precision bf16 --steps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def make_rows(n: int, seq: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (n, seq), generator=g)


def run_ours(args: argparse.Namespace, ids: torch.Tensor, steps: int) -> float:
    from magic_unlearn.data import TokenizedCorpus
    from magic_unlearn.models import build_model
    from magic_unlearn.unlearn import LoopConfig, get_method, train_loop

    n, L = ids.shape
    am = torch.ones_like(ids)
    lm = am.float()
    lm[:, 0] = 0
    corpus = TokenizedCorpus(
        ids, am, lm, torch.full_like(ids, -1), torch.full_like(ids, -1), [str(i) for i in range(n)]
    )
    model = build_model(
        args.preset, args.vocab, seed=0, dtype="float32", attn_implementation=args.attn
    )
    cfg = LoopConfig(
        steps=steps,
        lr=1e-4,
        batch_size=args.batch,
        precision=args.precision,
        device=args.device,
        log_every=10**9,
        max_grad_norm=1.0,
    )
    _sync(args.device)
    t = time.perf_counter()
    train_loop(model, get_method("sft"), {"train": corpus}, cfg, progress=False)
    _sync(args.device)
    return time.perf_counter() - t


def run_trainer(args: argparse.Namespace, ids: torch.Tensor, steps: int, tmp: str) -> float:
    from transformers import Trainer, TrainingArguments

    from magic_unlearn.models import build_model

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return ids.shape[0]

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {
                "input_ids": ids[i],
                "attention_mask": torch.ones_like(ids[i]),
                "labels": ids[i],
            }

    model = build_model(
        args.preset, args.vocab, seed=0, dtype="float32", attn_implementation=args.attn
    )
    targs = TrainingArguments(
        output_dir=tmp,
        per_device_train_batch_size=args.batch,
        max_steps=steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        bf16=args.precision == "bf16",
        use_cpu=args.device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=Rows())
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # no per-run metrics print
    _sync(args.device)
    t = time.perf_counter()
    trainer.train()
    _sync(args.device)
    return time.perf_counter() - t


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="neox-tiny")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import tempfile

    ids = make_rows(max(64, args.batch * 4), args.seq, args.vocab)
    tokens = args.steps * args.batch * args.seq
    res: dict[str, list[float]] = {"ours": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_ours(args, ids, args.warmup)
        run_trainer(args, ids, args.warmup, tmp)
        for _ in range(args.repeats):  # interleave so load changes hit both sides
            res["ours"].append(tokens / run_ours(args, ids, args.steps))
            res["trainer"].append(tokens / run_trainer(args, ids, args.steps, tmp))
    ours, hf = statistics.median(res["ours"]), statistics.median(res["trainer"])
    out = {
        "device": args.device,
        "preset": args.preset,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "precision": args.precision,
        "ours_tok_s": round(ours, 1),
        "trainer_tok_s": round(hf, 1),
        "ratio": round(ours / hf, 3),
        "runs": {k: [round(x, 1) for x in v] for k, v in res.items()},
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"[{args.device} {args.preset} B={args.batch} T={args.seq} {args.precision}] "
            f"ours {ours:,.0f} tok/s | HF Trainer {hf:,.0f} tok/s | ratio {ours / hf:.3f} "
            f"(target >= 0.9)"
        )


if __name__ == "__main__":
    main()
