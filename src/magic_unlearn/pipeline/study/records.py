"""Seed records: the compact, self-contained results of one seed of a study.

After a seed's runs finish, the study writes ``DIR/seeds/seed-<seed>-<tag>.json`` (``tag``: a
hash of the method names it covers). A record holds what the leaderboard needs and nothing
heavy: per run (the filtered and base references, every method) the accuracies, the verdict,
and per attack the summary numbers and the curve points; per score set the attribution's ground
truth numbers; the seconds each run took. No model, no corpus text.

Records are what merges: a GPU study split over machines (one seed, or one group of methods,
per call) brings back each call's ``seeds/*.json`` (kilobytes), and the leaderboard of the
directory they are copied into covers every record with the study's fingerprint. Two records
of one seed (e.g. two method groups) are unioned; the references of the earliest record serve
as the seed's filtered and base rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from magic_unlearn.config import config_hash
from magic_unlearn.io import atomic_write_json, read_json

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
SEEDS_DIR = "seeds"


def _artifact(folder: Path, key: str) -> Path:
    arts = read_json(folder / "manifest.json").get("artifacts", {})
    if key not in arts:
        raise KeyError(f"run {folder} has no artifact {key!r}; it has {sorted(arts)}")
    return folder / arts[key]


def run_entry(folder: Path, trains: Callable[[str | None], bool]) -> dict[str, Any]:
    """The record entry of a complete eval + tamper run folder.

    Args:
        folder: the run folder (``metrics.json``, ``manifest.json`` naming its tamper curves).
        trains: whether an attack kind trains (the attack registry's ``Attack.trains``).
    """
    metrics = read_json(folder / "metrics.json")
    summ = metrics.get("summary", {})
    t = summ.get("tamper") or {}
    curves = read_json(_artifact(folder, "tamper.curves"))
    # the filtered and base models' curves this run was judged against (same machine, call)
    filt = (curves.get("reference") or {}).get("filtered") or {}
    base = (curves.get("reference") or {}).get("base") or {}
    attacks: dict[str, Any] = {}
    for name, e in (curves.get("attacks") or {}).items():
        if "skipped" in e or not e.get("points"):
            continue
        a = (t.get("attacks") or {}).get(name, {})
        pts = sorted(e["points"], key=lambda p: p["step"])
        fpts = (filt.get(name) or {}).get("points")
        bpts = sorted((base.get(name) or {}).get("points") or [], key=lambda p: p["step"])
        by_layer = e.get("x_label") == "layer"
        attacks[name] = {
            "kind": e.get("kind"),
            "x_label": e.get("x_label", "step"),
            "trains": trains(e.get("kind")),
            "in_verdict": bool(e.get("in_verdict", True)),
            "max_hazard_acc": max(float(p["hazard_acc"]) for p in pts),
            # None for the filtered model itself (it is the reference)
            "filtered_max": max(float(p["hazard_acc"]) for p in fpts) if fpts else None,
            "steps_to_recover": a.get("steps_to_recover"),
            "budget": a.get("budget"),
            # the base model's hazard acc steps-to-recover aims at, as the verdict reads it
            # (a step curve's first point, a layer curve's last); None: no base reference
            "base_acc": (bpts[-1 if by_layer else 0]["hazard_acc"] if bpts else None),
            "status": a.get("status"),
            "lr": e.get("lr"),
            # [step, hazard acc, general acc] per evaluated point
            "points": [[int(p["step"]), float(p["hazard_acc"]), p.get("general_acc")] for p in pts],
        }
    return {
        "run_id": f"{folder.parent.name}/{folder.name}",
        "hazard_acc": summ.get("hazard_acc"),
        "general_acc": summ.get("general_acc"),
        "verdict": t.get("label"),
        "verdict_text": t.get("text"),
        "thresholds": t.get("thresholds") or {},
        "chance": curves.get("chance"),
        "attacks": attacks,
        "seconds": float(sum((metrics.get("seconds") or {}).values())),
        # unlearning's training tokens as a fraction of the model's pretraining tokens (UNDO's
        # cost is reported this way); None for runs without an unlearn stage (the references)
        "compute_frac": (
            ((metrics.get("stages") or {}).get("unlearn") or {}).get("compute") or {}
        ).get("frac_of_pretraining"),
    }


def analysis_entry(folder: Path) -> dict[str, Any]:
    """Ground-truth numbers per score set of a complete analyze run folder (hazard-fact AUC,
    hazard-vs-general AUC, precision at R)."""
    m = read_json(_artifact(folder, "analyze.analysis") / "metrics.json")
    per = ((m.get("ground_truth") or {}).get("per_score_set")) or {}
    keep = ("auc_hazard_vs_rest", "auc_hazard_vs_general", "p@R_hazard")
    return {name: {k: v.get(k) for k in keep} for name, v in per.items()}


def trust_entry(folder: Path) -> str | None:
    """The trust verdict of a complete MAGIC attribute run folder (None: no report)."""
    m = read_json(folder / "metrics.json")
    trust = ((m.get("stages") or {}).get("attribute") or {}).get("trust")
    return trust.get("verdict") if isinstance(trust, dict) else None


def record_tag(method_names: list[str]) -> str:
    """The file tag of a record covering ``method_names``."""
    return config_hash({"methods": sorted(method_names)})[:8]


def record_path(out: Path, seed: int, method_names: list[str]) -> Path:
    return Path(out) / SEEDS_DIR / f"seed-{seed}-{record_tag(method_names)}.json"


def write_record(out: Path, record: dict[str, Any], method_names: list[str]) -> Path:
    """Write the record of a seed and a method selection atomically (replacing an earlier one
    of the same selection, whose ``invocations`` it keeps); returns its path."""
    path = record_path(out, record["seed"], method_names)
    if path.exists():
        try:
            old = read_json(path).get("invocations") or []
        except ValueError:
            old = []
        record = {**record, "invocations": [*old, *record.get("invocations", [])]}
    atomic_write_json(path, record)
    return path


def new_record(study: dict[str, Any], seed: int) -> dict[str, Any]:
    """An empty record of ``seed`` of the study described by ``study`` (name, fingerprint,
    device, preset)."""
    return {
        "version": RECORD_VERSION,
        "study": dict(study),
        "seed": int(seed),
        "created": time.time(),
        "references": {},
        "methods": {},
        "attribution": {},
        "trust": {},
        "seconds": {},
        "failed": {},
    }


def load_records(out: Path) -> list[dict[str, Any]]:
    """Every seed record under ``out/seeds`` (unreadable files are skipped with a warning)."""
    recs = []
    for p in sorted((Path(out) / SEEDS_DIR).glob("seed-*.json")):
        try:
            r = read_json(p)
        except ValueError as e:
            logger.warning("skipping unreadable seed record %s: %s", p, e)
            continue
        if r.get("version") != RECORD_VERSION or "seed" not in r:
            logger.warning("skipping %s: not a seed record of this version", p)
            continue
        r["_path"] = str(p)
        recs.append(r)
    return recs


def merge_records(
    records: list[dict[str, Any]],
    fingerprint: str,
    definitions: dict[str, str] | None = None,
) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """One merged view per seed of the records of the study ``fingerprint``.

    Args:
        records: from :func:`load_records`.
        fingerprint: the study's fingerprint; other records are left out.
        definitions: method name -> definition hash of the current config; entries of methods
            not in it, or defined differently, are left out (None: keep every method).

    Returns:
        ``({seed: {"references", "methods", "attribution", "trust", "seconds", "records",
        "missing"}}, notes)``: ``missing`` lists the roles (``method:<name>``, ...) no record of
        the seed completed; notes say what was left out and why.
    """
    notes: list[str] = []
    by_seed: dict[int, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["seed"], r.get("created", 0.0))):
        where = Path(r.get("_path", "?")).name
        if r.get("study", {}).get("fingerprint") != fingerprint:
            notes.append(f"{where}: another study configuration (fingerprint differs); left out")
            continue
        if "filtered" not in r.get("references", {}):
            notes.append(f"{where}: no filtered reference (an interrupted seed); left out")
            continue
        s = by_seed.setdefault(
            int(r["seed"]),
            {
                "references": {},
                "methods": {},
                "attribution": {},
                "trust": {},
                "seconds": {},
                "records": [],
                "missing": [],
            },
        )
        s["missing"] += [role for role in r.get("failed", {}) if role not in s["missing"]]
        s["records"].append(where)
        for role, e in r.get("references", {}).items():
            s["references"].setdefault(role, e)  # the earliest record's references
        for k, v in r.get("attribution", {}).items():
            s["attribution"].setdefault(k, v)
        for k, v in (r.get("trust") or {}).items():  # absent in records of earlier versions
            s["trust"].setdefault(k, v)
        for name, e in r.get("methods", {}).items():
            if definitions is not None:
                if name not in definitions:
                    notes.append(f"{where}: method {name!r} is not in the study config; left out")
                    continue
                if e.get("definition") != definitions[name]:
                    notes.append(
                        f"{where}: method {name!r} was run with another definition; left out "
                        f"(rerun it)"
                    )
                    continue
            s["methods"][name] = e  # the latest record wins
        s["seconds"].update(r.get("seconds", {}))
        s.setdefault("invocations", []).extend(r.get("invocations") or [])
    for s in by_seed.values():  # roles no record of the seed completed
        done = {f"reference:{k}" for k in s["references"]} | {f"method:{k}" for k in s["methods"]}
        if s["attribution"]:
            done.add("analyze")
        s["missing"] = [role for role in s["missing"] if role not in done]
    return by_seed, notes


__all__ = [
    "RECORD_VERSION",
    "SEEDS_DIR",
    "analysis_entry",
    "load_records",
    "merge_records",
    "new_record",
    "record_path",
    "record_tag",
    "run_entry",
    "trust_entry",
    "write_record",
]
