"""Benchmark: share of fine-tuning-attack wall time spent in evaluation.

Runs fine-tuning attacks of a suite through the shared training loop and reports, per attack,
the wall time, the seconds inside the curve scorer (hazard + general MCQ, packed cloze) and
their ratio, at the suite's default eval interval and any others asked for.

    # CPU, tiny world (built into a temp folder if --world is not given)
    OMP_NUM_THREADS=1 python benchmarks/bench_tamper.py
    # GPU, small world
    python benchmarks/bench_tamper.py --world runs/world-small --preset neox-small --device cuda

The model is randomly initialised from ``--preset`` unless ``--model`` names a trained one: the
cost of a step and of an evaluation do not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--world", type=Path, default=None, help="world folder (default: build tiny)")
    ap.add_argument("--model", default=None, help="model folder (default: random --preset)")
    ap.add_argument("--preset", default="neox-tiny")
    ap.add_argument("--suite", default="world:standard,lora,transfer")
    ap.add_argument(
        "--eval-every",
        type=int,
        nargs="*",
        default=[],
        help="extra eval intervals to measure besides the suite default",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write results here")
    args = ap.parse_args()

    import torch

    from magic_unlearn.models import build_model, load_model, resolve_device
    from magic_unlearn.tamper.api import run_attack
    from magic_unlearn.tamper.config import load_suite
    from magic_unlearn.tamper.context import make_attack_context
    from magic_unlearn.world import World, build_world

    torch.set_num_threads(args.threads)
    world_dir = args.world
    if world_dir is None:
        world_dir = Path(tempfile.mkdtemp(prefix="bench_tamper_")) / "world"
        build_world("tiny", world_dir)
    world = World.load(world_dir)
    tok = world.tokenizer
    dev = resolve_device(args.device)
    model = (
        load_model(args.model, device=dev)
        if args.model
        else build_model(args.preset, len(tok)).to(dev).eval()
    )
    suite = load_suite(args.suite)
    ctx = make_attack_context(suite, tok, world=world, device=str(dev))
    # warm up (first call packs the question sets; first CUDA calls compile kernels)
    ctx.scorer(model)
    t = time.perf_counter()
    for _ in range(3):
        ctx.scorer(model)
    one_eval = (time.perf_counter() - t) / 3
    initial = ctx.scorer(model)

    rows = []
    for name, att in suite.selected().items():
        if att.kind != "finetune":
            continue
        for every in [att.eval_every, *args.eval_every]:
            a = load_suite(args.suite, overrides=[f"attacks.{name}.eval_every={every}"]).attacks[
                name
            ]
            e = run_attack(model, name, a, ctx, initial=initial)
            frac = e["eval_s"] / e["wall_s"]
            rows.append(
                {
                    "attack": name,
                    "steps": a.total_steps,
                    "eval_every": every,
                    "default": every == att.eval_every,
                    "n_evals": len(e["points"]) - 1,
                    "wall_s": e["wall_s"],
                    "eval_s": e["eval_s"],
                    "eval_fraction": frac,
                }
            )
    n_h = len(ctx.prompts[0]) if ctx.prompts is not None else None
    print(
        f"device {dev}, threads {args.threads}, model {args.model or args.preset}, world "
        f"{world_dir} ({n_h} hazard questions), eval batch {suite.eval.batch_size}"
    )
    print(f"one evaluation (hazard + general): {one_eval:.3f} s")
    print(
        f"{'attack':<20} {'steps':>5} {'every':>5} {'evals':>5} {'wall s':>7} {'eval s':>7} "
        f"{'eval %':>6}"
    )
    for r in rows:
        print(
            f"{r['attack']:<20} {r['steps']:>5} {r['eval_every']:>5}{'*' if r['default'] else ' '}"
            f"{r['n_evals']:>5} {r['wall_s']:>7.2f} {r['eval_s']:>7.2f} "
            f"{100 * r['eval_fraction']:>6.1f}"
        )
    d = [r for r in rows if r["default"]]
    tot = sum(r["eval_s"] for r in d) / sum(r["wall_s"] for r in d)
    print(
        f"default interval (*): {100 * tot:.1f}% of attack wall time in evaluation (target < 10%)"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"one_eval_s": one_eval, "rows": rows, "default_fraction": tot}, indent=2)
        )


if __name__ == "__main__":
    main()
