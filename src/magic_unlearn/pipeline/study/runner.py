"""``magic-unlearn study``: the demo's study over several seeds, with confidence intervals.

For each seed the study builds the demo's plan (:meth:`Demo.plan`: world, base and filtered
models, their evaluation and attacks, MAGIC and the baseline attributions, the analysis, every
selected method with the tamper suite) with the seed's run names prefixed ``s<seed>-``. The
steps of every seed run wave by wave through the sweep engine (:func:`run_specs`): a wave's runs
depend only on earlier waves, so with ``workers > 1`` they run in parallel processes (several
seeds' pretrainings at once, several methods at once). Every run is a cached run folder of the
results store, so an interrupted study resumes and a rerun skips what is done.

When a seed's runs are done its record (:mod:`.records`) is written; the leaderboard and the
report are then built from every record in the directory that belongs to this study, so seeds
run separately (``--seeds 1``, on other machines) merge by copying their records in.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic_unlearn.config import ConfigError, save_config
from magic_unlearn.io import atomic_write_json, read_json
from magic_unlearn.pipeline.demo import Demo, DemoPlan
from magic_unlearn.pipeline.runs import is_complete
from magic_unlearn.pipeline.stages import STAGES, TamperStageConfig
from magic_unlearn.pipeline.study.config import (
    StudyConfig,
    StudyMethod,
    expand_methods,
    load_study_config,
    seed_config,
    select_methods,
    study_fingerprint,
)
from magic_unlearn.pipeline.study.leaderboard import build_leaderboard
from magic_unlearn.pipeline.study.records import (
    analysis_entry,
    load_records,
    merge_records,
    new_record,
    run_entry,
    trust_entry,
    write_record,
)
from magic_unlearn.pipeline.study.report import write_report
from magic_unlearn.pipeline.sweep import run_specs
from magic_unlearn.tamper.registry import ATTACKS

logger = logging.getLogger(__name__)

WAVES = (
    "worlds",
    "pretraining",
    "filtered references + attributions",
    "base references + analyses",
    "methods",
)
# a failed run of these roles leaves nothing to compare a seed's methods with
_BLOCKING = ("world", "pretrain:", "reference:")


def _trains(kind: str | None) -> bool:
    return kind in ATTACKS and ATTACKS[kind].trains


def json_safe(obj: Any) -> Any:
    """NaN/inf floats -> None and keys -> str, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class StudyResult:
    """What a study run wrote, and what failed."""

    out: Path
    leaderboard: Path
    report: Path
    html: Path
    seeds: list[int]
    failed: dict[str, str] = field(default_factory=dict)


