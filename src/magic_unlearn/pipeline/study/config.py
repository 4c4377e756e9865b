"""The study's configuration: the demo's sections, several seeds, and methods that know their twins.

A study config is a demo config (:class:`~magic_unlearn.pipeline.demo.DemoConfig`: world,
pretrain, eval, attribution, analysis, tamper, shared unlearn fields) plus ``seeds`` and a
``methods`` list whose entries also carry a ``name`` (what ``--methods`` selects) and their
*twins*: the runs a guided method is compared with on the same seed.

A method is *guided* by the score set its unlearn section names (``{scores.magic}``,
``{scores.grad_sim}``, ...); without one it is unguided (post-hoc). A MAGIC-guided method's
twins are:

- ``unguided``: a method of the list named in ``twins: {unguided: NAME}`` (e.g. RR for
  MAGIC-weighted RR);
- ``grad_sim``, ``random``, ``keyword``: the same method with ``{scores.magic}`` replaced by
  that baseline's scores, generated as ``<name>.<baseline>`` for every baseline of
  ``attribution.baselines`` (``score_twins`` narrows the list; ``twins: {grad_sim: NAME}``
  names a hand-written twin instead).

Each seed ``s`` sets the world seed, the pretraining seed, the attribution trajectory seed, the
seed of every attack (``tamper.all_attacks.seed``) and the run seed (unlearning loop) to ``s``:
a seed is a new world with new models, the unit the confidence intervals are over.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic_unlearn.config import ConfigError, config_hash, deep_merge, load_config, to_dict
from magic_unlearn.pipeline.demo import (
    BASELINES,
    SCORE_PLACEHOLDER,
    DemoConfig,
    check_attribution,
    method_attribution,
    packaged_config,
)

TWIN_KINDS = ("unguided", *BASELINES)
PRESETS = ("tiny", "small")  # "micro" exists too, for tests
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_METHOD_KEYS = {
    "name",
    "label",
    "data",
    "unlearn",
    "tamper",
    "family",
    "twins",
    "score_twins",
    "attribution",
}
TWIN_LABELS = {
    "unguided": "unguided",
    "grad_sim": "grad-sim scores",
    "random": "random scores",
    "keyword": "keyword scores",
}


@dataclass
class StudyConfig(DemoConfig):
    """A demo config over several seeds (fields of :class:`DemoConfig` plus the ones below).

    Attributes:
        seeds: world seeds (each one a world, its models, attributions and every method).
        headline_attack: the attack whose steps-to-recover and curve lead the report (the
            attack-budget sweep of the suite).
        workers: parallel run processes (1: every run in this process, in order).
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    headline_attack: str = "standard"
    workers: int = 1


@dataclass
class StudyMethod:
    """One method of the study (a config entry, or a generated score twin).

    Attributes:
        name: identifier (``--methods``; letters, digits, ``_`` and ``-``; generated twins add
            ``.<baseline>``).
        label: table label.
        data: what it trains on, for the tables.
        unlearn: its unlearn section (merged over the shared ``unlearn`` fields).
        tamper: tamper section overrides.
        family: free-text family for grouping (``representation``, ``distillation``, ...).
        twins: twin kind -> method name (given or generated).
        score_twins: baselines to generate score twins for (None: every configured baseline).
        guidance: the score set the unlearn section reads (``magic``, a baseline, or ``none``).
        attribution: attribution fields for the score sets this method reads (e.g.
            ``{regime: acquire}``: scores over the pretraining corpus;
            :func:`magic_unlearn.pipeline.demo.method_attribution`); empty: the study's.
        twin_of / twin_kind: for a generated twin, the guided method and the kind.
    """

    name: str
    label: str
    unlearn: dict[str, Any]
    data: str = ""
    tamper: dict[str, Any] = field(default_factory=dict)
    family: str = ""
    twins: dict[str, str] = field(default_factory=dict)
    score_twins: list[str] | None = None
    guidance: str = "none"
    attribution: dict[str, Any] = field(default_factory=dict)
    twin_of: str | None = None
    twin_kind: str | None = None

    def demo_entry(self) -> dict[str, Any]:
        """The entry of ``DemoConfig.methods`` that runs this method."""
        entry = {
            "label": self.label,
            "data": self.data,
            "unlearn": copy.deepcopy(self.unlearn),
            "tamper": copy.deepcopy(self.tamper),
        }
        if self.attribution:
            entry["attribution"] = copy.deepcopy(self.attribution)
        return entry

    def definition_hash(self) -> str:
        """Hash of what determines this method's runs (its record entries are valid while it
        is unchanged)."""
        d = {"label": self.label, "unlearn": self.unlearn, "tamper": self.tamper}
        if self.attribution:  # only when set: the other methods keep their hashes
            d["attribution"] = self.attribution
        return config_hash(d)

    def info(self) -> dict[str, Any]:
        """What the records and the leaderboard keep about the method."""
        return {
            "label": self.label,
            "data": self.data,
            "family": self.family,
            "guidance": self.guidance,
            "twins": dict(self.twins),
            "twin_of": self.twin_of,
            "twin_kind": self.twin_kind,
            "definition": self.definition_hash(),
        }


