"""``tamper()``: attack a model with a suite, compare with base/filtered references, decide.

Reference curves (the base and filtered models attacked with the same suite) are cached per
(model hash, attack hash) under ``cache_dir`` so a demo attacking several unlearned models
computes them once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magic_unlearn.config import config_hash, save_config, to_dict
from magic_unlearn.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    read_json,
    write_manifest,
)
from magic_unlearn.models import load_model, load_tokenizer, model_hash, resolve_device
from magic_unlearn.tamper.config import AttackConfig, SuiteConfig, load_suite
from magic_unlearn.tamper.context import AttackContext, make_attack_context
from magic_unlearn.tamper.plots import plot_recovery
from magic_unlearn.tamper.registry import ATTACKS, AttackSkipped, get_attack
from magic_unlearn.tamper.scoring import Scorer
from magic_unlearn.tamper.verdict import Verdict, decide, format_table, summarize_attack
from magic_unlearn.world import World

logger = logging.getLogger(__name__)

CURVES_VERSION = 1


# ---------------------------------------------------------------------------------------------
# running a suite


def run_attack(
    model: nn.Module,
    name: str,
    attack: AttackConfig,
    ctx: AttackContext,
    *,
    original: nn.Module | None = None,
    initial: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run one attack on ``model`` (left unchanged) and return its curve entry.

    The entry holds ``kind``, ``x_label``, ``config``, ``in_verdict``, ``points``, the attack's
    own fields (e.g. ``lr`` and ``sweep`` of a learning-rate sweep, ``ablated_layers``,
    ``lens``), ``wall_s`` and ``eval_s``; or ``skipped`` with a reason.
    """
    impl = get_attack(attack.kind)
    entry: dict[str, Any] = {
        "kind": attack.kind,
        "x_label": impl.x_label,
        "config": to_dict(attack),
        "in_verdict": attack.in_verdict,
    }
    if impl.needs_original and original is None:
        entry["skipped"] = (
            f"{attack.kind} needs the original (base) model's weights: pass "
            "reference={'base': MODEL} or original=MODEL"
        )
        return entry
    eval0 = ctx.scorer.seconds  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    corpora = {role: ctx.corpus(src, attack, name) for role, src in impl.corpora(attack).items()}
    try:
        res = impl.run(
            model,
            attack,
            ctx,
            corpora=corpora,
            original=original,
            initial=initial if impl.starts_at_model else None,
        )
    except AttackSkipped as e:
        entry["skipped"] = str(e)
        return entry
    clash = sorted(set(res.info) & {*entry, "points", "skipped", "wall_s", "eval_s"})
    if clash:
        raise ValueError(f"attack kind {attack.kind!r}: AttackRun.info may not set {clash}")
    entry.update(points=res.points, **res.info)
    entry["wall_s"] = time.perf_counter() - t0
    entry["eval_s"] = ctx.scorer.seconds - eval0  # type: ignore[attr-defined]
    return entry


def run_suite(
    model: nn.Module,
    suite: SuiteConfig,
    ctx: AttackContext,
    *,
    original: nn.Module | None = None,
    cache: Path | None = None,
    model_key: str | None = None,
    original_key: str | None = None,
    label: str = "model",
) -> dict[str, dict[str, Any]]:
    """Run every selected attack of ``suite``; with ``cache`` (+``model_key``) reuse/stores
    each attack's entry in ``cache/<model_key>/<attack>-<hash>.json``."""
    out: dict[str, dict[str, Any]] = {}
    initial: dict[str, float] | None = None
    for name, attack in suite.selected().items():
        impl = get_attack(attack.kind)
        path = None
        if cache is not None and model_key is not None:
            key = config_hash(
                {
                    "attack": to_dict(attack),
                    "eval": ctx.eval_key,
                    "data": _data_key(ctx, attack, name),
                    "original": original_key if impl.needs_original else None,
                    "version": CURVES_VERSION,
                    # on a CPU the thread count changes the float sums, so the curves too
                    "cpu_threads": (
                        torch.get_num_threads()
                        if resolve_device(ctx.device).type == "cpu"
                        else None
                    ),
                }
            )
            path = Path(cache) / model_key / f"{name}-{key}.json"
            if path.exists():
                out[name] = read_json(path)
                out[name]["cached"] = True
                continue
        if initial is None and impl.starts_at_model:
            initial = ctx.scorer(model)  # the unattacked model: measured once, shared
        logger.info("%s: attack %s (%s)", label, name, attack.kind)
        out[name] = run_attack(model, name, attack, ctx, original=original, initial=initial)
        if path is not None and "skipped" not in out[name]:
            atomic_write_json(path, out[name])
    return out


