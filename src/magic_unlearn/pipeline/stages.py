"""The real pipeline stages, as ``Stage`` entries of :data:`STAGES` (see ``runs.py``).

Each stage is a thin adapter from a run-config section to a stage module's Python API. A section
stays a plain mapping in the run config (so a sweep can set any of its fields with a dotted key,
e.g. ``eval.limit``); the stage loads it into its typed config with :func:`load_section`, which
refuses unknown fields with a message naming the stage and its valid fields. The same loading
is the stage's ``validate`` hook, so a typo fails when a sweep or the demo is expanded, before
anything runs.

Sections (``RunConfig`` fields; ``params.<stage>`` for the first four) and their configs:

- ``world``: :class:`WorldStageConfig` -> artifact ``world``.
- ``pretrain``: :class:`PretrainStageConfig` (uses ``RunConfig.world``) -> artifact ``model``.
- ``attribute``: :class:`AttributeStageConfig` (uses ``RunConfig.model`` and ``world``)
  -> artifact ``scores`` (``attribution.run_attribution``, as the ``attribute`` command).
- ``analyze``: :class:`AnalyzeStageConfig` -> artifact ``analysis``.
- ``unlearn``: the fields of :class:`~magic_unlearn.unlearn.api.UnlearnConfig` (method,
  corpora, loop settings, token weights; run fields fill the model, forget corpus, device and
  seed) -> artifact ``model``.
- ``eval``: :class:`EvalStageConfig` on the current model -> summary ``hazard_acc``,
  ``general_acc``.
- ``tamper``: :class:`TamperStageConfig` (its own fields plus any
  :class:`~magic_unlearn.tamper.config.SuiteConfig` field) on the current model, compared with
  ``RunConfig.base`` / ``reference`` (models or precomputed curves) -> summary ``tamper`` (the
  verdict).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from magic_unlearn.analysis import analyze
from magic_unlearn.attribution import METHODS as ATTRIBUTION_METHODS
from magic_unlearn.attribution import AttributionJob, run_attribution
from magic_unlearn.attribution.baselines import KEYWORD_LEVELS
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.launch import launch_attribution
from magic_unlearn.config import ConfigError, deep_merge, from_dict, to_dict
from magic_unlearn.evaluation.evaluator import evaluate
from magic_unlearn.evaluation.tasks import FORMATS, load_task
from magic_unlearn.io import atomic_write_json, read_json
from magic_unlearn.models import load_model, load_tokenizer
from magic_unlearn.pipeline.runs import RunContext, Stage, StageResult
from magic_unlearn.pretrain import VARIANTS, PretrainConfig, pretrain, resolve_pretrain_config
from magic_unlearn.tamper import tamper
from magic_unlearn.tamper.config import SuiteConfig, suite_dict
from magic_unlearn.unlearn.api import (
    UnlearnConfig,
    load_unlearn_config,
    unlearn,
    validate_unlearn_config,
)
from magic_unlearn.world import World, WorldConfig, build_world, make_config

T = TypeVar("T")


def load_section(cls: type[T], section: Mapping[str, Any] | None, stage: str, where: str = "") -> T:
    """The typed config of ``stage`` from its run-config section.

    Args:
        cls: the stage's config dataclass.
        section: the section mapping (``None``: all defaults).
        stage: the stage name, for error messages.
        where: what holds the section (e.g. ``run unlearn/ga-1a2b``), for error messages.

    Raises:
        ConfigError: naming the stage and the valid fields, on an unknown or invalid field.
    """
    source = f"{where}: {stage} stage" if where else f"{stage} stage"
    return from_dict(cls, dict(section or {}), source=source)


def _need(value: str, field: str, stage: str) -> str:
    if not value:
        raise ConfigError(f"the {stage} stage needs the run field '{field}' (a folder path)")
    return value


def _where(ctx: RunContext) -> str:
    return f"run {ctx.spec.run_id}"


@functools.lru_cache(maxsize=4)
def _world(path: str) -> World:
    return World.load(path)


# ------------------------------------------------------------------------------ world


@dataclass
class WorldStageConfig:
    """The ``world`` stage: build a hazard world.

    Attributes:
        preset: a world preset name (``tiny``, ``small``, ``medium``) or a mapping of every
            :class:`~magic_unlearn.world.WorldConfig` field (the demo's resolved preset).
        overrides: ``WorldConfig`` fields replacing the preset's.
    """

    preset: str | dict[str, Any] = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.overrides = dict(self.overrides or {})

    def world_config(self) -> WorldConfig:
        """The validated world config (raises ConfigError on a bad preset or field)."""
        return make_config(self.preset, self.overrides)


def _validate_world(s: dict[str, Any]) -> None:
    load_section(WorldStageConfig, s, "world").world_config()


def world_stage(ctx: RunContext, out: Path) -> StageResult:
    cfg = load_section(WorldStageConfig, ctx.section("world"), "world", _where(ctx))
    path = build_world(cfg.preset, out / "world", overrides=cfg.overrides)
    man = read_json(path / "world.json")
    return StageResult(
        metrics={"hash": man["hash"], "counts": man["counts"]},
        artifacts={"world": "world"},
        summary={"world_hash": man["hash"]},
    )


# ------------------------------------------------------------------------------ pretrain


@dataclass
class PretrainStageConfig:
    """The ``pretrain`` stage: train the base or filtered model of ``RunConfig.world``.

    Attributes:
        variant: ``base`` (corpus ``pretrain``) or ``filtered`` (``pretrain_filtered``).
        preset: a :data:`~magic_unlearn.pretrain.PRESET_CONFIGS` name.
        config: :class:`~magic_unlearn.pretrain.PretrainConfig` fields replacing the preset's.
    """

    variant: str = "base"
    preset: str = "tiny"
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"pretrain variant must be 'base' or 'filtered', got {self.variant!r}")
        self.config = dict(self.config or {})


def pretrain_config_from_section(
    section: PretrainStageConfig | Mapping[str, Any], device: str | None, source: str
) -> PretrainConfig:
    """The :class:`PretrainConfig` a pretrain section describes: its preset's fields, updated
    with ``config``, on ``device`` (``None``: the preset's)."""
    if not isinstance(section, PretrainStageConfig):
        section = from_dict(PretrainStageConfig, dict(section), source=source)
    base = to_dict(resolve_pretrain_config(section.preset))
    base.update(section.config)
    if device is not None:
        base["device"] = device
    return from_dict(PretrainConfig, base, source=source)


def _validate_pretrain(s: dict[str, Any]) -> None:
    cfg = load_section(PretrainStageConfig, s, "pretrain")
    try:
        pretrain_config_from_section(cfg, None, "pretrain")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def pretrain_stage(ctx: RunContext, out: Path) -> StageResult:
    s = load_section(PretrainStageConfig, ctx.section("pretrain"), "pretrain", _where(ctx))
    world = _need(ctx.config.world, "world", "pretrain")
    cfg = pretrain_config_from_section(
        s, ctx.config.device, f"run {ctx.spec.run_id}: params.pretrain"
    )
    # train in the run's scratch folder so a killed run resumes from pretrain's checkpoint
    path = pretrain(
        world,
        variant=s.variant,
        cfg=cfg,
        out=ctx.scratch("pretrain") / "model",
        progress=ctx.progress,
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


@dataclass
class AttributeStageConfig:
    """The ``attribute`` stage: score the tokens of a world corpus (``RunConfig.model``).

    Attributes:
        method: ``magic``, ``grad_sim``, ``random`` or ``keyword``.
        corpus: the world corpus whose tokens are scored.
        mix: further world corpora trained on (and scored) in the same run
            (``AttributionJob.mix``).
        queries: the measurements (question set names), hazard first.
        fmt: question format of the measurements (None: the task's own, cloze for world
            question sets).
        limit: questions per measurement (None: all).
        seed: seed of the ``random`` baseline.
        trajectory: the differentiated fine-tuning run.
        per: score granularity (``token``).
        nproc_per_node: processes (GPUs) the MAGIC run is sharded over, or ``auto`` (every GPU
            this process sees); above 1 the stage starts ``torchrun --nproc-per-node N`` on this
            node (``attribution/launch.py``). A Slurm job of ``sweep --executor slurm`` sees the
            GPUs of the grid's ``slurm.gpus_per_node`` (docs/scale.md).
        keywords: regexes of the ``keyword`` baseline (None: the world's hazard keywords).
        keyword_level: ``token`` | ``sentence`` | ``example`` (``keyword`` only).
    """

    method: str = "magic"
    corpus: str = "forget"
    mix: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=lambda: ["hazard_qa", "general_qa"])
    fmt: str | None = None
    limit: int | None = None
    seed: int = 0
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    per: str = "token"
    nproc_per_node: int | str = 1
    keywords: list[str] | None = None
    keyword_level: str = "sentence"

    def __post_init__(self) -> None:
        n = self.nproc_per_node
        if n != "auto" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"nproc_per_node={n!r} is invalid; use an integer >= 1 or 'auto'")
        if n != 1 and self.method != "magic":
            raise ValueError(f"nproc_per_node={n!r} shards MAGIC only, not {self.method!r}")
        if self.method not in ATTRIBUTION_METHODS:
            raise ValueError(
                f"attribute method {self.method!r} unknown; choose from {ATTRIBUTION_METHODS}"
            )
        if self.keyword_level not in KEYWORD_LEVELS:
            raise ValueError(
                f"keyword_level {self.keyword_level!r} unknown; choose from {KEYWORD_LEVELS}"
            )
        self.queries = list(self.queries or ["hazard_qa", "general_qa"])
        if self.trajectory is None:
            self.trajectory = TrajectoryConfig()


def _validate_attribute(s: dict[str, Any]) -> None:
    load_section(AttributeStageConfig, s, "attribute")


def attribute_stage(ctx: RunContext, out: Path) -> StageResult:
    s = load_section(AttributeStageConfig, ctx.section("attribute"), "attribute", _where(ctx))
    world = _need(ctx.config.world, "world", "attribute")
    # built in the run's scratch folder, where MAGIC keeps its reverse-pass resume state
    dest = ctx.scratch("attribute") / "scores"
    if dest.exists():
        shutil.rmtree(dest)
    job = AttributionJob(
        model=ctx.config.model or None,
        corpus=s.corpus,
        queries=s.queries,
        mix=s.mix,
        out=dest,
        method=s.method,
        trajectory=s.trajectory,
        per=s.per,
        fmt=s.fmt,
        limit=s.limit,
        world=Path(world),
        tokenizer=str(Path(world) / "tokenizer"),
        device=ctx.config.device,
        seed=s.seed,
        keywords=s.keywords,
        keyword_level=s.keyword_level,
        progress=ctx.progress,
    )
    nproc = s.nproc_per_node
    if nproc == "auto":
        import torch

        nproc = max(1, torch.cuda.device_count())
    if nproc > 1:
        art = launch_attribution(job, nproc, ctx.scratch("attribute"))
    else:
        art = run_attribution(job)
    os.replace(dest, out / "scores")
    metrics = {
        k: v
        for k, v in art.meta.items()
        if isinstance(v, (int, float, str, bool, dict))
        and k in ("eval_losses", "timings", "n_params_trained", "method")
    }
    metrics.update(method=s.method, queries=s.queries, mix=s.mix, n_rows=len(art.input_ids))
    summary = {"attribution_method": s.method}
    trust = art.meta.get("trust")
    if isinstance(trust, dict):
        metrics["trust"] = {k: trust.get(k) for k in ("verdict", "summary")}
        summary["trust"] = trust.get("verdict")
    return StageResult(metrics=metrics, artifacts={"scores": "scores"}, summary=summary)


# ------------------------------------------------------------------------------ analyze


@dataclass
class AnalyzeStageConfig:
    """The ``analyze`` stage: the four questions and ground truth over score artifacts.

    Attributes:
        scores: score artifact folders (hazard then general, or one with two queries; extra
            artifacts such as baselines join the ground-truth table).
        method: the method to analyse (None: the first).
        alpha: general weight in ``rank = alpha * G - H``.
        k_noise: noise threshold ``k * median|score|``.
        hazard_query, general_query: query names of the two score sets (None: inferred).
    """

    scores: list[str] = field(default_factory=list)
    method: str | None = None
    alpha: float = 1.0
    k_noise: float = 3.0
    hazard_query: str | None = None
    general_query: str | None = None

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("needs 'scores': a list of score artifact folders")
        self.scores = [str(p) for p in self.scores]


def _validate_analyze(s: dict[str, Any]) -> None:
    load_section(AnalyzeStageConfig, s, "analyze")


def analyze_stage(ctx: RunContext, out: Path) -> StageResult:
    s = load_section(AnalyzeStageConfig, ctx.section("analyze"), "analyze", _where(ctx))
    tok = _world(ctx.config.world).tokenizer if ctx.config.world else None
    m = analyze(
        s.scores,
        out / "analysis",
        tokenizer=tok,
        is_world=bool(ctx.config.world),
        alpha=s.alpha,
        k_noise=s.k_noise,
        hazard_query=s.hazard_query,
        general_query=s.general_query,
        method=s.method,
    )
    keep = {
        k: m[k] for k in ("hazard", "general", "q1_correlation", "q4_magnitude_ratio") if k in m
    }
    return StageResult(metrics=keep, artifacts={"analysis": "analysis"})


# ------------------------------------------------------------------------------ unlearn


def unlearn_config_from_section(
    section: Mapping[str, Any], ctx: RunContext | None = None
) -> UnlearnConfig:
    """The :class:`UnlearnConfig` of an unlearn section (recipe defaults < section < run).

    With a run context, fields the section leaves empty are filled from the run: ``model``
    (the current model), ``forget`` (``<world>:forget``), ``loop.device`` and ``loop.seed``.
    """
    d = copy.deepcopy(dict(section))
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
    validate_unlearn_config(unlearn_config_from_section(s))


def unlearn_stage(ctx: RunContext, out: Path) -> StageResult:
    cfg = unlearn_config_from_section(ctx.section("unlearn"), ctx)
    # built in the scratch folder: unlearn() keeps its resumable checkpoints next to its output
    dest = ctx.scratch("unlearn") / "model"
    if dest.exists():
        shutil.rmtree(dest)
    unlearn(cfg, dest, progress=ctx.progress)
    os.replace(dest, out / "model")
    metrics = read_json(out / "model" / "metrics.json")
    return StageResult(
        metrics={k: v for k, v in metrics.items() if k != "phases"},
        artifacts={"model": "model"},
        summary={"method": cfg.method, "recipe": cfg.recipe},
    )


# ------------------------------------------------------------------------------ eval


@dataclass
class EvalStageConfig:
    """The ``eval`` stage: hazard and general accuracy of the current model.

    Attributes:
        hazard_task, general_task: task names (world question sets or benchmarks).
        fmt: ``cloze`` or ``letter``.
        limit: first N questions of each task (None: all).
        batch_size: rows per forward.
    """

    hazard_task: str = "hazard_qa"
    general_task: str = "general_qa"
    fmt: str = "cloze"
    limit: int | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"eval fmt must be 'cloze' or 'letter', got {self.fmt!r}")