def config_path(preset: str) -> Path:
    """The packaged study config of a preset (``configs/study_<preset>.yaml``)."""
    return packaged_config("study", preset, PRESETS)


def load_study_config(
    preset: str = "tiny",
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
) -> StudyConfig:
    """The preset's study config, or ``config`` if given, plus ``KEY=VALUE`` overrides."""
    source = str(config or config_path(preset))
    cfg = load_config(StudyConfig, config or config_path(preset), overrides)
    if device is not None:
        cfg.device = device
    if not cfg.seeds or not all(isinstance(s, int) and s >= 0 for s in cfg.seeds):
        raise ConfigError(f"{source}: seeds must be a non-empty list of integers >= 0")
    if cfg.workers < 1:
        raise ConfigError(f"{source}: workers must be >= 1")
    bad = sorted(set(cfg.attribution.baselines) - set(BASELINES))
    if bad:
        raise ConfigError(
            f"{source}: attribution.baselines {bad} unknown; use any of {list(BASELINES)}"
        )
    expand_methods(cfg, source)  # validates the method entries
    return cfg


def _guidance(unlearn: dict[str, Any], where: str) -> str:
    used = sorted(set(SCORE_PLACEHOLDER.findall(repr(unlearn))))
    if len(used) > 1:
        raise ConfigError(
            f"{where}: the unlearn section reads several score sets {used}; a study method is "
            f"guided by one"
        )
    return used[0] if used else "none"


def _swap_scores(obj: Any, new: str) -> Any:
    if isinstance(obj, str):
        return obj.replace("{scores.magic}", "{scores." + new + "}")
    if isinstance(obj, list):
        return [_swap_scores(v, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _swap_scores(v, new) for k, v in obj.items()}
    return obj


def expand_methods(cfg: StudyConfig, source: str = "study config") -> list[StudyMethod]:
    """Every method of the config, each MAGIC-guided one followed by its generated score twins.

    Raises:
        ConfigError: naming the entry and the fix for a bad entry, name or twin.
    """
    declared: list[StudyMethod] = []
    for i, m in enumerate(cfg.methods):
        where = f"{source}: methods[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("unlearn"), dict):
            raise ConfigError(f"{where} must be a mapping with 'name' and an 'unlearn:' section")
        unknown = sorted(set(m) - _METHOD_KEYS)
        if unknown:
            raise ConfigError(
                f"{where} has unknown key(s) {unknown}; valid keys are {sorted(_METHOD_KEYS)}"
            )
        name = m.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"{where}: 'name' must be letters, digits, '_' or '-' (what --methods selects), "
                f"got {name!r}"
            )
        twins = dict(m.get("twins") or {})
        bad = sorted(set(twins) - set(TWIN_KINDS))
        if bad:
            raise ConfigError(f"{where}: twins {bad} unknown; twin kinds are {list(TWIN_KINDS)}")
        score_twins = m.get("score_twins")
        if score_twins is not None:
            bad = sorted(set(score_twins) - set(cfg.attribution.baselines))
            if bad:
                raise ConfigError(
                    f"{where}: score_twins {bad} are not among attribution.baselines "
                    f"{cfg.attribution.baselines}"
                )
        guidance = _guidance(m["unlearn"], where)
        if guidance not in ("none", "magic", *cfg.attribution.baselines):
            raise ConfigError(
                f"{where}: reads {{scores.{guidance}}}, which this study does not compute "
                f"(attribution.baselines: {cfg.attribution.baselines})"
            )
        attribution = m.get("attribution") or {}
        if not isinstance(attribution, dict):
            raise ConfigError(
                f"{where}: 'attribution' must be a mapping of attribution fields, e.g. "
                f"{{regime: acquire}}"
            )
        check_attribution(
            method_attribution(cfg, attribution, f"{where}.attribution"),
            cfg,
            f"{where}.attribution",
        )
        if twins and guidance != "magic":
            raise ConfigError(f"{where}: only MAGIC-guided methods ({{scores.magic}}) have twins")
        declared.append(
            StudyMethod(
                name=name,
                label=str(m.get("label") or name),
                unlearn=copy.deepcopy(m["unlearn"]),
                data=str(m.get("data") or ""),
                tamper=copy.deepcopy(m.get("tamper") or {}),
                family=str(m.get("family") or ""),
                twins=twins,
                score_twins=None if score_twins is None else list(score_twins),
                guidance=guidance,
                attribution=copy.deepcopy(attribution),
            )
        )
    names = [m.name for m in declared]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{source}: duplicate method name(s) {dup}")
    out: list[StudyMethod] = []
    for m in declared:
        out.append(m)
        for kind, other in m.twins.items():
            if other not in names:
                raise ConfigError(
                    f"{source}: method {m.name!r}: twin {kind}={other!r} is not a method name "
                    f"({names})"
                )
        if m.guidance != "magic":
            continue
        kinds = m.score_twins if m.score_twins is not None else list(cfg.attribution.baselines)
        for b in kinds:
            if b in m.twins:  # a hand-written twin of this kind
                continue
            twin = StudyMethod(
                name=f"{m.name}.{b}",
                label=f"{m.label} [{TWIN_LABELS[b]}]",
                unlearn=_swap_scores(m.unlearn, b),
                data=f"{m.data} ({TWIN_LABELS[b]} instead of MAGIC)" if m.data else "",
                tamper=copy.deepcopy(m.tamper),
                family=m.family,
                guidance=b,
                attribution=copy.deepcopy(m.attribution),
                twin_of=m.name,
                twin_kind=b,
            )
            m.twins[b] = twin.name
            out.append(twin)
    return out


