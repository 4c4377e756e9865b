"""The real pipeline stages, as ``Stage`` entries of :data:`STAGES` (see ``runs.py``).

Each stage is a thin adapter from a run-config section to a stage module's Python API; heavy
imports happen inside the functions so ``magic_unlearn.pipeline`` stays cheap to import.

Sections (``RunConfig`` fields; ``params.<stage>`` for the first four):

- ``world``: ``{preset: tiny, overrides: {field: value}}`` -> artifact ``world``.
- ``pretrain``: ``{variant: base|filtered, config: {...}}`` (uses ``RunConfig.world``)
  -> artifact ``model``.
- ``attribute``: ``{method: magic|grad_sim|random, corpus: forget, queries: [hazard_qa,
  general_qa], fmt: null (the task's: cloze for world question sets), limit: null, seed: 0,
  trajectory: {TrajectoryConfig fields}}`` (uses ``RunConfig.model`` and ``world``) -> artifact
  ``scores`` (``attribution.run_attribution``, as the ``attribute`` command).
- ``analyze``: ``{scores: [artifact folders], method: magic, alpha: 1.0, k_noise: 3.0}``
  -> artifact ``analysis``.
- ``unlearn``: the fields of the unlearning config (method, corpora, loop settings, token
  weights) -> artifact ``model``.
- ``eval``: ``{hazard_task: hazard_qa, general_task: general_qa, fmt: cloze, limit: null,
  batch_size: 64}`` on the current model -> summary ``hazard_acc``, ``general_acc``.
- ``tamper``: ``{suite: world, base_curves: null, filtered_curves: null, overrides: [],
  <any SuiteConfig field>}`` on the current model, compared with ``RunConfig.base`` /
  ``reference`` (models or precomputed curves) -> summary ``tamper`` (the verdict).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

from magic_unlearn.config import ConfigError, deep_merge, from_dict
from magic_unlearn.io import read_json
from magic_unlearn.pipeline.runs import RunContext, Stage, StageResult


def _unknown(section: dict[str, Any], allowed: set[str], what: str) -> None:
    bad = sorted(set(section) - allowed)
    if bad:
        raise ConfigError(
            f"unknown field(s) {bad} for the {what} stage; valid fields are {sorted(allowed)}"
        )


def _need(value: str, field: str, stage: str) -> str:
    if not value:
        raise ConfigError(f"the {stage} stage needs the run field '{field}' (a folder path)")
    return value


@functools.lru_cache(maxsize=4)
def _world(path: str) -> Any:
    from magic_unlearn.world import World

    return World.load(path)


# ------------------------------------------------------------------------------ world

_WORLD_FIELDS = {"preset", "overrides"}


def _validate_world(s: dict[str, Any]) -> None:
    _unknown(s, _WORLD_FIELDS, "world")
    from magic_unlearn.world import make_config

    make_config(s.get("preset", "tiny"), s.get("overrides") or {})


def world_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.world import build_world

    s = ctx.section("world")
    path = build_world(s.get("preset", "tiny"), out / "world", overrides=s.get("overrides") or {})
    man = read_json(path / "world.json")
    return StageResult(
        metrics={"hash": man["hash"], "counts": man["counts"]},
        artifacts={"world": "world"},
        summary={"world_hash": man["hash"]},
    )


# ------------------------------------------------------------------------------ pretrain

_PRETRAIN_FIELDS = {"variant", "preset", "config"}


def _pretrain_config(s: dict[str, Any], device: str | None, source: str) -> Any:
    from magic_unlearn.config import to_dict
    from magic_unlearn.pretrain import PretrainConfig, resolve_pretrain_config

    base = to_dict(resolve_pretrain_config(s.get("preset", "tiny")))
    base.update(s.get("config") or {})
    if device is not None:
        base["device"] = device
    return from_dict(PretrainConfig, base, source=source)


def _validate_pretrain(s: dict[str, Any]) -> None:
    _unknown(s, _PRETRAIN_FIELDS, "pretrain")
    if s.get("variant", "base") not in ("base", "filtered"):
        raise ConfigError(f"pretrain variant must be 'base' or 'filtered', got {s['variant']!r}")
    try:
        _pretrain_config(s, None, "pretrain")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def pretrain_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.pretrain import pretrain

    s = ctx.section("pretrain")
    world = _need(ctx.config.world, "world", "pretrain")
    cfg = _pretrain_config(s, ctx.config.device, f"run {ctx.spec.run_id}: params.pretrain")
    # train in the run's scratch folder so a killed run resumes from pretrain's checkpoint
    path = pretrain(
        world, variant=s.get("variant", "base"), cfg=cfg, out=ctx.scratch("pretrain") / "model"
    )
    os.replace(path, out / "model")
    metrics = read_json(out / "model" / "metrics.json")
    summ = {
        f"{role}_acc": metrics[f"{role}_qa"]["acc"]
        for role in ("hazard", "general")
        if isinstance(metrics.get(f"{role}_qa"), dict)
    }
    return StageResult(metrics=metrics, artifacts={"model": "model"}, summary=summ)


# ------------------------------------------------------------------------------ attribute

_ATTR_FIELDS = {"method", "corpus", "queries", "fmt", "limit", "seed", "trajectory", "per"}


def _validate_attribute(s: dict[str, Any]) -> None:
    _unknown(s, _ATTR_FIELDS, "attribute")
    from magic_unlearn.attribution import METHODS, TrajectoryConfig

    if s.get("method", "magic") not in METHODS:
        raise ConfigError(f"attribute method {s['method']!r} unknown; choose from {METHODS}")
    try:
        from_dict(TrajectoryConfig, s.get("trajectory") or {}, source="trajectory")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def attribute_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.attribution import AttributionJob, TrajectoryConfig, run_attribution

    s = ctx.section("attribute")
    world = _need(ctx.config.world, "world", "attribute")
    method = s.get("method", "magic")
    queries = list(s.get("queries") or ["hazard_qa", "general_qa"])
    # built in the run's scratch folder, where MAGIC keeps its reverse-pass resume state
    dest = ctx.scratch("attribute") / "scores"
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    art = run_attribution(
        AttributionJob(
            model=ctx.config.model or None,
            corpus=s.get("corpus", "forget"),
            queries=queries,
            out=dest,
            method=method,
            trajectory=from_dict(
                TrajectoryConfig,
                s.get("trajectory") or {},
                source=f"run {ctx.spec.run_id}: params.attribute.trajectory",
            ),
            per=s.get("per", "token"),
            fmt=s.get("fmt"),
            limit=s.get("limit"),
            world=Path(world),
            tokenizer=str(Path(world) / "tokenizer"),
            device=ctx.config.device,
            seed=int(s.get("seed", 0)),
        )
    )
    os.replace(dest, out / "scores")
    metrics = {
        k: v
        for k, v in art.meta.items()
        if isinstance(v, (int, float, str, bool, dict))
        and k in ("eval_losses", "timings", "n_params_trained", "method")
    }
    metrics.update(method=method, queries=queries, n_rows=len(art.input_ids))
    return StageResult(
        metrics=metrics, artifacts={"scores": "scores"}, summary={"attribution_method": method}
    )


# ------------------------------------------------------------------------------ analyze

_ANALYZE_FIELDS = {"scores", "method", "alpha", "k_noise", "hazard_query", "general_query"}


def _validate_analyze(s: dict[str, Any]) -> None:
    _unknown(s, _ANALYZE_FIELDS, "analyze")
    if not s.get("scores"):
        raise ConfigError("the analyze stage needs 'scores': a list of score artifact folders")


def analyze_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.analysis import analyze

    s = ctx.section("analyze")
    tok = _world(ctx.config.world).tokenizer if ctx.config.world else None
    m = analyze(
        [str(p) for p in s["scores"]],
        out / "analysis",
        tokenizer=tok,
        is_world=bool(ctx.config.world),
        alpha=float(s.get("alpha", 1.0)),
        k_noise=float(s.get("k_noise", 3.0)),
        hazard_query=s.get("hazard_query"),
        general_query=s.get("general_query"),
        method=s.get("method"),
    )
    keep = {
        k: m[k] for k in ("hazard", "general", "q1_correlation", "q4_magnitude_ratio") if k in m
    }
    return StageResult(metrics=keep, artifacts={"analysis": "analysis"})


# ------------------------------------------------------------------------------ unlearn


def _unlearn_cfg(s: dict[str, Any], ctx: RunContext | None) -> Any:
    """An ``UnlearnConfig`` from the section (recipe defaults < section < run fields).

    Filled from the run when the section leaves them empty: ``model`` (the current model),
    ``forget`` (``<world>:forget``), ``loop.device`` and ``loop.seed``.
    """
    from magic_unlearn.unlearn.api import load_unlearn_config

    d = copy.deepcopy(s)
    if ctx is not None:
        c = ctx.config
        d["model"] = d.get("model") or ctx.current_model()
        if not d.get("forget") and c.world:
            d["forget"] = f"{c.world}:forget"
        loop = dict(d.get("loop") or {})
        loop.setdefault("device", c.device)
        loop.setdefault("seed", c.seed)
        d["loop"] = loop
    return load_unlearn_config(None, None, **d)


def _validate_unlearn(s: dict[str, Any]) -> None:
    from magic_unlearn.unlearn import METHODS

    cfg = _unlearn_cfg(s, None)
    if cfg.method != "none" and cfg.method not in METHODS:
        raise ConfigError(
            f"unknown unlearning method {cfg.method!r}; registered: {sorted(METHODS)} (or 'none')"
        )


def unlearn_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.unlearn.api import unlearn

    cfg = _unlearn_cfg(ctx.section("unlearn"), ctx)
    # built in the scratch folder: unlearn() keeps its resumable checkpoints next to its output
    dest = ctx.scratch("unlearn") / "model"
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    unlearn(cfg, dest)
    os.replace(dest, out / "model")
    metrics = read_json(out / "model" / "metrics.json")
    return StageResult(
        metrics={k: v for k, v in metrics.items() if k != "phases"},
        artifacts={"model": "model"},
        summary={"method": cfg.method, "recipe": cfg.recipe},
    )


# ------------------------------------------------------------------------------ eval

_EVAL_FIELDS = {"hazard_task", "general_task", "fmt", "limit", "batch_size"}


def _validate_eval(s: dict[str, Any]) -> None:
    _unknown(s, _EVAL_FIELDS, "eval")
    if s.get("fmt", "cloze") not in ("cloze", "letter"):
        raise ConfigError(f"eval fmt must be 'cloze' or 'letter', got {s['fmt']!r}")


def eval_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.evaluation.evaluator import evaluate
    from magic_unlearn.evaluation.tasks import load_task
    from magic_unlearn.io import atomic_write_json
    from magic_unlearn.models import load_model, load_tokenizer

    s = ctx.section("eval")
    model_path = _need(ctx.current_model(), "model", "eval")
    world = _world(ctx.config.world) if ctx.config.world else None
    tok = world.tokenizer if world is not None else load_tokenizer(model_path)
    model = load_model(model_path, device=ctx.config.device)
    metrics: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for role in ("hazard", "general"):
        name = s.get(f"{role}_task", f"{role}_qa")
        task = load_task(name, world=world, limit=s.get("limit"))
        res = evaluate(
            model, tok, task, fmt=s.get("fmt", "cloze"), batch_size=int(s.get("batch_size", 64))
        )
        metrics[name] = res.to_dict()
        atomic_write_json(out / f"predictions_{name}.json", res.question_rows())
        summary[f"{role}_acc"] = res.acc
        summary[f"{role}_loss"] = res.mean_correct_loss
    return StageResult(
        metrics=metrics,
        summary=summary,
        artifacts={f"predictions_{k}": f"predictions_{k}.json" for k in metrics},
    )


# ------------------------------------------------------------------------------ tamper

_TAMPER_OWN = {"suite", "base_curves", "filtered_curves", "overrides", "is_reference"}


def _suite(s: dict[str, Any]) -> Any:
    from magic_unlearn.tamper.config import SuiteConfig, suite_dict

    rest = {k: v for k, v in s.items() if k not in _TAMPER_OWN}
    data = deep_merge(suite_dict(s.get("suite", "world"), overrides=s.get("overrides") or []), rest)
    return from_dict(SuiteConfig, data, source="tamper section")


def _validate_tamper(s: dict[str, Any]) -> None:
    _suite(s)


def verdict_summary(verdict: Any, is_reference: bool = False) -> dict[str, Any]:
    """The run-summary form of a tamper :class:`Verdict` (what the report's table reads)."""
    attacks = {}
    brk_step, brk_attack = None, None
    for name, a in verdict.attacks.items():
        attacks[name] = {
            "max_hazard_acc": a.max_hazard_acc,
            "auc": a.auc,
            "steps_to_recover": a.steps_to_recover,
            "status": a.status,
            "first_break_step": a.first_break_step,
            "x_label": a.x_label,
        }
        if (
            a.status == "recovers"
            and a.first_break_step is not None
            and (brk_step is None or a.first_break_step < brk_step)
        ):
            brk_step, brk_attack = a.first_break_step, name
    if brk_attack is None and verdict.broken:
        brk_attack = verdict.broken[0]
    return {
        "label": verdict.label,
        "text": verdict.text,
        "destroyed": verdict.destroyed,
        "resisted": list(verdict.resisted),
        "broken": list(verdict.broken),
        "break_step": brk_step,
        "break_attack": brk_attack,
        "thresholds": dict(verdict.thresholds),
        "attacks": attacks,
        "is_reference": is_reference,
    }


def tamper_stage(ctx: RunContext, out: Path) -> StageResult:
    from magic_unlearn.tamper import tamper

    s = ctx.section("tamper")
    suite = _suite(s)
    model = _need(ctx.current_model(), "model", "tamper")
    reference: dict[str, Any] = {}
    base = s.get("base_curves") or ctx.config.base
    filt = s.get("filtered_curves") or ctx.config.reference
    if base and Path(str(base)).resolve() != Path(model).resolve():
        reference["base"] = str(base)
    if filt and Path(str(filt)).resolve() != Path(model).resolve():
        reference["filtered"] = str(filt)
    is_ref = bool(s.get("is_reference", False))
    res = tamper(
        model,
        suite,
        out=out / "tamper",
        reference=reference,
        world=ctx.config.world or None,
        device=ctx.config.device,
        original=ctx.config.base or None,
        cache_dir=ctx.root / ".tamper_cache",
        quiet=True,
    )
    return StageResult(
        metrics=read_json(out / "tamper" / "metrics.json"),
        artifacts={
            "curves": "tamper/curves.json",
            "verdict": "tamper/verdict.json",
            "tamper": "tamper",
        },
        summary={"tamper": verdict_summary(res.verdict, is_reference=is_ref)},
    )


STAGES: dict[str, Stage] = {
    "world": Stage("world", world_stage, _validate_world),
    "pretrain": Stage("pretrain", pretrain_stage, _validate_pretrain),
    "attribute": Stage("attribute", attribute_stage, _validate_attribute),
    "analyze": Stage("analyze", analyze_stage, _validate_analyze),
    "unlearn": Stage("unlearn", unlearn_stage, _validate_unlearn),
    "eval": Stage("eval", eval_stage, _validate_eval),
    "tamper": Stage("tamper", tamper_stage, _validate_tamper),
}

__all__ = ["STAGES", "verdict_summary"]