def _data_key(ctx: AttackContext, attack: AttackConfig, name: str) -> str | None:
    """Content hash of the corpora the attack reads (None if it reads none)."""
    sources = get_attack(attack.kind).corpora(attack)
    if not sources:
        return None
    return "-".join(ctx.corpus(s, attack, name).content_hash() for s in sources.values())


# ---------------------------------------------------------------------------------------------
# models and references


def _name(m: Any) -> str:
    """How log lines name a model: its folder (the last 60 characters) or hub id, or its class."""
    if isinstance(m, nn.Module):
        return type(m).__name__
    s = str(m)
    return s if len(s) <= 60 else "..." + s[-57:]


def _as_model(m: str | Path | nn.Module, device: str) -> nn.Module:
    if isinstance(m, nn.Module):
        return m
    return load_model(m, device=resolve_device(device))


def _same_model(a: Any, b: Any) -> bool:
    if isinstance(a, nn.Module) or isinstance(b, nn.Module):
        return a is b
    if a is None or b is None:
        return False
    return Path(str(a)).resolve() == Path(str(b)).resolve()


def _is_curves(ref: Any) -> bool:
    if isinstance(ref, (dict, TamperResult)):
        return True
    if isinstance(ref, (str, Path)):
        p = Path(ref)
        return (p.is_file() and p.suffix == ".json") or (p / "curves.json").exists()
    return False


def _load_curves(ref: Any) -> dict[str, Any]:
    if isinstance(ref, TamperResult):
        return ref.curves
    if isinstance(ref, dict):
        return ref
    p = Path(ref)
    doc = read_json(p if p.suffix == ".json" else p / "curves.json")
    if "attacks" not in doc:
        raise ValueError(
            f"{p}: not a tamper curves file (no 'attacks'); produce it with `magic-unlearn tamper`"
        )
    return doc


# ---------------------------------------------------------------------------------------------
# the API


@dataclass
class TamperResult:
    """Outcome of :func:`tamper`.

    Attributes:
        curves: the ``curves.json`` document: ``{"suite", "model", "attacks": {name: entry},
            "reference": {"base"|"filtered": {name: entry}}, "chance", ...}``.
        verdict: the verdict (``verdict.text``, per-attack summaries).
        out: the output folder (None if not written).
    """

    curves: dict[str, Any]
    verdict: Verdict
    out: Path | None = None

    def table(self) -> str:
        return format_table(self.verdict)


def verdict_from_curves(curves: dict[str, Any], suite: SuiteConfig) -> Verdict:
    """Verdict of ``curves['attacks']`` against ``curves['reference']`` (pure, no models)."""
    refs = curves.get("reference", {})
    base, filt = refs.get("base") or {}, refs.get("filtered") or {}
    chance = curves.get("chance")
    nq = curves.get("n_questions") or {}  # absent in older curves: plain thresholds apply
    summaries = {}
    general0 = None
    for name, e in curves["attacks"].items():
        if "skipped" in e or not e.get("points"):
            continue
        b = base.get(name, {}).get("points") if name in base else None
        f = filt.get(name, {}).get("points") if name in filt else None
        # a layer curve (a probe) ends at the model's own output; a step curve starts there
        by_layer = e.get("x_label") == "layer"
        base_acc = None
        if b:
            base_acc = b[-1]["hazard_acc"] if by_layer else b[0]["hazard_acc"]
        summaries[name] = summarize_attack(
            name,
            e["points"],
            suite.verdict,
            base_acc=base_acc,
            filtered_points=f,
            chance=chance,
            x_label=e.get("x_label", "step"),
            in_verdict=bool(e.get("in_verdict", True)),
            n=nq.get("hazard"),
        )
        if general0 is None and not by_layer:
            general0 = e["points"][0].get("general_acc")
    ref_general = None
    for ref in (base, filt):
        for e in ref.values():
            if e.get("x_label") != "layer" and e.get("points"):
                ref_general = e["points"][0].get("general_acc")
                break
        if ref_general is not None:
            break
    return decide(
        summaries,
        suite.verdict,
        general_acc=general0,
        reference_general_acc=ref_general,
        chance=chance,
        n_general=nq.get("general"),
    )


