"""Throughput of our multiple-choice evaluator vs lm-evaluation-harness, same model, same data.

    python benchmarks/bench_eval.py --model neox-small --task mmlu --limit 20 --device cpu
    python benchmarks/bench_eval.py --model pythia-160m --task mmlu --device cuda --dtype bfloat16

``--model`` is a preset of ``magic_unlearn.models.PRESETS`` (random init, with a byte-level BPE
tokenizer trained in code on the questions) or a saved HF model folder. Both evaluators get the
same model object, tokenizer, questions and batch size; the table reports questions per second
end to end (prompt building + tokenization + forwards) and whether every per-question answer is
the same. Without lm-eval installed only our rows are printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from magic_unlearn.evaluation import evaluate, load_task
from magic_unlearn.models import PRESETS, build_model, load_model, load_tokenizer, resolve_device


def bpe_tokenizer_for(texts: list[str], vocab_size: int = 4000) -> Any:
    """A GPT-NeoX-like byte-level BPE tokenizer trained on ``texts`` (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts, tr)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default="neox-tiny", help=f"preset ({', '.join(PRESETS)}) or model folder"
    )
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--source", default=None)
    ap.add_argument("--world", default=None)
    ap.add_argument(
        "--limit", type=int, default=10, help="questions (per subject for mmlu); 0 = all"
    )
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--format", default="both", choices=["letter", "cloze", "both"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of ours (best is kept)")
    ap.add_argument("--no-lmeval", action="store_true")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    task = load_task(
        args.task,
        source=args.source,
        limit=args.limit or None,
        num_fewshot=args.num_fewshot,
        world=args.world,
    )
    if args.model in PRESETS:
        texts = [q["question"] + " " + " ".join(q["choices"]) for q in task.questions]
        tok = bpe_tokenizer_for(texts + ["Question: Answer: A B C D The following are"])
        model = build_model(args.model, vocab_size=len(tok), dtype=args.dtype).to(device).eval()
    else:
        model = load_model(args.model, dtype=args.dtype, device=device)
        tok = load_tokenizer(args.tokenizer or args.model)
    n_params = sum(p.numel() for p in model.parameters())

    try:
        if args.no_lmeval:
            raise ImportError
        import lm_eval  # noqa: F401

        from magic_unlearn.evaluation.lmeval_compat import run_lmeval

        have_lmeval = True
    except ImportError:
        have_lmeval = False

    fmts = ["letter", "cloze"] if args.format == "both" else [args.format]
    rows: list[dict[str, Any]] = []
    for fmt in fmts:
        evaluate(model, tok, task, fmt=fmt, batch_size=args.batch_size, limit=4)  # warm-up
        best = None
        for _ in range(max(1, args.repeats)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            res = evaluate(model, tok, task, fmt=fmt, batch_size=args.batch_size)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        rows.append(
            dict(
                impl="magic_unlearn",
                fmt=fmt,
                n=res.n,
                seconds=best,
                qps=res.n / best,
                acc=res.acc,
                acc_norm=res.acc_norm,
                fast_path=res.fast_path,
                same_answers=None,
            )
        )
        if have_lmeval:
            le = run_lmeval(model, tok, task, fmt, batch_size=args.batch_size, device=str(device))
            same = le["predictions"] == res.predictions
            if fmt == "cloze":
                same = same and le["predictions_norm"] == res.predictions_norm
            max_diff = float(
                np.abs(np.array(le["loglikelihoods"]) - np.array(res.loglikelihoods)).max()
            )
            rows.append(
                dict(
                    impl="lm-eval",
                    fmt=fmt,
                    n=res.n,
                    seconds=le["seconds"],
                    qps=res.n / le["seconds"],
                    acc=le["acc"],
                    acc_norm=le["acc_norm"] if fmt == "cloze" else None,
                    fast_path=None,
                    same_answers=same,
                    max_ll_diff=max_diff,
                )
            )

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\nmodel={args.model} ({n_params / 1e6:.1f}M params, {args.dtype}) task={task.name} "
        f"n={len(task)} {args.num_fewshot}-shot device={dev_name} batch={args.batch_size} "
        f"threads={torch.get_num_threads()}"
    )
    head = (
        f"{'impl':<14} {'format':<7} {'n':>6} {'seconds':>9} {'q/s':>9} {'acc':>7} "
        f"{'acc_norm':>8} {'same answers':>13}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        an = f"{r['acc_norm']:8.4f}" if r["acc_norm"] is not None else f"{'-':>8}"
        same = "-" if r["same_answers"] is None else ("yes" if r["same_answers"] else "NO")
        print(
            f"{r['impl']:<14} {r['fmt']:<7} {r['n']:>6} {r['seconds']:9.2f} {r['qps']:9.1f} "
            f"{r['acc']:7.4f} {an} {same:>13}"
        )
    for fmt in fmts:
        ours = [r for r in rows if r["fmt"] == fmt and r["impl"] == "magic_unlearn"][0]
        theirs = [r for r in rows if r["fmt"] == fmt and r["impl"] == "lm-eval"]
        if theirs:
            print(
                f"{fmt}: speed-up x{theirs[0]['seconds'] / ours['seconds']:.2f}, "
                f"max |loglik diff| {theirs[0]['max_ll_diff']:.2e}"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps({"args": vars(args), "device": dev_name, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