class Study:
    """A study over a results directory.

    Args:
        cfg: the study config.
        out: results directory (runs, store, seed records, leaderboard, report).
        seeds: seeds to run (default ``cfg.seeds``).
        methods: method names to run (default: every configured method); each selected guided
            method brings its twins.
        twin_kinds: which twins come along (default: every kind).
        workers: parallel run processes (default ``cfg.workers``; 1 runs in this process).
        threads: torch threads of each worker process (None: torch's default).
        preset: the preset name, recorded in the leaderboard.
        stages: stage registry (default: the real stages).
    """

    def __init__(
        self,
        cfg: StudyConfig,
        out: str | Path,
        *,
        seeds: list[int] | None = None,
        methods: list[str] | None = None,
        twin_kinds: list[str] | None = None,
        workers: int | None = None,
        threads: int | None = None,
        preset: str | None = None,
        stages: Any = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(out).absolute()
        self.seeds = list(seeds if seeds is not None else cfg.seeds)
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {self.seeds}")
        self.all_methods = expand_methods(cfg)
        self.methods: list[StudyMethod] = select_methods(self.all_methods, methods, twin_kinds)
        self.workers = int(workers if workers is not None else cfg.workers)
        self.threads = threads
        self.preset = preset
        self.stages = stages if stages is not None else STAGES

    # ------------------------------------------------------------------ plan
    def demo(self, seed: int) -> Demo:
        """The demo of one seed (its runs are named ``s<seed>-...``)."""
        return Demo(
            seed_config(self.cfg, seed, self.methods),
            self.out,
            stages=self.stages,
            progress=False,
            prefix=f"s{seed}-",
        )

    def info(self) -> dict[str, Any]:
        """What identifies the study in its records and leaderboard."""
        return {
            "name": self.cfg.name,
            "fingerprint": study_fingerprint(self.cfg),
            "device": self.cfg.device,
            "preset": self.preset,
            "headline_attack": self.cfg.headline_attack,
        }

    def validate(self) -> None:
        """Check every section (through the first seed's demo) and the headline attack."""
        suite = TamperStageConfig.from_section(self.cfg.tamper, "study config: tamper")
        attacks = list(suite.suite_config.selected())
        if self.cfg.headline_attack not in attacks:
            raise ConfigError(
                f"study config: headline_attack {self.cfg.headline_attack!r} is not an attack "
                f"of the tamper suite {attacks}"
            )
        self.demo(self.seeds[0]).validate()

    # ------------------------------------------------------------------ run
    def run(self) -> StudyResult:
        """Run every seed's steps (cached ones are skipped), write the seed records, then the
        leaderboard and the report."""
        self.validate()
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out / "study_config.yaml")
        t0 = time.time()
        plans = {s: self.demo(s).plan() for s in self.seeds}
        failed: dict[str, str] = {}
        blocked: dict[int, str] = {}
        executor = "inline" if self.workers <= 1 else "local"
        try:
            self._run_waves(plans, executor, failed, blocked)
        finally:
            # also when interrupted: a record of the runs done so far (a rerun completes it)
            run = {
                "seeds": list(self.seeds),
                "methods": [m.name for m in self.methods],
                "workers": self.workers,
                "wall_s": time.time() - t0,
                "finished": time.time(),
            }
            for s in self.seeds:
                rec = self.record(s, plans[s], failed)
                rec["invocations"] = [run]
                if "filtered" not in rec["references"]:  # nothing to compare with yet
                    logger.warning("seed %d: no record (its filtered reference did not run)", s)
                    continue
                path = write_record(self.out, rec, [m.name for m in self.methods])
                logger.info("seed %d: record %s", s, path.relative_to(self.out))
        for s, why in blocked.items():
            logger.error("seed %d stopped: %s", s, why)
        logger.info("study runs done in %.1fs", time.time() - t0)
        res = self.report()
        res.failed = failed
        return res

    def _run_waves(
        self,
        plans: dict[int, DemoPlan],
        executor: str,
        failed: dict[str, str],
        blocked: dict[int, str],
    ) -> None:
        for wave, what in enumerate(WAVES):
            specs = [
                st.spec
                for s, p in plans.items()
                if s not in blocked
                for st in p.steps
                if st.wave == wave
            ]
            if not specs:
                continue
            logger.info("study wave %d/%d: %s (%d runs)", wave + 1, len(WAVES), what, len(specs))
            res = run_specs(
                specs,
                self.out,
                self.stages,
                workers=self.workers,
                executor=executor,
                threads=self.threads,
                source=f"study wave {wave + 1} ({what})",
            )
            failed.update(res.failed)
            for s, p in plans.items():
                for st in p.steps:
                    if st.spec.run_id in res.failed and st.role.startswith(_BLOCKING):
                        blocked.setdefault(s, f"{st.title} failed: {res.failed[st.spec.run_id]}")

    def record(self, seed: int, plan: DemoPlan, failed: dict[str, str]) -> dict[str, Any]:
        """The seed record of the complete runs of ``plan``."""
        rec = new_record(self.info(), seed)
        for st in plan.steps:
            folder = st.spec.folder(self.out)
            kind, _, key = st.role.partition(":")
            role = f"method:{self.methods[int(key)].name}" if kind == "method" else st.role
            if not is_complete(folder):
                rec["failed"][role] = failed.get(st.spec.run_id, "not run")
                continue
            secs = (read_json(folder / "metrics.json").get("seconds")) or {}
            rec["seconds"][role] = float(sum(secs.values()))
            if kind == "reference":
                rec["references"][key] = run_entry(folder, _trains)
            elif kind == "method":
                m = self.methods[int(key)]
                rec["methods"][m.name] = {**run_entry(folder, _trains), **m.info()}
            elif kind == "analyze":
                rec["attribution"] = analysis_entry(folder)
            elif kind == "attribute" and key.split("@")[0] == "magic":
                # whether the guidance ran on scores the trust report vouches for
                rec["trust"][key] = trust_entry(folder)
        return rec

    # ------------------------------------------------------------------ report
    def report(self) -> StudyResult:
        """Leaderboard and report from every record of this study in the directory."""
        records = load_records(self.out)
        defs = {m.name: m.definition_hash() for m in self.all_methods}
        seeds, notes = merge_records(records, study_fingerprint(self.cfg), defs)
        for n in notes:
            logger.warning("%s", n)
        if not seeds:
            raise FileNotFoundError(
                f"{self.out} holds no seed record of this study (seeds/seed-*.json with its "
                f"fingerprint); run `magic-unlearn study --out {self.out}` first"
            )
        infos = {m.name: m.info() for m in self.all_methods}
        lb = json_safe(build_leaderboard(seeds, infos, self.info(), notes))
        lb_path = self.out / "leaderboard.json"
        atomic_write_json(lb_path, lb)
        md, html = write_report(self.out, lb)
        logger.info("leaderboard over seeds %s: %s", lb["seeds"], lb["headline"]["sentence"])
        return StudyResult(self.out, lb_path, md, html, list(lb["seeds"]))


def run_study(
    preset: str = "tiny",
    out: str | Path = "runs/study",
    *,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    device: str | None = None,
    seeds: list[int] | None = None,
    methods: list[str] | None = None,
    twin_kinds: list[str] | None = None,
    workers: int | None = None,
    threads: int | None = None,
    report_only: bool = False,
) -> StudyResult:
    """Run (or, with ``report_only``, only report) a study; see :class:`Study`."""
    cfg = load_study_config(preset, config, overrides, device)
    study = Study(
        cfg,
        out,
        seeds=seeds,
        methods=methods,
        twin_kinds=twin_kinds,
        workers=workers,
        threads=threads,
        preset=None if config is not None else preset,
    )
    return study.report() if report_only else study.run()


__all__ = ["WAVES", "Study", "StudyResult", "json_safe", "run_study"]
