"""Fine-tuning attacks: relearning through the unlearning loop (``kind: finetune``).

Fine-tuning attacks are ``sft`` runs of :func:`magic_unlearn.unlearn.loop.train_loop`, so they
share every detail (batching, LoRA, precision) with unlearning itself. A learning-rate sweep
(``lrs``) reports the worst case: the curve reaching the highest hazard accuracy
(``lr_select: curve``) or, at every step, the highest point over the lrs (``per_step``: budget
sweeps).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.lora import LoraSpec
from magic_unlearn.tamper.config import AttackConfig
from magic_unlearn.tamper.context import AttackContext
from magic_unlearn.tamper.registry import Attack, AttackRun, Curve, register_attack
from magic_unlearn.tamper.scoring import Scorer, TimedScorer
from magic_unlearn.tamper.verdict import auc
from magic_unlearn.unlearn.loop import LoopConfig, train_loop
from magic_unlearn.unlearn.methods import get_method


def loop_config(attack: AttackConfig, lr: float, steps: int, device: str) -> LoopConfig:
    """The :class:`LoopConfig` of one fine-tuning phase of ``attack``."""
    return LoopConfig(
        steps=steps,
        lr=lr,
        optimizer=attack.optimizer,
        weight_decay=attack.weight_decay,
        schedule=attack.schedule,
        warmup_steps=attack.warmup_steps,
        batch_size=attack.batch_size,
        grad_accum=attack.grad_accum,
        max_grad_norm=attack.max_grad_norm,
        precision=attack.precision,
        seed=attack.seed,
        lora=(LoraSpec(r=attack.lora_r, alpha=attack.lora_alpha) if attack.lora else None),
        eval_every=attack.eval_every,
        log_every=1,
        device=device,
        distributed="none",
    )


def finetune_attack(
    model: nn.Module,
    attack: AttackConfig,
    corpora: dict[str, TokenizedCorpus],
    scorer: Scorer,
    lr: float,
    *,
    device: str = "auto",
    initial: dict[str, float] | None = None,
    progress: bool = False,
) -> tuple[Curve, dict[str, Any]]:
    """Fine-tune a copy of ``model`` per ``attack`` and return its recovery curve.

    Args:
        model: the model under attack (not modified).
        attack: the attack config (``kind == "finetune"``).
        corpora: ``{"data": rows, ["pre_data": rows]}`` already tokenized.
        scorer: measures a model (called in eval mode, no grad).
        lr: learning rate of this run.
        device: training device.
        initial: the step-0 point if already measured (it is the same for every attack).
        progress: tqdm bar of the loop.

    Returns:
        (points, info): one point per evaluated step (step 0 included), and timings
        ``{"wall_s", "eval_s", "lr", "history"}``.
    """
    if attack.kind != FinetuneAttack.name:
        raise ValueError(f"finetune_attack got an attack of kind {attack.kind!r}")
    t0 = time.perf_counter()
    timed = scorer if isinstance(scorer, TimedScorer) else TimedScorer(scorer)
    eval_s0 = timed.seconds
    points: Curve = [{"step": 0, **(initial if initial is not None else timed(model))}]
    phases = []
    if attack.pre_data and attack.pre_steps > 0:
        phases.append(("pre_data", attack.pre_steps))
    if attack.steps > 0:
        phases.append(("data", attack.steps))
    history: list[dict[str, Any]] = []
    if phases:
        work = copy.deepcopy(model)
        offset = 0
        for key, steps in phases:
            cfg = loop_config(attack, lr, steps, device)

            def eval_fn(m: nn.Module, step: int) -> dict[str, float]:
                return timed(m)

            # sft trains on every corpus it is given: the one of this phase
            res = train_loop(
                work,
                get_method("sft"),
                {key: corpora[key]},
                cfg,
                eval_fn=eval_fn,
                progress=progress,
            )
            work = res.model
            for e in res.evals:
                points.append({**e, "step": int(e["step"]) + offset, "phase": key})
            for h in res.history:
                history.append({**h, "step": int(h["step"]) + offset, "phase": key})
            offset += steps
        del work
    loss_at = {h["step"]: h.get("loss") for h in history}
    for p in points:
        if p["step"] in loss_at and loss_at[p["step"]] is not None:
            p["train_loss"] = float(loss_at[p["step"]])
    info = {
        "wall_s": time.perf_counter() - t0,
        "eval_s": timed.seconds - eval_s0,
        "lr": lr,
        "history": history,
    }
    return points, info


def worst_case(runs: dict[float, Curve]) -> float:
    """The learning rate whose curve reaches the highest hazard accuracy (ties: higher mean)."""
    return max(runs, key=lambda lr: (max(p["hazard_acc"] for p in runs[lr]), auc(runs[lr])))


def worst_case_per_step(runs: dict[float, Curve]) -> Curve:
    """At every evaluated step, the point of the lr with the highest hazard accuracy there.

    With constant-lr runs evaluated along the way, this is the best attack of each budget k
    (the attacker tries every lr for k steps). Each point records its ``lr``; ties go to the
    first lr of the sweep. Every run must be evaluated at the same steps.
    """
    grids = {lr: [p["step"] for p in c] for lr, c in runs.items()}
    first = next(iter(grids.values()))
    if any(g != first for g in grids.values()):
        raise ValueError(f"lr sweep curves were evaluated at different steps: {grids}")
    out: Curve = []
    for i in range(len(first)):
        lr, best = None, None
        for r, c in runs.items():
            if best is None or c[i]["hazard_acc"] > best["hazard_acc"]:
                lr, best = r, c[i]
        assert best is not None
        out.append({**best, "lr": lr})
    return out


@register_attack("finetune")
class FinetuneAttack(Attack):
    """Fine-tune on ``data`` (after ``pre_steps`` on ``pre_data``), worst case over ``lrs``
    (relearning attacks as in Deep Ignorance, O'Brien et al. 2025, and TAR's red-teaming
    schedules, Tamirisa et al. 2024, "Tamper-Resistant Safeguards for Open-Weight LLMs")."""

    trains = True

    def corpora(self, attack: AttackConfig) -> dict[str, str]:
        roles = {"data": attack.data}
        if attack.pre_data and attack.pre_steps > 0:
            roles["pre_data"] = attack.pre_data
        return roles

    def run(
        self,
        model: nn.Module,
        attack: AttackConfig,
        ctx: AttackContext,
        *,
        corpora: dict[str, TokenizedCorpus],
        original: nn.Module | None,
        initial: dict[str, float] | None,
    ) -> AttackRun:
        runs: dict[float, Curve] = {}
        for lr in attack.learning_rates():
            runs[lr], _info = finetune_attack(
                model,
                attack,
                corpora,
                ctx.scorer,
                lr,
                device=ctx.device,
                initial=initial,
                progress=ctx.progress,
            )
        info: dict[str, Any] = {"n_examples": len(corpora["data"])}
        if attack.lr_select == "per_step":
            points = worst_case_per_step(runs)
            info["lr"] = worst_case(runs)  # the lr reaching the highest point overall
        else:
            info["lr"] = worst_case(runs)
            points = runs[info["lr"]]
        if len(runs) > 1:
            info["sweep"] = {repr(k): v for k, v in runs.items()}
        return AttackRun(points=points, info=info)