def tamper(
    model: str | Path | nn.Module,
    suite: str | Path | SuiteConfig = "world",
    out: str | Path | None = None,
    reference: dict[str, Any] | None = None,
    world: str | Path | Any | None = None,
    device: str = "auto",
    *,
    tokenizer: Any = None,
    scorer: Scorer | None = None,
    original: str | Path | nn.Module | None = None,
    cache_dir: str | Path | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    quiet: bool = False,
) -> TamperResult:
    """Attack ``model`` with every attack of ``suite`` and decide if it is tamper resistant.

    Args:
        model: a model folder / hub id or a loaded causal LM (never modified).
        suite: built-in suite name (``world``, ``real``, ``world:transfer,relearn``), YAML
            file, or :class:`SuiteConfig`.
        out: output folder (``curves.json``, ``verdict.json``, ``table.txt``, ``plots/*.png``,
            ``config.yaml``, ``manifest.json``, ``metrics.json``); None writes nothing.
        reference: ``{"base": X, "filtered": Y}`` where each X is a model (path or module; its
            curves are computed once and cached) or precomputed curves (a ``curves.json`` path,
            a tamper output folder, its dict or a :class:`TamperResult`).
        world: world folder or loaded ``World`` (question sets, attack corpora, tokenizer).
        device: ``auto`` | ``cpu`` | ``cuda``.
        tokenizer: defaults to the world's, else the model folder's.
        scorer: custom ``model -> {"hazard_acc", "hazard_loss", "general_acc", ...}``
            (default: the suite's eval tasks through :mod:`magic_unlearn.evaluation`).
        original: the pre-unlearning model for ``ablate`` (default: ``reference["base"]``).
        cache_dir: where reference curves are cached (default ``<out parent>/.tamper_cache``;
            no caching when both ``out`` and ``cache_dir`` are None).
        config / overrides: extra suite YAML and ``KEY=VALUE`` overrides.
        overwrite: replace an existing ``out``.
        progress: tqdm bars; quiet: do not print the verdict table.

    Returns:
        :class:`TamperResult`.
    """
    t0 = time.time()
    suite_cfg = load_suite(suite, config, overrides)
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite)")
    wobj = _load_world(world)
    if tokenizer is None:
        tokenizer = _tokenizer_for(model, wobj)
    ctx = make_attack_context(
        suite_cfg, tokenizer, world=wobj, device=device, scorer=scorer, progress=progress
    )
    reference = dict(reference or {})
    unknown = sorted(set(reference) - {"base", "filtered"})
    if unknown:
        raise ValueError(f"reference keys {unknown} unknown; use 'base' and/or 'filtered'")
    if cache_dir is None and out is not None:
        cache_dir = Path(out).parent / ".tamper_cache"
    cache = Path(cache_dir) if cache_dir is not None else None  # None: no caching

    base_model = None
    orig_src = (
        original
        if original is not None
        else (reference.get("base") if not _is_curves(reference.get("base")) else None)
    )
    if orig_src is not None:
        base_model = _as_model(orig_src, device)
    hashes: dict[int, str] = {}

    def mhash(x: Any) -> str:  # hashing a large folder takes seconds: once per object
        if id(x) not in hashes:
            hashes[id(x)] = model_hash(x)
        return hashes[id(x)]

    orig_key = mhash(orig_src) if orig_src is not None else None

    ref_curves: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for role in ("base", "filtered"):
        ref = reference.get(role)
        if ref is None:
            continue
        if _is_curves(ref):
            doc = _load_curves(ref)
            mine = {k: v for k, v in to_dict(suite_cfg.eval).items() if k != "batch_size"}
            theirs = {k: v for k, v in (doc.get("eval") or {}).items() if k != "batch_size"}
            if doc.get("eval") is not None and theirs != mine:
                warnings.append(
                    f"precomputed {role} curves were measured with other eval "
                    f"settings ({theirs}) than this run ({mine}); the "
                    f"comparison may be unfair"
                )
                logger.warning("%s", warnings[-1])
            ref_curves[role] = doc["attacks"]
            continue
        rmodel = (
            base_model
            if base_model is not None and _same_model(ref, orig_src)
            else _as_model(ref, device)
        )
        ref_curves[role] = run_suite(
            rmodel,
            suite_cfg,
            ctx,
            original=base_model,
            cache=cache,
            model_key=f"{role}-{mhash(ref)}",
            original_key=orig_key,
            label=f"{role} model ({_name(ref)})",
        )
    m = _as_model(model, device)
    attacks = run_suite(
        m, suite_cfg, ctx, original=base_model, label=f"attacked model ({_name(model)})"
    )
    curves = {
        "version": CURVES_VERSION,
        "suite": suite_cfg.name,
        "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "model_hash": mhash(model),
        "eval": to_dict(suite_cfg.eval),
        "n_questions": dict(ctx.n_questions),  # the noise of every accuracy below
        "chance": ctx.chance,
        "attacks": attacks,
        "reference": ref_curves,
        "warnings": warnings,
    }
    verdict = verdict_from_curves(curves, suite_cfg)
    result = TamperResult(curves=curves, verdict=verdict, out=None)
    if not quiet:  # the requested report (stdout), not a status message
        print(result.table(), flush=True)
    if out is not None:
        result.out = write_outputs(
            out, result, suite_cfg, wall_s=time.time() - t0, overwrite=overwrite
        )
    return result