def _validate_eval(s: dict[str, Any]) -> None:
    load_section(EvalStageConfig, s, "eval")


def eval_stage(ctx: RunContext, out: Path) -> StageResult:
    s = load_section(EvalStageConfig, ctx.section("eval"), "eval", _where(ctx))
    model_path = _need(ctx.current_model(), "model", "eval")
    world = _world(ctx.config.world) if ctx.config.world else None
    tok = world.tokenizer if world is not None else load_tokenizer(model_path)
    model = load_model(model_path, device=ctx.config.device)
    metrics: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for role, name in (("hazard", s.hazard_task), ("general", s.general_task)):
        task = load_task(name, world=world, limit=s.limit)
        res = evaluate(model, tok, task, fmt=s.fmt, batch_size=s.batch_size, progress=ctx.progress)
        metrics[name] = res.to_dict()
        atomic_write_json(out / f"predictions_{name}.json", res.question_rows())
        summary[f"{role}_acc"] = res.acc
        summary[f"{role}_n"] = res.n  # questions: the report's confidence intervals
        summary[f"{role}_loss"] = res.mean_correct_loss
    return StageResult(
        metrics=metrics,
        summary=summary,
        artifacts={f"predictions_{k}": f"predictions_{k}.json" for k in metrics},
    )


# ------------------------------------------------------------------------------ tamper