def select_methods(
    methods: list[StudyMethod], names: list[str] | None, twin_kinds: list[str] | None = None
) -> list[StudyMethod]:
    """The methods to run: ``names`` (None: all) plus, for each selected guided method, its
    twins of ``twin_kinds`` (None: every kind), in config order.

    Raises:
        ConfigError: an unknown method name or twin kind.
    """
    by_name = {m.name: m for m in methods}
    if twin_kinds is not None:
        bad = sorted(set(twin_kinds) - set(TWIN_KINDS))
        if bad:
            raise ConfigError(f"unknown twin kind(s) {bad}; choose from {list(TWIN_KINDS)}")
    if names is None:
        wanted = {m.name for m in methods if m.twin_of is None}
    else:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(
                f"unknown method(s) {unknown}; the study config has "
                f"{[m.name for m in methods if m.twin_of is None]} (and generated twins "
                f"{[m.name for m in methods if m.twin_of is not None]})"
            )
        wanted = set(names)
    for n in list(wanted):
        m = by_name[n]
        for kind, twin in m.twins.items():
            if twin_kinds is None or kind in twin_kinds:
                wanted.add(twin)
    return [m for m in methods if m.name in wanted]


def seed_config(cfg: StudyConfig, seed: int, methods: list[StudyMethod]) -> DemoConfig:
    """The demo config of one seed: every seed field set to ``seed``, ``methods`` as its
    methods (in order)."""
    world = copy.deepcopy(cfg.world)
    world["overrides"] = {**(world.get("overrides") or {}), "seed": seed}
    pretrain = copy.deepcopy(cfg.pretrain)
    pretrain["config"] = {**(pretrain.get("config") or {}), "seed": seed}
    attribution = copy.deepcopy(cfg.attribution)
    attribution.trajectory = {**attribution.trajectory, "seed": seed}
    tamper = deep_merge(cfg.tamper, {"all_attacks": {"seed": seed}})
    return DemoConfig(
        name=f"{cfg.name} (seed {seed})",
        device=cfg.device,
        seed=seed,
        world=world,
        pretrain=pretrain,
        eval=copy.deepcopy(cfg.eval),
        attribution=attribution,
        analysis=copy.deepcopy(cfg.analysis),
        tamper=tamper,
        unlearn=copy.deepcopy(cfg.unlearn),
        methods=[m.demo_entry() for m in methods],
    )


def study_fingerprint(cfg: StudyConfig) -> str:
    """Hash of what every seed record of the study shares (everything but the seeds, the
    methods, the name, the headline attack and the number of workers): records with another
    fingerprint belong to another study and are not merged."""
    skip = ("seeds", "methods", "name", "workers", "headline_attack")
    return config_hash({k: v for k, v in to_dict(cfg).items() if k not in skip})


__all__ = [
    "PRESETS",
    "TWIN_KINDS",
    "StudyConfig",
    "StudyMethod",
    "config_path",
    "expand_methods",
    "load_study_config",
    "seed_config",
    "select_methods",
    "study_fingerprint",
]