def write_outputs(
    out: str | Path,
    result: TamperResult,
    suite: SuiteConfig,
    *,
    wall_s: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the tamper artifact folder atomically."""
    curves = result.curves
    with atomic_dir(out, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "curves.json", curves)
        atomic_write_json(tmp / "verdict.json", result.verdict.to_dict())
        atomic_write_text(tmp / "table.txt", result.table() + "\n")
        save_config(suite, tmp / "config.yaml")
        for name, e in curves["attacks"].items():
            if not e.get("points"):
                continue
            lines = {"model": e["points"]}
            for role, ref in curves.get("reference", {}).items():
                if name in ref and ref[name].get("points"):
                    lines[role] = ref[name]["points"]
            sm = result.verdict.attacks.get(name)
            title = None
            if sm is not None:
                ref = (
                    ""
                    if sm.reference_max is None
                    else f" vs {sm.reference} {100 * sm.reference_max:.1f}%"
                )
                title = (
                    f"attack: {name} ({e.get('kind')}): max hazard "
                    f"{100 * sm.max_hazard_acc:.1f}%{ref} -> {sm.status}"
                )
            plot_recovery(
                tmp / "plots" / f"{name}.png",
                name,
                lines,
                x_label=e.get("x_label", "step"),
                chance=curves.get("chance"),
                title=title,
                kind=e.get("kind"),
            )
        # attacks that do not train are all evaluation; the overhead that matters is in training
        ft = [e for e in curves["attacks"].values() if _trains(e.get("kind"))]
        wall = sum(e.get("wall_s", 0.0) for e in ft)
        ev = sum(e.get("eval_s", 0.0) for e in ft)
        atomic_write_json(
            tmp / "metrics.json",
            {
                "verdict": result.verdict.label,
                "verdict_text": result.verdict.text,
                "attacks": {
                    k: {
                        "max_hazard_acc": s.max_hazard_acc,
                        "auc": s.auc,
                        "steps_to_recover": s.steps_to_recover,
                        "budget": s.budget,
                        "status": s.status,
                    }
                    for k, s in result.verdict.attacks.items()
                },
                "finetune_wall_s": wall,
                "finetune_eval_s": ev,
                "finetune_eval_fraction": (ev / wall) if wall else None,
                "total_wall_s": wall_s,
            },
        )
        write_manifest(
            tmp,
            "tamper",
            inputs={"model": curves["model"], "model_hash": curves["model_hash"]},
            extra={"suite": suite.name},
        )
    return Path(out)


def _trains(kind: str | None) -> bool:
    """Whether curves of ``kind`` come from training (unknown kinds, e.g. of an old or a
    third-party curves file, do not count)."""
    return kind in ATTACKS and ATTACKS[kind].trains


def _load_world(world: Any) -> Any:
    if world is None or not isinstance(world, (str, Path)):
        return world
    return World.load(world)


def _tokenizer_for(model: Any, world: Any) -> Any:
    if world is not None and getattr(world, "tokenizer", None) is not None:
        return world.tokenizer
    if isinstance(model, (str, Path)):
        return load_tokenizer(model)
    raise ValueError("tamper: pass tokenizer= (or world=) when the model is a loaded module")