@dataclass
class TamperStageConfig:
    """The ``tamper`` stage: attack the current model with a suite, verdict against references.

    The section holds the fields below plus any :class:`SuiteConfig` field (``only``,
    ``attacks``, ``all_attacks``, ``eval``, ``verdict``, ...), merged over the named suite
    into :attr:`suite_config`.

    Attributes:
        suite: a built-in suite name (``world``, ``world_gpu``, ``real``) or a suite YAML.
        base_curves, filtered_curves: reference models or curve folders (default: the run's
            ``base`` / ``reference``).
        overrides: ``KEY=VALUE`` suite overrides.
        is_reference: this run is a reference row (the filtered model) of the report.
        suite_config: the resolved suite.
    """

    suite: str = "world"
    base_curves: str | None = None
    filtered_curves: str | None = None
    overrides: list[str] = field(default_factory=list)
    is_reference: bool = False
    suite_config: SuiteConfig = field(default_factory=SuiteConfig)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], source: str) -> TamperStageConfig:
        """Split a flat tamper section into the stage's own fields and the suite settings."""
        own_names = {f.name for f in dataclasses.fields(cls)} - {"suite_config"}
        valid = own_names | {f.name for f in dataclasses.fields(SuiteConfig)}
        bad = sorted(set(section) - valid)
        if bad:
            raise ConfigError(
                f"{source}: unknown field(s) {bad} for TamperStageConfig; valid fields are "
                f"{sorted(valid)}"
            )
        own = from_dict(cls, {k: v for k, v in section.items() if k in own_names}, source=source)
        rest = {k: v for k, v in section.items() if k not in own_names}
        data = deep_merge(suite_dict(own.suite, overrides=own.overrides or []), rest)
        own.suite_config = from_dict(SuiteConfig, data, source=source)
        return own


