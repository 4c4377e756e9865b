"""``magic-unlearn study``: the demo over several seeds, with intervals and paired comparisons.

Modules: ``config.py`` (:class:`StudyConfig`, methods and their twins, per-seed demo configs),
``runner.py`` (:class:`Study`: every seed's demo plan, wave by wave through the sweep engine;
seed records; leaderboard; report), ``records.py`` (the per-seed records that merge across
machines), ``leaderboard.py`` (means with t intervals, paired differences with sign tests, the
headline), ``report.py`` (``report.md`` / ``report.html`` from ``leaderboard.json``).
"""

from magic_unlearn.pipeline.study.config import (
    StudyConfig,
    StudyMethod,
    expand_methods,
    load_study_config,
    seed_config,
    select_methods,
    study_fingerprint,
)
from magic_unlearn.pipeline.study.leaderboard import build_leaderboard, headline_sentence
from magic_unlearn.pipeline.study.records import load_records, merge_records
from magic_unlearn.pipeline.study.runner import Study, StudyResult, run_study

__all__ = [
    "Study",
    "StudyConfig",
    "StudyMethod",
    "StudyResult",
    "build_leaderboard",
    "expand_methods",
    "headline_sentence",
    "load_records",
    "load_study_config",
    "merge_records",
    "run_study",
    "seed_config",
    "select_methods",
    "study_fingerprint",
]
