"""``tamper()``: attack a model with a suite, compare with base/filtered references, decide.

Reference curves (the base and filtered models attacked with the same suite) are cached per
(model hash, attack hash) under ``cache_dir`` so a demo attacking several unlearned models
computes them once.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from magic_unlearn.config import config_hash, save_config, to_dict
from magic_unlearn.data import TokenizedCorpus, load_corpus, tokenize_corpus
from magic_unlearn.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    bytes_hash,
    file_hash,
    read_json,
)
from magic_unlearn.models import model_hash as state_dict_hash
from magic_unlearn.tamper.attacks import (
    Scorer,
    TimedScorer,
    ablate_attack,
    finetune_attack,
    probe_attack,
    worst_case,
)
from magic_unlearn.tamper.config import AttackConfig, SuiteConfig, load_suite
from magic_unlearn.tamper.plots import plot_recovery
from magic_unlearn.tamper.verdict import Verdict, decide, format_table, summarize_attack

CURVES_VERSION = 1
WORLD_CORPORA = ("forget", "attack_relearn", "attack_transfer", "attack_benign", "retain")


# ---------------------------------------------------------------------------------------------
# context: what every attack of a run shares


@dataclass
class AttackContext:
    """Shared state of one suite run: the scorer, the attack corpora and the ablation prompts.

    Attributes:
        scorer: measures a model; wrapped in :class:`TimedScorer` to account eval time.
        tokenizer: tokenizes attack corpora.
        eval_key: hash of what the scorer measures (tasks, questions, settings) for caching.
        chance: chance accuracy of the hazard set (None if unknown).
        prompts: (input_ids, attention_mask) of hazard question prompts (for ``ablate``).
        world: a loaded world (resolves corpus names) or None.
        sources: logical corpus name -> ``load_corpus`` source.
        device: training / scoring device.
        progress: tqdm bars during fine-tuning.
    """

    scorer: Scorer
    tokenizer: Any
    eval_key: str
    chance: float | None = None
    prompts: tuple[torch.Tensor, torch.Tensor] | None = None
    world: Any = None
    sources: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    progress: bool = False
    _corpora: dict[tuple, TokenizedCorpus] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scorer, TimedScorer):
            self.scorer = TimedScorer(self.scorer)

    def corpus(self, name: str, attack: AttackConfig, attack_name: str) -> TokenizedCorpus:
        """Tokenized rows of corpus ``name`` for ``attack`` (cached)."""
        key = (name, attack.max_length, attack.max_examples)
        if key not in self._corpora:
            docs = self._docs(name, attack_name)
            if attack.max_examples is not None:
                docs = docs[: attack.max_examples]
            self._corpora[key] = tokenize_corpus(docs, self.tokenizer, max_length=attack.max_length)
        return self._corpora[key]

    def _docs(self, name: str, attack_name: str) -> list[dict[str, Any]]:
        if name in self.sources:
            return load_corpus(self.sources[name])
        if self.world is not None and name in WORLD_CORPORA:
            docs = self.world.corpus(name)
            if isinstance(docs, TokenizedCorpus):
                raise TypeError("world.corpus() returned token rows; expected documents")
            return list(docs)
        p = Path(name)
        if (
            p.exists()
            or name.startswith("hf:")
            or (":" in name and Path(name.rsplit(":", 1)[0]).is_dir())
        ):
            return load_corpus(name)
        raise ValueError(
            f"attack '{attack_name}': cannot resolve corpus {name!r}: pass a world (--world DIR) "
            f"for world corpora {list(WORLD_CORPORA)}, or map it to a file with "
            f"--set sources.{name}=PATH.jsonl (or name a JSONL/Parquet file directly)"
        )


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

    The entry holds ``kind``, ``x_label``, ``config``, ``points`` (the worst case over the
    learning-rate sweep), ``lr``, ``sweep`` (lr -> points when several), ``wall_s``, ``eval_s``;
    or ``skipped`` with a reason.
    """
    entry: dict[str, Any] = {
        "kind": attack.kind,
        "x_label": "step",
        "config": to_dict(attack),
        "in_verdict": attack.in_verdict,
    }
    eval0 = ctx.scorer.seconds  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    if attack.kind == "finetune":
        corpora = {"data": ctx.corpus(attack.data, attack, name)}
        if attack.pre_data and attack.pre_steps > 0:
            corpora["pre_data"] = ctx.corpus(attack.pre_data, attack, name)
        runs: dict[float, list[dict[str, Any]]] = {}
        for lr in attack.learning_rates():
            pts, _info = finetune_attack(
                model,
                attack,
                corpora,
                ctx.scorer,
                lr,
                device=ctx.device,
                initial=initial,
                progress=ctx.progress,
            )
            runs[lr] = pts
        lr = worst_case(runs)
        entry.update(points=runs[lr], lr=lr, n_examples=len(corpora["data"]))
        if len(runs) > 1:
            entry["sweep"] = {repr(k): v for k, v in runs.items()}
    elif attack.kind == "ablate":
        if original is None:
            entry["skipped"] = (
                "ablate needs the original (base) model's weights: pass "
                "reference={'base': MODEL} or original=MODEL"
            )
            return entry
        if ctx.prompts is None:
            entry["skipped"] = "ablate needs hazard question prompts (none in the eval tasks)"
            return entry
        pts, info = ablate_attack(model, original, ctx.scorer, *ctx.prompts, initial=initial)
        entry.update(points=pts, ablated_layers=info["ablated_layers"])
    elif attack.kind == "probe":
        lens = None
        if attack.tuned_lens:
            from magic_unlearn.lens import train_tuned_lens

            # fit on a copy so the probed model's parameters keep requires_grad untouched
            lens, losses = train_tuned_lens(
                copy.deepcopy(model),
                ctx.corpus(attack.data, attack, name),
                steps=attack.steps,
                lr=attack.lr,
                batch_size=attack.batch_size,
                seed=attack.seed,
            )
            entry.update(lens="tuned", lens_final_kl=losses[-1] if losses else None)
        pts, _info = probe_attack(model, ctx.scorer, lens)
        entry.update(points=pts, x_label="layer")
        entry.setdefault("lens", "logit")
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
        path = None
        if cache is not None and model_key is not None:
            key = config_hash(
                {
                    "attack": to_dict(attack),
                    "eval": ctx.eval_key,
                    "data": _data_key(ctx, attack, name),
                    "original": original_key if attack.kind == "ablate" else None,
                    "version": CURVES_VERSION,
                }
            )
            path = Path(cache) / model_key / f"{name}-{key}.json"
            if path.exists():
                out[name] = read_json(path)
                out[name]["cached"] = True
                continue
        if initial is None and attack.kind in ("finetune", "ablate"):
            initial = ctx.scorer(model)
        if ctx.progress:
            print(f"[tamper] {label}: attack {name} ({attack.kind})", flush=True)
        out[name] = run_attack(model, name, attack, ctx, original=original, initial=initial)
        if path is not None and "skipped" not in out[name]:
            atomic_write_json(path, out[name])
    return out