def _validate_tamper(s: dict[str, Any]) -> None:
    TamperStageConfig.from_section(s, "tamper stage")


def verdict_summary(verdict: Any, is_reference: bool = False) -> dict[str, Any]:
    """The run-summary form of a tamper :class:`Verdict` (what the report's table reads)."""
    attacks = {}
    brk_step, brk_attack = None, None
    for name, a in verdict.attacks.items():
        attacks[name] = {
            "max_hazard_acc": a.max_hazard_acc,
            "auc": a.auc,
            "steps_to_recover": a.steps_to_recover,
            "budget": a.budget,
            "base_acc": a.base_acc,
            "reference_max": a.reference_max,
            "excess": a.excess,
            "status": a.status,
            "first_break_step": a.first_break_step,
            "x_label": a.x_label,
            "n": a.n,
            "ci": a.ci,
            "reference_ci": a.reference_ci,
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
        "general_acc": verdict.general_acc,
        "reference_general_acc": verdict.reference_general_acc,
        "resisted": list(verdict.resisted),
        "broken": list(verdict.broken),
        "break_step": brk_step,
        "break_attack": brk_attack,
        "thresholds": dict(verdict.thresholds),
        "attacks": attacks,
        "is_reference": is_reference,
    }


def tamper_stage(ctx: RunContext, out: Path) -> StageResult:
    s = TamperStageConfig.from_section(ctx.section("tamper"), f"{_where(ctx)}: tamper stage")
    model = _need(ctx.current_model(), "model", "tamper")
    reference: dict[str, Any] = {}
    base = s.base_curves or ctx.config.base
    filt = s.filtered_curves or ctx.config.reference
    if base and Path(str(base)).resolve() != Path(model).resolve():
        reference["base"] = str(base)
    if filt and Path(str(filt)).resolve() != Path(model).resolve():
        reference["filtered"] = str(filt)
    res = tamper(
        model,
        s.suite_config,
        out=out / "tamper",
        reference=reference,
        world=ctx.config.world or None,
        device=ctx.config.device,
        original=ctx.config.base or None,
        cache_dir=ctx.root / ".tamper_cache",
        quiet=True,
        progress=ctx.progress,
    )
    return StageResult(
        metrics=read_json(out / "tamper" / "metrics.json"),
        artifacts={
            "curves": "tamper/curves.json",
            "verdict": "tamper/verdict.json",
            "tamper": "tamper",
        },
        summary={"tamper": verdict_summary(res.verdict, is_reference=s.is_reference)},
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

__all__ = [
    "STAGES",
    "AnalyzeStageConfig",
    "AttributeStageConfig",
    "EvalStageConfig",
    "PretrainStageConfig",
    "TamperStageConfig",
    "WorldStageConfig",
    "load_section",
    "pretrain_config_from_section",
    "unlearn_config_from_section",
    "verdict_summary",
]
