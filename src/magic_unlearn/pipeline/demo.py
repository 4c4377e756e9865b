"""``magic-unlearn demo``: the whole study on the synthetic hazard world, end to end.

Steps (each one a run folder of the results store, so a rerun skips what is done):

1. build the world;
2. pretrain the base and the filtered model;
3. evaluate and attack both (the reference rows of the results table; the filtered model's attack
   curves are what every verdict compares with);
4. MAGIC scores of the hazard and general question sets for every token of the forget corpus
   (the differentiated run is the ``attribution.regime``: e.g. ``acquire``, the filtered model
   learning the hazard facts from the forget and pretraining corpora), plus the
   gradient-similarity and random baselines;
5. analyse the scores (the 2D map and the four questions, ground truth for every score set);
6. unlearn the base model with each configured method, evaluate, attack with the tamper suite;
7. write ``report.md`` and ``report.html``.

The configuration is a YAML file (``configs/demo_<preset>.yaml``) loaded into
:class:`DemoConfig`. Method sections may use placeholders filled in at run time:
``{scores.magic}``, ``{scores.grad_sim}``, ``{scores.random}``, ``{scores.keyword}`` (score
artifact folders of the configured baselines), ``{world}``, ``{base}``, ``{filtered}``,
``{base_curves}``, ``{filtered_curves}`` (folders). A method entry's ``attribution:`` section
changes, for its placeholders only, the run its score sets come from (e.g. ``{regime: acquire}``:
scores over the pretraining corpus, which token-level filtering and the guided UNDO mask); every
entry with the same section shares one set of attribution runs.

:meth:`Demo.plan` lists every step as a run spec before anything runs; ``magic-unlearn study``
(:mod:`magic_unlearn.pipeline.study`) builds one plan per seed from it.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.regimes import resolve_regime
from magic_unlearn.config import (
    ConfigError,
    config_hash,
    deep_merge,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from magic_unlearn.io import atomic_write_text
from magic_unlearn.pipeline.report import build_report
from magic_unlearn.pipeline.runs import (
    RunConfig,
    RunSpec,
    execute_run,
    is_complete,
    make_spec,
    validate_spec,
)
from magic_unlearn.pipeline.stages import STAGES, pretrain_config_from_section
from magic_unlearn.pipeline.store import ResultsStore
from magic_unlearn.pipeline.sweep import fill_vars
from magic_unlearn.world import make_config

logger = logging.getLogger(__name__)

PRESETS = ("tiny", "small")  # "micro" exists too, for tests (hidden from --help)
BASELINES = ("grad_sim", "random", "keyword")  # attribution baselines next to MAGIC
# keys of a `methods:` entry; family / guidance are metadata (which twins belong together);
# attribution: overrides of the attribution section for the score sets this entry reads
METHOD_KEYS = ("label", "data", "unlearn", "tamper", "family", "guidance", "attribution")
SCORE_PLACEHOLDER = re.compile(r"\{scores\.([A-Za-z0-9_]+)\}")  # a score set's placeholder


@dataclass
class AttributionSettings:
    """What the attribution step computes.

    Attributes:
        regime: a named regime (``attribution.regimes.REGIMES``: ``acquire``, ``filtered``,
            ``seed``) that sets ``start``, ``mix`` and a trajectory preset for the world
            preset; fields given here override it (``trajectory`` field by field).
        start: the model the differentiated fine-tuning run starts from (``filtered`` or
            ``base``; default: the regime's, else ``filtered``).
        corpus: the world corpus whose tokens are scored (the forget corpus).
        mix: further world corpora trained on (and scored) in the same run (default: the
            regime's, else none).
        queries: the measurements, hazard first.
        fmt: question format of the measurements.
        limit: questions per measurement (None: all).
        baselines: baseline score sets (:data:`BASELINES`: ``grad_sim``, ``random``,
            ``keyword``).
        trajectory: ``TrajectoryConfig`` fields.
        keywords: regexes of the ``keyword`` baseline (None: the world's hazard keyword list,
            ``World.hazard_keywords``).
        keyword_level: ``token`` | ``sentence`` | ``example``: what a keyword match marks.
    """

    regime: str | None = None
    start: str | None = None
    corpus: str = "forget"
    mix: list[str] | None = None
    queries: list[str] = field(default_factory=lambda: ["hazard_qa", "general_qa"])
    fmt: str = "cloze"
    limit: int | None = None
    baselines: list[str] = field(default_factory=lambda: ["grad_sim", "random"])
    trajectory: dict[str, Any] = field(default_factory=dict)
    keywords: list[str] | None = None
    keyword_level: str = "sentence"

    def resolve(self, world_preset: str) -> tuple[str, list[str], dict[str, Any]]:
        """(start, mix, trajectory fields): the regime's preset with this section's fields on
        top."""
        base: dict[str, Any] = {"start": "filtered", "mix": [], "trajectory": {}}
        if self.regime is not None:
            base = resolve_regime(self.regime, world_preset)
        start = self.start if self.start is not None else base["start"]
        mix = list(self.mix) if self.mix is not None else base["mix"]
        return start, mix, deep_merge(base["trajectory"], self.trajectory or {})


@dataclass
class DemoConfig:
    """The demo study.

    Attributes:
        name: label of the study (report title).
        device: torch device for every step.
        seed: seed for every step.
        world: world stage section ``{preset, overrides}``.
        pretrain: pretrain stage section ``{preset, config}`` (variant is set per model).
        eval: eval stage section.
        attribution: :class:`AttributionSettings`.
        analysis: analyze stage fields (``alpha``, ``k_noise``).
        tamper: tamper stage section (suite name and attack overrides).
        unlearn: fields shared by every method's unlearn section (merged under it).
        methods: one entry per unlearning run: ``{label, data, unlearn: {...}}``, optionally
            ``family`` (the method family, e.g. ``undo``) and ``guidance`` (``magic``,
            ``grad_sim``, ``random``, ``keyword``, ``labels`` or ``none``): metadata that pairs
            a guided entry with its unguided twins (``configs/methods_tiny.yaml``), and
            ``attribution`` (fields of :class:`AttributionSettings` for the score sets this
            entry's placeholders read; see :func:`method_attribution`).
    """

    name: str = "demo"
    device: str = "cpu"
    seed: int = 0
    world: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    pretrain: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    eval: dict[str, Any] = field(default_factory=dict)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    analysis: dict[str, Any] = field(default_factory=dict)
    tamper: dict[str, Any] = field(default_factory=lambda: {"suite": "world"})
    unlearn: dict[str, Any] = field(default_factory=dict)
    methods: list[dict[str, Any]] = field(default_factory=list)


def packaged_config(kind: str, preset: str, presets: tuple[str, ...]) -> Path:
    """The packaged config ``configs/<kind>_<preset>.yaml`` (``kind``: demo or study)."""
    p = Path(str(resources.files("magic_unlearn") / "configs" / f"{kind}_{preset}.yaml"))
    if not p.exists():
        raise ConfigError(
            f"unknown {kind} preset {preset!r}; choose from {list(presets)} (or pass --config FILE)"
        )
    return p


def config_path(preset: str) -> Path:
    """The packaged demo config of a preset (``configs/demo_<preset>.yaml``)."""
    return packaged_config("demo", preset, PRESETS)


def load_demo_config(
    preset: str = "tiny",
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
) -> DemoConfig:
    """The preset's config, or ``config`` if given, plus ``KEY=VALUE`` overrides."""
    cfg = load_config(DemoConfig, config or config_path(preset), overrides)
    if device is not None:
        cfg.device = device
    for i, m in enumerate(cfg.methods):
        if not isinstance(m, dict) or not isinstance(m.get("unlearn"), dict):
            raise ConfigError(
                f"demo config: methods[{i}] must be a mapping with an 'unlearn:' "
                f"section (and optional label, data)"
            )
        bad = sorted(set(m) - set(METHOD_KEYS))
        if bad:
            raise ConfigError(
                f"demo config: methods[{i}] has unknown key(s) {bad}; valid keys "
                f"are {', '.join(METHOD_KEYS)}"
            )
    check_attribution(cfg.attribution, cfg, "demo config: attribution")
    for i, m in enumerate(cfg.methods):
        if m.get("attribution"):
            where = f"demo config: methods[{i}].attribution"
            check_attribution(method_attribution(cfg, m["attribution"], where), cfg, where)
    return cfg


def check_attribution(a: AttributionSettings, cfg: DemoConfig, where: str) -> None:
    """Check that attribution settings resolve (a known regime, a start model that exists).

    Raises:
        ConfigError: naming ``where`` and the field.
    """
    try:
        start, _, _ = a.resolve(_world_preset(cfg))
    except ValueError as e:
        raise ConfigError(f"{where}.regime: {e}") from None
    if start not in ("base", "filtered"):
        raise ConfigError(f"{where}.start must be 'base' or 'filtered', got {start!r}")


def method_attribution(
    cfg: DemoConfig, override: dict[str, Any] | None, where: str = "demo config"
) -> AttributionSettings:
    """The attribution settings whose score sets a method entry reads: the config's
    ``attribution`` section with the entry's ``attribution:`` fields on top. An entry that names
    a ``regime`` takes ``start``, ``mix`` and ``trajectory`` from that regime (the section's own
    are dropped; the entry's still apply), everything else (queries, baselines, ...) from the
    section.

    Raises:
        ConfigError: the override is not a mapping of :class:`AttributionSettings` fields.
    """
    if not override:
        return cfg.attribution
    if not isinstance(override, dict):
        raise ConfigError(f"{where} must be a mapping of attribution fields, e.g. {{regime: ...}}")
    base = to_dict(cfg.attribution)
    if "regime" in override:
        base.update(start=None, mix=None, trajectory={})
    return from_dict(AttributionSettings, deep_merge(base, override), source=where)


def _world_preset(cfg: DemoConfig) -> str:
    """The world preset name (regime trajectories are per preset; a mapping counts as tiny)."""
    p = cfg.world.get("preset", "tiny")
    return p if isinstance(p, str) else "tiny"


def _fill(obj: Any, values: dict[str, str]) -> Any:
    return fill_vars(obj, values, source="demo config")


@dataclass
class DemoStep:
    """One step of the demo: a run of the results store.

    Attributes:
        title: what the progress bar and the timings table call it.
        spec: the run.
        role: what the run is in the study: ``world``, ``pretrain:<variant>``,
            ``reference:<filtered|base>``, ``attribute:<method>``, ``analyze``, ``method:<i>``
            (``i`` indexes ``DemoConfig.methods``).
        wave: steps of one wave depend only on steps of earlier waves (they may run in
            parallel): 0 world, 1 pretraining, 2 filtered reference and attributions, 3 base
            reference and analysis, 4 methods.
    """

    title: str
    spec: RunSpec
    role: str = ""
    wave: int = 0


@dataclass
class DemoPlan:
    """Every step of the demo, in order, and the placeholder values of the method sections
    (``world``, ``base``, ``filtered``, ``base_curves``, ``filtered_curves``, ``scores.<m>``)."""

    steps: list[DemoStep]
    values: dict[str, str]


class Demo:
    """The demo study over a results directory (``--out``); steps run in this process.

    Args:
        cfg: the demo config.
        out: results directory.
        stages: stage registry (default: the real stages).
        progress: tqdm bars.
        prefix: prepended to every run name (the study names each seed's runs ``s<seed>-...``).
    """

    def __init__(
        self,
        cfg: DemoConfig,
        out: str | Path,
        stages: Any = None,
        progress: bool = True,
        prefix: str = "",
    ) -> None:
        self.cfg = cfg
        self.out = Path(out).absolute()
        self.stages = stages if stages is not None else STAGES
        self.progress = progress
        self.prefix = prefix
        self.store: ResultsStore | None = None  # opened by run()
        # (step, wall seconds, cached, CPU seconds of this process)
        self.timings: list[tuple[str, float, bool, float]] = []
        self.run_ids: list[str] = []

    # -- run specs -----------------------------------------------------------------------
    def _spec(self, **kw: Any) -> RunSpec:
        base = {"device": self.cfg.device, "seed": self.cfg.seed}
        kw["name"] = self.prefix + kw["name"]
        return make_spec(RunConfig(**{**base, **kw}), source="demo config")

    def _artifact(self, spec: RunSpec, stage: str, key: str) -> str:
        return str(spec.folder(self.out) / stage / key)

    def _run(self, step: DemoStep, bar: Any) -> None:
        t0, c0 = time.time(), time.process_time()
        self.run_ids.append(step.spec.run_id)
        done = is_complete(step.spec.folder(self.out))
        if bar is not None:
            bar.set_description(step.title)
        status = execute_run(
            step.spec, self.out, self.stages, store=self.store, progress=self.progress
        )
        dt = time.time() - t0
        cached = done or status == "skipped"
        cpu = time.process_time() - c0
        self.timings.append((step.title, dt, cached, cpu))
        logger.info(
            "[%d] %s: %s in %.1fs (CPU %.1fs)",
            len(self.timings),
            step.title,
            "cached" if cached else "done",
            dt,
            cpu,
        )
        if bar is not None:
            bar.update(1)

    def validate(self) -> None:
        """Check every stage section before anything runs (a typo fails in seconds, not after
        pretraining)."""
        from magic_unlearn.models import resolve_device  # deferred: imports torch

        c = self.cfg
        resolve_device(c.device)  # e.g. --device cuda on a machine without one
        dummy = {
            "world": "WORLD",
            "base": "BASE",
            "filtered": "FILTERED",
            "base_curves": "BASE_CURVES",
            "filtered_curves": "FILTERED_CURVES",
            **{f"scores.{m}": f"SCORES_{m}" for m in ["magic", *c.attribution.baselines]},
        }
        bad = sorted(set(c.attribution.baselines) - set(BASELINES))
        if bad:
            raise ConfigError(
                f"demo config: attribution.baselines {bad} unknown; use any of {list(BASELINES)}"
            )
        checks = [
            dict(stages=["world"], params={"world": c.world}),
            dict(stages=["pretrain"], params={"pretrain": {**c.pretrain, "variant": "base"}}),
            dict(
                stages=["attribute"],
                params={
                    "attribute": {
                        "method": "magic",
                        "corpus": c.attribution.corpus,
                        "mix": c.attribution.resolve(_world_preset(c))[1],
                        "queries": c.attribution.queries,
                        "trajectory": c.attribution.resolve(_world_preset(c))[2],
                        "keywords": c.attribution.keywords,
                        "keyword_level": c.attribution.keyword_level,
                    }
                },
            ),
            dict(stages=["analyze"], params={"analyze": {**c.analysis, "scores": ["S"]}}),
            dict(stages=["eval", "tamper"], eval=c.eval, tamper=c.tamper),
        ]
        for i, m in enumerate(c.methods):
            if m.get("attribution"):
                a = method_attribution(c, m["attribution"], f"demo config: methods[{i}]")
                check_attribution(a, c, f"demo config: methods[{i}].attribution")
                checks.append(
                    dict(
                        stages=["attribute"],
                        params={"attribute": self._attribute_section("magic", a)},
                        name=f"methods[{i}].attribution",
                    )
                )
            checks.append(
                dict(
                    stages=["unlearn", "tamper"],
                    unlearn=_fill(deep_merge(c.unlearn, m["unlearn"]), dummy),
                    tamper=deep_merge(c.tamper, m.get("tamper") or {}),
                    name=f"methods[{i}]",
                )
            )
        for kw in checks:
            where = f"demo config ({kw.pop('name', kw['stages'][0])})"
            validate_spec(make_spec(RunConfig(**kw), source=where), self.stages, source=where)

    def resolved(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """World, pretrain and trajectory sections with their presets expanded to every field,
        so the run hashes (the cache keys) change when a preset's definition changes."""
        c = self.cfg
        world = {
            "preset": to_dict(
                make_config(c.world.get("preset", "tiny"), c.world.get("overrides") or {})
            )
        }
        pre = {
            "preset": c.pretrain.get("preset", "tiny"),
            "config": to_dict(
                pretrain_config_from_section(c.pretrain, c.device, "demo config: pretrain")
            ),
        }
        return world, pre, self._trajectory(c.attribution)

    def _trajectory(self, a: AttributionSettings) -> dict[str, Any]:
        """The attribution run's trajectory with every field (a preset change changes the
        hash)."""
        return to_dict(
            from_dict(
                TrajectoryConfig,
                a.resolve(_world_preset(self.cfg))[2],
                source="demo config: attribution.trajectory",
            )
        )

    def _attribute_section(self, method: str, a: AttributionSettings) -> dict[str, Any]:
        """The attribute stage section of score set ``method`` under settings ``a``."""
        _, mix, _ = a.resolve(_world_preset(self.cfg))
        section: dict[str, Any] = {
            "method": method,
            "corpus": a.corpus,
            "mix": mix,
            "queries": a.queries,
            "fmt": a.fmt,
            "limit": a.limit,
            "seed": self.cfg.seed,
            "trajectory": self._trajectory(a),
        }
        if method == "keyword":  # only where it matters: other runs keep their hashes
            section.update(keywords=a.keywords, keyword_level=a.keyword_level)
        return section

    def _attribution_steps(
        self,
        a: AttributionSettings,
        world: str,
        models: dict[str, str],
        tag: str = "",
        only: set[str] | None = None,
    ) -> tuple[list[DemoStep], dict[str, str]]:
        """The attribution runs of settings ``a`` (MAGIC and every baseline, or those in
        ``only``) and their score folders; ``tag`` names a method entry's extra set
        (``attribute:<method>@<tag>``)."""
        start, _, _ = a.resolve(_world_preset(self.cfg))
        steps: list[DemoStep] = []
        scores: dict[str, str] = {}
        at = f"@{tag}" if tag else ""
        for method in ["magic", *a.baselines]:
            if only is not None and method not in only:
                continue
            s = self._spec(
                name=f"{method}-{tag}" if tag else method,
                kind="attribute",
                world=world,
                model=models[start],
                stages=["attribute"],
                params={"attribute": self._attribute_section(method, a)},
            )
            title = f"attribution: {method}" + (f" ({tag})" if tag else "")
            steps.append(DemoStep(title, s, f"attribute:{method}{at}", 2))
            scores[method] = self._artifact(s, "attribute", "scores")
        return steps, scores

    def plan(self) -> DemoPlan:
        """Every step of the demo as a run spec (nothing runs). A step's inputs are the folders
        of earlier steps' runs, known before they exist, so the whole plan is fixed up front."""
        c = self.cfg
        steps: list[DemoStep] = []
        world_sec, pretrain_sec, _ = self.resolved()
        ws = self._spec(
            name=f"world-{c.world.get('preset', 'tiny')}",
            kind="world",
            stages=["world"],
            params={"world": world_sec},
        )
        steps.append(DemoStep("build world", ws, "world", 0))
        world = self._artifact(ws, "world", "world")
        models = {}
        for variant in ("base", "filtered"):
            s = self._spec(
                name=variant,
                kind="pretrain",
                world=world,
                stages=["pretrain"],
                params={"pretrain": {**pretrain_sec, "variant": variant}},
            )
            steps.append(DemoStep(f"pretrain {variant} model", s, f"pretrain:{variant}", 1))
            models[variant] = self._artifact(s, "pretrain", "model")

        # references: the filtered model's attack curves are every verdict's yardstick
        filt = self._spec(
            name="filtered",
            kind="reference",
            label="filtered",
            data="pretrain_filtered (no hazard documents)",
            world=world,
            model=models["filtered"],
            base=models["base"],
            reference=models["filtered"],
            stages=["eval", "tamper"],
            eval=c.eval,
            tamper={**c.tamper, "is_reference": True},
        )
        steps.append(DemoStep("evaluate + attack filtered model", filt, "reference:filtered", 2))
        filt_curves = self._artifact(filt, "tamper", "tamper")
        base = self._spec(
            name="base",
            kind="reference",
            label="base",
            data="pretrain (with hazard documents)",
            world=world,
            model=models["base"],
            base=models["base"],
            reference=models["filtered"],
            stages=["eval", "tamper"],
            eval=c.eval,
            tamper={**c.tamper, "filtered_curves": filt_curves},
        )
        steps.append(DemoStep("evaluate + attack base model", base, "reference:base", 3))
        base_curves = self._artifact(base, "tamper", "tamper")

        # attribution: MAGIC + baselines over the same trajectory
        att_steps, scores = self._attribution_steps(c.attribution, world, models)
        steps += att_steps
        an = self._spec(
            name="magic",
            kind="analyze",
            world=world,
            stages=["analyze"],
            params={"analyze": {**c.analysis, "method": "magic", "scores": list(scores.values())}},
        )
        steps.append(DemoStep("analyse attribution", an, "analyze", 3))

        # unlearning methods
        values = {
            "world": world,
            "base": models["base"],
            "filtered": models["filtered"],
            "base_curves": base_curves,
            "filtered_curves": filt_curves,
            **{f"scores.{k}": v for k, v in scores.items()},
        }
        # a method entry's own attribution settings: one extra set of runs per distinct
        # setting, with the score sets its entries read (the study's set also feeds the analysis)
        used: dict[str, set[str]] = {}
        settings: dict[str, AttributionSettings] = {}
        for i, m in enumerate(c.methods):
            a = method_attribution(c, m.get("attribution"), f"demo config: methods[{i}]")
            if a != c.attribution:
                key = config_hash(to_dict(a))
                settings[key] = a
                used.setdefault(key, set()).update(SCORE_PLACEHOLDER.findall(repr(m["unlearn"])))
        extra: dict[str, dict[str, str]] = {}
        for key, a in settings.items():
            tag = (a.regime or "attr") + "-" + key[:6]
            att_steps, extra[key] = self._attribution_steps(a, world, models, tag, used[key])
            steps += att_steps
        for i, m in enumerate(c.methods):
            a = method_attribution(c, m.get("attribution"), f"demo config: methods[{i}]")
            mvalues = values
            if a != c.attribution:
                sets = extra[config_hash(to_dict(a))]
                mvalues = {**values, **{f"scores.{k}": v for k, v in sets.items()}}
            section = _fill(deep_merge(c.unlearn, m["unlearn"]), mvalues)
            label = m.get("label") or section.get("method", "method")
            s = self._spec(
                name=re.sub(r"[^A-Za-z0-9_.-]+", "_", label),
                kind="unlearn",
                label=label,
                data=m.get("data", ""),
                world=world,
                model=models["base"],
                base=models["base"],
                reference=models["filtered"],
                stages=["unlearn", "eval", "tamper"],
                unlearn=section,
                eval=c.eval,
                tamper=deep_merge(
                    {**c.tamper, "base_curves": base_curves, "filtered_curves": filt_curves},
                    m.get("tamper") or {},
                ),
            )
            steps.append(DemoStep(f"unlearn + attack: {label}", s, f"method:{i}", 4))
        return DemoPlan(steps, values)

    def run(self) -> Path:
        """Run every step (cached ones are skipped) and write the report; returns report.md."""
        c = self.cfg
        t_start, c_start = time.time(), time.process_time()
        self.validate()
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = ResultsStore(self.out)
        save_config(c, self.out / "demo_config.yaml")
        plan = self.plan()
        bar = tqdm(
            total=len(plan.steps) + 1,
            desc="demo",
            unit="step",
            disable=not self.progress,
            position=0,
            leave=True,
        )
        try:
            wrote_vars = False
            for step in plan.steps:
                if step.role.startswith("method:") and not wrote_vars:
                    # the demo's artifacts, for sweep grids (`vars: <out>/vars.yaml`)
                    atomic_write_text(
                        self.out / "vars.yaml", yaml.safe_dump(plan.values, sort_keys=True)
                    )
                    wrote_vars = True
                self._run(step, bar)
            if not wrote_vars:
                atomic_write_text(
                    self.out / "vars.yaml", yaml.safe_dump(plan.values, sort_keys=True)
                )

            bar.set_description("report")
            t0 = time.time()
            total = time.time() - t_start
            extra = [
                "## Demo timings",
                "",
                "Wall and CPU seconds (CPU: this process, all threads) per step.",
                "",
                "| step | wall s | CPU s | cached |",
                "|---|---|---|---|",
            ]
            extra += [
                f"| {t} | {dt:.1f} | {cpu:.1f} | {'yes' if ca else 'no'} |"
                for t, dt, ca, cpu in self.timings
            ]
            extra += [
                f"| total (before the report) | {total:.1f} | "
                f"{time.process_time() - c_start:.1f} | |",
                "",
                f"Demo config: [demo_config.yaml](demo_config.yaml) (device {c.device}).",
            ]
            # this configuration's runs only (runs of an earlier config stay cached on disk)
            res = build_report(
                self.out,
                title=f"magic-unlearn {c.name}",
                extra_sections=extra,
                run_ids=self.run_ids,
            )
            self.timings.append(("report", time.time() - t0, False, 0.0))
            bar.update(1)
        finally:
            bar.close()
        return res.markdown


def run_demo(
    preset: str = "tiny",
    device: str | None = None,
    out: str | Path = "runs/demo",
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> Path:
    """Run the demo study; returns the path of ``report.md`` (``report.html`` next to it)."""
    cfg = load_demo_config(preset, config, overrides, device)
    return Demo(cfg, out, progress=progress).run()


__all__ = [
    "BASELINES",
    "SCORE_PLACEHOLDER",
    "AttributionSettings",
    "Demo",
    "DemoConfig",
    "DemoPlan",
    "DemoStep",
    "check_attribution",
    "load_demo_config",
    "method_attribution",
    "run_demo",
]