def _data_key(ctx: AttackContext, attack: AttackConfig, name: str) -> str | None:
    if attack.kind == "probe" and attack.tuned_lens:
        return ctx.corpus(attack.data, attack, name).content_hash()
    if attack.kind != "finetune":
        return None
    keys = [ctx.corpus(attack.data, attack, name).content_hash()]
    if attack.pre_data and attack.pre_steps > 0:
        keys.append(ctx.corpus(attack.pre_data, attack, name).content_hash())
    return "-".join(keys)


# ---------------------------------------------------------------------------------------------
# models and references


def model_hash(model: str | Path | nn.Module) -> str:
    """Content hash of a model: its weights (folder: config + weight files; module: tensors)."""
    if isinstance(model, nn.Module):
        return state_dict_hash(model)
    p = Path(model)
    if not p.is_dir():
        return bytes_hash(str(model).encode())  # a hub id: its name is the best key we have
    files = sorted(
        f
        for f in p.iterdir()
        if f.is_file() and (f.name == "config.json" or f.suffix in (".safetensors", ".bin"))
    )
    if not files:
        raise FileNotFoundError(f"{p}: no config.json / weight files; not a model folder")
    return bytes_hash("".join(f"{f.name}:{file_hash(f)};" for f in files).encode())


def _as_model(m: str | Path | nn.Module, device: str) -> nn.Module:
    if isinstance(m, nn.Module):
        return m
    from magic_unlearn.models import load_model, resolve_device

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
    summaries = {}
    general0 = None
    for name, e in curves["attacks"].items():
        if "skipped" in e or not e.get("points"):
            continue
        b = base.get(name, {}).get("points") if name in base else None
        f = filt.get(name, {}).get("points") if name in filt else None
        probe = e.get("x_label") == "layer"
        base_acc = None
        if b:
            base_acc = b[-1]["hazard_acc"] if probe else b[0]["hazard_acc"]
        summaries[name] = summarize_attack(
            name,
            e["points"],
            suite.verdict,
            base_acc=base_acc,
            filtered_points=f,
            chance=chance,
            x_label=e.get("x_label", "step"),
            in_verdict=bool(e.get("in_verdict", True)),
        )
        if general0 is None and not probe:
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
    from magic_unlearn.tamper.evaluator import build_context

    t0 = time.time()
    suite_cfg = load_suite(suite, config, overrides)
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite)")
    wobj = _load_world(world)
    if tokenizer is None:
        tokenizer = _tokenizer_for(model, wobj)
    ctx = build_context(
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
                print(f"[tamper] warning: {warnings[-1]}", flush=True)
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
            label=role,
        )
    m = _as_model(model, device)
    attacks = run_suite(m, suite_cfg, ctx, original=base_model, label="model")
    curves = {
        "version": CURVES_VERSION,
        "suite": suite_cfg.name,
        "model": str(model) if not isinstance(model, nn.Module) else type(model).__name__,
        "model_hash": mhash(model),
        "eval": to_dict(suite_cfg.eval),
        "chance": ctx.chance,
        "attacks": attacks,
        "reference": ref_curves,
        "warnings": warnings,
    }
    verdict = verdict_from_curves(curves, suite_cfg)
    result = TamperResult(curves=curves, verdict=verdict, out=None)
    if not quiet:
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
    from magic_unlearn.io import write_manifest

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
            )
        # ablate/probe are all evaluation; the overhead that matters is in fine-tuning attacks
        ft = [e for e in curves["attacks"].values() if e.get("kind") == "finetune"]
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


def _load_world(world: Any) -> Any:
    if world is None or not isinstance(world, (str, Path)):
        return world
    from magic_unlearn.world import World

    return World.load(world)


def _tokenizer_for(model: Any, world: Any) -> Any:
    if world is not None and getattr(world, "tokenizer", None) is not None:
        return world.tokenizer
    if isinstance(model, (str, Path)):
        from magic_unlearn.models import load_tokenizer

        return load_tokenizer(model)
    raise ValueError("tamper: pass tokenizer= (or world=) when the model is a loaded module")
