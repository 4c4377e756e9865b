"""Top-level unlearning: config -> HF model folder + metrics.json + config.yaml + manifest.json.

``unlearn(cfg, out)`` loads the model and corpora, turns score artifacts into per-token weights
(``weights.py``), optionally edits representations (``edit.py``), runs the main method through
``train_loop`` and an optional stabilisation phase, evaluates chosen MCQ tasks, and writes the
result atomically. Named recipes (``RECIPES``) preset the seed's attribution configurations.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.checkpoint import CheckpointMismatchError, stale_checkpoints
from magic_unlearn.config import (
    ConfigError,
    apply_overrides,
    config_hash,
    deep_merge,
    from_dict,
    read_yaml_mapping,
    save_config,
    to_dict,
)
from magic_unlearn.data import TokenizedCorpus, load_corpus, tokenize_corpus, world_of
from magic_unlearn.evaluation import evaluate, load_task
from magic_unlearn.io import atomic_dir, atomic_write_json, file_hash, read_json, write_manifest
from magic_unlearn.models import load_model, load_tokenizer, quiet_hf_progress
from magic_unlearn.pretrain import VARIANTS, PretrainConfig, pretrain, pretrain_snapshot
from magic_unlearn.unlearn.edit import find_directions, remove_directions
from magic_unlearn.unlearn.loop import LoopConfig, LoopResult, full_state_dict, train_loop
from magic_unlearn.unlearn.masks import MaskConfig, corpus_mask
from magic_unlearn.unlearn.methods import METHODS, Distill, get_method, perturb_toward_init
from magic_unlearn.unlearn.methods.tensors import frozen_copy, layer_indices
from magic_unlearn.unlearn.weights import (
    SEED_CONFIGS,
    WeightConfig,
    curriculum_order,
    keyword_mask,
    load_score_pair,
    transform_scores,
)
from magic_unlearn.world import World

logger = logging.getLogger(__name__)


@dataclass
class PhaseConfig:
    """A second (stabilisation) phase, e.g. SFT on general-teaching forget tokens (approach 3).

    ``steps = 0`` disables it. ``weights`` selects the forget-corpus tokens it trains on (needs
    score artifacts); the retain corpus is added when present.
    """

    steps: int = 0
    method: str = "sft"
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None  # None: the main loop's lr
    weights: WeightConfig = field(default_factory=lambda: WeightConfig(select="general_only"))


@dataclass
class EditConfig:
    """Representation editing (approach 4); see :mod:`magic_unlearn.unlearn.edit`.

    With ``enabled``, directions are estimated on the forget corpus from hazard-teaching tokens
    (``hazard``) vs general-teaching tokens (``general``) and removed by weight projection
    before the main method runs (use method ``none`` for an edit only). With method
    ``dir_ablate`` the directions are handed to the trained ablation instead of projected.
    """

    enabled: bool = False
    method: str = "diffmean"  # diffmean | pca
    layers: list[int] | None = None  # default: all decoder layers
    k: int = 1
    keep_general: int = 0
    mode: str = "all"  # all | layer
    hazard: WeightConfig = field(
        default_factory=lambda: WeightConfig(select="hazard_only", top_frac=0.2)
    )
    general: WeightConfig = field(
        default_factory=lambda: WeightConfig(select="general_only", top_frac=0.2)
    )


@dataclass
class UndoConfig:
    """UNDO (Lee et al. 2025, "Distillation Robustifies Unlearning"), run after the main (and
    stabilisation) phase: the unlearned model becomes a frozen teacher, the model is moved toward
    a fresh initialisation, ``theta <- (1 - alpha) theta + alpha theta_init``, and trained for
    ``steps`` to match the teacher's outputs (KL) on ``data``. ``steps = 0`` disables it.

    Attributes:
        alpha: perturbation toward the fresh initialisation, in [0, 1].
        steps: distillation steps.
        lr: distillation learning rate (None: the main loop's).
        batch_size: distillation rows per step (None: the main loop's).
        warmup_steps: linear warmup of the distillation lr.
        data: distillation corpus (a ``load_corpus`` source, e.g. ``WORLD:pretrain``); None:
            the retain corpus.
        data_limit: first N documents of ``data``.
        init_seed: seed of the fresh initialisation.
        mask: tokens dropped from the distillation data (the attribution-guided UNDO: e.g.
            MAGIC's hazard-teaching tokens; ``masks.MaskConfig``); None keeps every token.
    """

    alpha: float = 0.5
    steps: int = 0
    lr: float | None = None
    batch_size: int | None = None
    warmup_steps: int = 0
    data: str | None = None
    data_limit: int | None = None
    init_seed: int = 0
    mask: MaskConfig | None = None


@dataclass
class RetrainConfig:
    """Token-level filtering and retraining (Rathi & Radford 2026): pretrain the world's model
    again with the masked tokens' loss weight at 0 (``masks.MaskConfig``), from scratch or, the
    cheaper variant, continuing the original run from its step ``from_step``. The retrained
    model then goes through the main method (usually ``none``). Cached per world like the base
    model (``<world>/models``).

    Attributes:
        enabled: retrain instead of starting from ``model``.
        world: the world folder (None: the forget corpus's).
        variant: the pretraining run redone (``base``: the corpus with hazard documents).
        pretrain: ``PretrainConfig`` fields replacing those the model was trained with (its
            ``config.yaml``; else the tiny preset).
        from_step: 0 retrains from scratch; k > 0 continues the original run's snapshot at
            step k with the mask (steps before k saw every token).
        mask: the masked tokens of the variant's corpus.
    """

    enabled: bool = False
    world: str | None = None
    variant: str = "base"
    pretrain: dict[str, Any] = field(default_factory=dict)
    from_step: int = 0
    mask: MaskConfig = field(default_factory=MaskConfig)


@dataclass
class UnlearnConfig:
    """Everything one ``magic-unlearn unlearn`` run needs (saved as ``config.yaml``).

    Attributes:
        model / tokenizer / dtype: what to unlearn (tokenizer defaults to the model's).
        forget / retain: corpus sources for :func:`magic_unlearn.data.load_corpus`
            (``WORLD_DIR:forget``, a JSONL/Parquet/JSON file with ``text``, or ``hf:owner/name``).
        method / method_kwargs: a registered method and its arguments (plus ``l2sp``,
            ``retain_kl``, ``retain_nll`` regulariser coefficients); ``none`` = no training.
            There is no default method: a run names one (``--method``, a recipe or the YAML).
        token_weights: one or two score artifact folders (hazard[, general]) -> forget weights
            through ``weights`` (:class:`WeightConfig`).
        weights: the score -> weight transform. None (the default): with ``token_weights``,
            the method's own default (``Method.default_weights``: ``hazard_teach`` for the
            unlearning methods, i.e. weight each hazard proponent by how much it teaches
            hazard; ``sft`` has none and needs this set), without them every forget token
            weighs 1. The resolved transform is saved in ``config.yaml``.
        retain_weights: train the retain term on the *forget* corpus tokens this selects
            (approach 5: general-teaching tokens) instead of a retain corpus.
        select_examples: keep only forget rows with a nonzero weight (approach 2, example level).
        curriculum: order forget rows from most purely hazard to most mixed (approach 6).
        keywords: regex blocklist; forget weights are multiplied by its mask.
        eval_tasks: MCQ tasks evaluated before, every ``loop.eval_every`` steps and at the end.
        undo: UNDO's perturb-and-distill phase after the main one (:class:`UndoConfig`).
        retrain: token-level filtering: retrain the world model with a token mask instead of
            starting from ``model`` (:class:`RetrainConfig`).
    """

    model: str = ""
    tokenizer: str | None = None
    dtype: str = "float32"
    forget: str = ""
    retain: str | None = None
    text_field: str = "text"
    max_length: int | None = None
    forget_limit: int | None = None
    retain_limit: int | None = None
    method: str = ""
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    token_weights: list[str] = field(default_factory=list)
    hazard_query: str | None = None
    general_query: str | None = None
    weights: WeightConfig | None = None
    retain_weights: WeightConfig | None = None
    select_examples: bool = False
    curriculum: bool = False
    keywords: list[str] | None = None
    keyword_level: str = "token"
    keyword_invert: bool = False
    loop: LoopConfig = field(default_factory=LoopConfig)
    stabilise: PhaseConfig = field(default_factory=PhaseConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    undo: UndoConfig = field(default_factory=UndoConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    eval_tasks: list[str] = field(default_factory=list)
    eval_world: str | None = None
    eval_fmt: str | None = None
    eval_limit: int | None = None
    eval_batch_size: int = 32
    eval_before: bool = True
    recipe: str | None = None


_HAZARD_TEACH = {
    "select": "hazard_proponent",
    "value": "teach",
    "normalize": "mean_abs",
    "clip": [0.0, 5.0],
}
# name -> UnlearnConfig fields (merged under the user's YAML and --set overrides)
RECIPES: dict[str, dict[str, Any]] = {
    # the seed's earlier attribution experiments (SFT with score-derived token weights)
    "value_weighted": {"method": "sft", "weights": {"value": "score", "normalize": "mean_abs"}},
    "sign_only": {"method": "sft", "weights": {"value": "sign"}},
    "detractor_sft": {"method": "sft", "weights": {"select": "hazard_detractor"}},
    "proponent_sft": {"method": "sft", "weights": {"select": "hazard_proponent"}},
    "selective": {"method": "sft", "weights": {"select": "selective"}},
    "compatible": {"method": "sft", "weights": {"select": "compatible"}},
    # the six attribution-guided approaches
    "weighted_rr": {"method": "rr", "weights": _HAZARD_TEACH},  # 1
    "weighted_orth_cb": {"method": "orth_cb", "weights": _HAZARD_TEACH},  # 1
    "selected_forget": {
        "select_examples": True,  # 2 (any method)
        "weights": {
            "select": "hazard_proponent",
            "level": "example",
            "aggregate": "sum",
            "top_frac": 0.25,
        },
    },
    "two_phase": {
        "method": "ga",
        "weights": {"select": "hazard_only", "top_frac": 0.2},  # 3
        "stabilise": {"steps": 50, "method": "sft", "weights": {"select": "general_only"}},
    },
    "rep_edit": {"method": "none", "edit": {"enabled": True}},  # 4 (projection)
    "rep_edit_trained": {"method": "dir_ablate", "edit": {"enabled": True}},  # 4 (trained)
    "ga_orth_general": {
        "method": "ga_orth",
        "weights": _HAZARD_TEACH,  # 5
        "retain_weights": {"select": "general_only"},
    },
    "curriculum": {"curriculum": True},  # 6 (any method)
    # method families that aim at tamper resistance (issue 13), each with its guided twin
    # UNDO (Lee et al. 2025): unlearn, perturb toward a fresh init, distill on pretraining data;
    # guided: MAGIC's top hazard-teaching tokens dropped from the distillation data
    "undo": {"undo": {"alpha": 0.5, "steps": 200}},
    "undo_guided": {
        "undo": {"alpha": 0.5, "steps": 200, "mask": {"source": "scores", "frac": 0.1}}
    },
    # token-level filtering (Rathi & Radford 2026): retrain with MAGIC's top hazard-teaching
    # tokens masked; the twins set mask.source to random / keyword (same recipe)
    "token_filter": {
        "method": "none",
        "retrain": {"enabled": True, "mask": {"source": "scores", "frac": 0.1}},
    },
    # sharpness-aware unlearning (Fan et al. 2025); weighted: MAGIC hazard-teaching weights
    "sam": {"method": "sam"},
    "weighted_sam": {"method": "sam", "weights": _HAZARD_TEACH},
    # exact-metagradient TAR; weighted: the post-attack loss on hazard-teaching tokens
    "tar": {"method": "tar"},
    "weighted_tar": {"method": "tar", "weights": _HAZARD_TEACH},
}


def load_unlearn_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    recipe: str | None = None,
    **fields: Any,
) -> UnlearnConfig:
    """Build an :class:`UnlearnConfig`: recipe defaults < YAML file < ``fields`` < overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else ("--set" if overrides else "<defaults>")
    data = deep_merge(data, {k: v for k, v in fields.items() if v is not None})
    apply_overrides(data, overrides)
    name = recipe or data.get("recipe")
    if name is not None:
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
        data = deep_merge(RECIPES[name], data)
        data["recipe"] = name
    return from_dict(UnlearnConfig, data, source=source)


def resolve_weights(cfg: UnlearnConfig) -> WeightConfig:
    """The weight transform of a run: ``cfg.weights``, else (with score artifacts) the
    method's default transform (``Method.default_weights``), else all ones.

    Raises:
        ConfigError: score artifacts are given to a method without a default transform.
    """
    if cfg.weights is not None:
        return cfg.weights
    if not cfg.token_weights:
        return WeightConfig()  # no scores: every forget token weighs 1
    cls = METHODS.get(cfg.method)
    name = cls.default_weights if cls is not None else "hazard_teach"  # 'none': edit only
    if name is None:
        raise ConfigError(
            f"method {cfg.method!r} has no default way to turn scores into token weights: "
            f"with --token-weights pass a transform, e.g. --recipe value_weighted (or "
            f"sign_only, detractor_sft, proponent_sft, selective, compatible) or --set "
            f"weights.select=hazard_proponent (WeightConfig fields: select, value, normalize, "
            f"clip, top_frac, ...)"
        )
    return dataclasses.replace(SEED_CONFIGS[name])


def validate_unlearn_config(cfg: UnlearnConfig) -> None:
    """Check what can be checked before loading anything: a known method, a weight transform.

    Raises:
        ConfigError: naming the field and the fix.
    """
    if not cfg.method:
        raise ConfigError(
            "no unlearning method given: pass --method NAME (`magic-unlearn unlearn methods` "
            "lists them; 'none' trains nothing), a --recipe that sets one, or method: in "
            "--config"
        )
    if cfg.method != "none" and cfg.method not in METHODS:
        raise ConfigError(
            f"unknown unlearning method {cfg.method!r}; registered: {sorted(METHODS)} (or 'none')"
        )
    resolve_weights(cfg)


# ---------------------------------------------------------------------------------------------


def make_eval_fn(
    tokenizer: Any,
    tasks: list[str],
    world: str | None = None,
    fmt: str | None = None,
    limit: int | None = None,
    batch_size: int = 32,
) -> Callable[[nn.Module, int], dict[str, float]]:
    """An ``eval_fn(model, step)`` for :func:`train_loop`: ``{task/acc, task/loss}`` per task."""
    loaded = {t: load_task(t, limit=limit, world=world) for t in tasks}

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, task in loaded.items():
            r = evaluate(model, tokenizer, task, fmt=fmt, batch_size=batch_size)
            out[f"{name}/acc"] = float(r.acc)
            out[f"{name}/loss"] = float(r.mean_correct_loss)
        return out

    return eval_fn


@dataclass
class PreparedData:
    """Tokenized corpora and per-token weights ready for :func:`train_loop`."""

    data: dict[str, TokenizedCorpus]
    weights: dict[str, torch.Tensor]
    scored: TokenizedCorpus | None = None  # the full scored forget corpus
    hazard: torch.Tensor | None = None
    general: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def resolve_max_length(cfg: UnlearnConfig, artifacts: list[ScoreArtifact] | None = None) -> int:
    """Row length: ``cfg.max_length`` if set, else the first score artifact's (so token weights
    line up with the rows they scored), else 128.

    Args:
        artifacts: ``cfg.token_weights`` already loaded (else the first is loaded here).
    """
    if cfg.max_length is not None:
        return cfg.max_length
    if cfg.token_weights:
        first = artifacts[0] if artifacts else ScoreArtifact.load(cfg.token_weights[0])
        return int(first.corpus.input_ids.shape[1])
    return 128


def prepare_data(cfg: UnlearnConfig, tokenizer: Any) -> PreparedData:
    """Load and tokenize forget/retain, apply artifacts, keyword masks, selection, curriculum.

    Each score artifact is read once (row length and scores come from the same load).
    """
    if not cfg.forget:
        raise ConfigError(
            "UnlearnConfig.forget is empty: give a forget corpus "
            "(--forget WORLD_DIR:forget, a JSONL file, or hf:owner/name)"
        )
    weights_cfg = resolve_weights(cfg)
    artifacts = [ScoreArtifact.load(d) for d in cfg.token_weights]
    max_length = resolve_max_length(cfg, artifacts)
    docs = load_corpus(cfg.forget, text_field=cfg.text_field, limit=cfg.forget_limit)
    forget = tokenize_corpus(docs, tokenizer, max_length=max_length)
    # an artifact of a run on more than the forget corpus (attribution.mix): its forget rows
    artifacts = [
        a.select_docs(forget.doc_ids) if list(a.meta.get("doc_ids") or []) != forget.doc_ids else a
        for a in artifacts
    ]
    info: dict[str, Any] = {"n_forget_rows": len(forget)}
    w = torch.ones_like(forget.loss_mask)
    hazard = general = None
    if artifacts:
        needs_g = (
            cfg.retain_weights is not None
            or cfg.stabilise.steps > 0
            or cfg.edit.enabled
            or weights_cfg.select in ("hazard_only", "general_only", "selective", "compatible")
        )
        hazard, general, _ = load_score_pair(
            artifacts,
            forget,
            tokenizer,
            cfg.hazard_query,
            cfg.general_query,
            need_general=needs_g,
        )
        w, _ = transform_scores(hazard, forget.loss_mask, general, weights_cfg)
    elif (
        cfg.select_examples
        or cfg.curriculum
        or cfg.retain_weights is not None
        or cfg.stabilise.steps > 0
        or cfg.edit.enabled
    ):
        raise ConfigError(
            "select_examples / curriculum / retain_weights / stabilise / edit need "
            "score artifacts: pass token_weights (--token-weights DIR)"
        )
    if cfg.keywords:
        w = w * keyword_mask(
            docs,
            forget,
            tokenizer,
            cfg.keywords,
            level=cfg.keyword_level,
            invert=cfg.keyword_invert,
        )
    if float((w * forget.loss_mask).abs().sum()) == 0:
        raise ValueError(
            "every forget token has weight 0 after the weight transform and "
            "keyword mask; loosen the selection"
        )
    scored = forget
    rows = torch.arange(len(forget))
    if cfg.select_examples:
        rows = torch.nonzero((w * forget.loss_mask != 0).any(1)).flatten()
    if cfg.curriculum:
        order = curriculum_order(hazard, forget.loss_mask, general, weights_cfg.alpha)
        keep = set(rows.tolist())
        rows = torch.tensor([int(i) for i in order if int(i) in keep], dtype=torch.long)
    if not torch.equal(rows, torch.arange(len(forget))):
        forget, w = forget.subset(rows), w[rows]
    data = {"forget": forget}
    weights = {"forget": w}
    if cfg.retain_weights is not None:
        if cfg.retain:
            raise ConfigError(
                "give either retain (a corpus) or retain_weights (general tokens "
                "of the forget corpus), not both"
            )
        rw, _ = transform_scores(hazard, scored.loss_mask, general, cfg.retain_weights)
        data["retain"], weights["retain"] = scored, rw
    elif cfg.retain:
        rdocs = load_corpus(cfg.retain, text_field=cfg.text_field, limit=cfg.retain_limit)
        data["retain"] = tokenize_corpus(rdocs, tokenizer, max_length=max_length)
    info.update(
        n_forget_rows_used=len(forget),
        n_retain_rows=len(data.get("retain", [])),
        forget_weighted_tokens=int(((w != 0) & (forget.loss_mask > 0)).sum()),
        forget_weight_mean_abs=float(w[forget.loss_mask > 0].abs().mean()),
        forget_weight_frac_negative=float((w[forget.loss_mask > 0] < 0).float().mean()),
    )
    return PreparedData(data, weights, scored, hazard, general, info)


def _is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unlearn(
    cfg: UnlearnConfig, out: str | Path, overwrite: bool = False, progress: bool = True
) -> Path:
    """Run one unlearning job and write its artifact folder.

    Writes ``out/`` (atomically, main rank only): the HF model (LoRA merged) and tokenizer,
    ``metrics.json`` (loss history, evals before/during/after, data and weight statistics),
    ``config.yaml`` (resolved config) and ``manifest.json`` (stage ``unlearn``). Checkpoints for
    resumption live in a sibling ``.{out.name}.ckpt`` folder, removed on success; re-running
    the same command after an interruption resumes.

    Returns:
        ``out``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite)")
    validate_unlearn_config(cfg)
    # the resolved transform goes into config.yaml and the checkpoint fingerprint
    cfg = dataclasses.replace(cfg, weights=resolve_weights(cfg))
    if cfg.token_weights:
        logger.info("token weights from %s: %s", ", ".join(cfg.token_weights), cfg.weights)
    if not cfg.model:
        raise ConfigError("UnlearnConfig.model is empty: give --model PATH_OR_HUB_ID")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    prep = prepare_data(cfg, tokenizer)
    model = load_model(cfg.model, dtype=cfg.dtype, device="cpu")
    method_kwargs = dict(cfg.method_kwargs)
    metrics: dict[str, Any] = {"method": cfg.method, "recipe": cfg.recipe, **prep.info}
    compute = Compute(pretrain_tokens(cfg.model))
    if cfg.retrain.enabled:  # token-level filtering: this run's model is a masked retrain
        model, metrics["retrain"] = retrain_with_mask(cfg, progress)
        compute.add("retrain", metrics["retrain"]["tokens"])

    eval_fn = None
    if cfg.eval_tasks:
        world = cfg.eval_world or world_of(cfg.forget)
        eval_fn = make_eval_fn(
            tokenizer, cfg.eval_tasks, world, cfg.eval_fmt, cfg.eval_limit, cfg.eval_batch_size
        )
        if cfg.eval_before and _is_main():
            model.eval()
            with torch.no_grad():
                metrics["before"] = eval_fn(model, 0)

    if cfg.edit.enabled:
        hw, _ = transform_scores(prep.hazard, prep.scored.loss_mask, prep.general, cfg.edit.hazard)
        gw, _ = transform_scores(prep.hazard, prep.scored.loss_mask, prep.general, cfg.edit.general)
        layers = layer_indices(model, cfg.edit.layers)
        dirs = find_directions(
            model,
            prep.scored,
            hw.clamp(min=0),
            gw.clamp(min=0),
            layers,
            cfg.edit.method,
            cfg.edit.k,
            cfg.edit.keep_general,
        )
        metrics["edit"] = {
            "layers": layers,
            "n_directions": {i: int(d.shape[0]) for i, d in dirs.items()},
        }
        if cfg.method == "dir_ablate":
            method_kwargs["directions"] = dirs
        else:
            remove_directions(model, dirs, cfg.edit.mode)

    ckpt = out.parent / f".{out.name}.ckpt"
    # a checkpoint resumes only into the run that wrote it (the whole resolved config)
    fingerprint = config_hash(cfg)
    stale = stale_checkpoints(ckpt, fingerprint)
    if stale and overwrite:  # --overwrite: start over instead of refusing
        logger.warning("%s: checkpoint of a run with other settings removed (--overwrite)", ckpt)
        shutil.rmtree(ckpt)
    elif stale:
        raise CheckpointMismatchError(
            f"{stale[0]}: an interrupted run with other settings left this checkpoint; resuming "
            f"would mix two runs. Rerun with its settings to resume it, or pass --overwrite "
            f"(overwrite=True) to start over"
        )
    results: list[LoopResult] = []
    phases: list[str] = []
    if cfg.method != "none":
        method = get_method(cfg.method, **method_kwargs)
        res = train_loop(
            model,
            method,
            prep.data,
            _loop_cfg(cfg),
            prep.weights,
            eval_fn,
            out_dir=ckpt / "main",
            progress=progress,
            fingerprint=fingerprint,
        )
        model = res.model
        results.append(res)
        phases.append("main")
        rows = cfg.loop.batch_size * cfg.loop.grad_accum * len(prep.data)
        compute.add("main", res.steps_done * rows * prep.data["forget"].input_ids.shape[1])
    if cfg.stabilise.steps > 0:
        sw, _ = transform_scores(
            prep.hazard, prep.scored.loss_mask, prep.general, cfg.stabilise.weights
        )
        sdata = {"forget": prep.scored}
        sweights = {"forget": sw}
        if "retain" in prep.data and cfg.retain_weights is None:
            sdata["retain"] = prep.data["retain"]
        lcfg = dataclasses.replace(
            cfg.loop, steps=cfg.stabilise.steps, lr=cfg.stabilise.lr or cfg.loop.lr, ordered=None
        )
        res = train_loop(
            model,
            get_method(cfg.stabilise.method, **cfg.stabilise.method_kwargs),
            sdata,
            lcfg,
            sweights,
            eval_fn,
            out_dir=ckpt / "stabilise",
            progress=progress,
            fingerprint=fingerprint,
        )
        model = res.model
        results.append(res)
        phases.append("stabilise")
        rows = lcfg.batch_size * lcfg.grad_accum * len(sdata)
        compute.add("stabilise", res.steps_done * rows * prep.scored.input_ids.shape[1])
    if cfg.undo.steps > 0:
        res, metrics["undo"] = undo_phase(
            cfg, model, tokenizer, prep, eval_fn, ckpt / "undo", progress, fingerprint
        )
        model = res.model
        results.append(res)
        phases.append("undo")
        compute.add("undo", metrics["undo"]["tokens"])
    metrics["compute"] = compute.summary()
    if eval_fn is not None and not results and _is_main():
        model.eval()
        with torch.no_grad():
            metrics["after"] = eval_fn(model, 0)
    for phase, r in zip(phases, results, strict=True):
        metrics.setdefault("phases", []).append(
            {
                "phase": phase,
                "steps": r.steps_done,
                "wall_s": r.wall_s,
                "history": r.history,
                "evals": r.evals,
            }
        )
        if r.evals:
            metrics["after"] = {k: v for k, v in r.evals[-1].items() if k != "step"}
    state = full_state_dict(model)  # FSDP: gather the shards (a collective, on every rank)
    if not _is_main():
        return out
    with atomic_dir(out, overwrite=overwrite) as tmp, quiet_hf_progress():
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "metrics.json", metrics)
        save_config(cfg, tmp / "config.yaml")
        inputs: dict[str, Any] = {
            "model": cfg.model,
            "forget": cfg.forget,
            "forget_hash": prep.data["forget"].content_hash(),
            "retain": cfg.retain,
        }
        if "retain" in prep.data:
            inputs["retain_hash"] = prep.data["retain"].content_hash()
        for i, d in enumerate(cfg.token_weights):
            inputs[f"token_weights_{i}"] = {"path": str(d), "hash": file_hash(d)}
        write_manifest(tmp, "unlearn", inputs=inputs, extra={"method": cfg.method})
    shutil.rmtree(ckpt, ignore_errors=True)
    return out


class Compute:
    """Training tokens (rows x row length, every corpus of a step) per phase, and their sum as
    a fraction of the model's pretraining tokens (UNDO's cost is reported this way)."""

    def __init__(self, pretrain: int | None) -> None:
        self.pretrain = pretrain
        self.tokens: dict[str, int] = {}

    def add(self, phase: str, tokens: int) -> None:
        self.tokens[phase] = self.tokens.get(phase, 0) + int(tokens)

    def summary(self) -> dict[str, Any]:
        total = sum(self.tokens.values())
        return {
            "tokens": dict(self.tokens),
            "total_tokens": total,
            "pretrain_tokens": self.pretrain,
            "frac_of_pretraining": total / self.pretrain if self.pretrain else None,
        }


def _pretrain_config(model: str, fields: dict[str, Any], device: str) -> PretrainConfig:
    """The :class:`PretrainConfig` a world model was trained with (its ``config.yaml``), with
    ``fields`` on top; the tiny preset when the folder has none."""
    p = Path(model) / "config.yaml"
    data = read_yaml_mapping(p) if p.exists() else {}
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    if data and not set(data) <= known:  # not a pretraining config (e.g. an unlearned model)
        raise ConfigError(
            f"{p}: not a pretraining config; retrain needs the world's pretrained model as "
            f"'model' (or give every PretrainConfig field in retrain.pretrain)"
        )
    data = {**data, **fields}
    if device:
        data["device"] = device
    return from_dict(PretrainConfig, data, source=f"{p} + retrain.pretrain")


def pretrain_tokens(model: str) -> int | None:
    """Training tokens (steps x batch x row length) of a world model's pretraining, or None."""
    try:
        pc = _pretrain_config(model, {}, "")
    except (ConfigError, ValueError, OSError):
        return None
    if not (Path(model) / "config.yaml").exists() or pc.steps <= 0:
        return None
    return pc.steps * pc.batch_size * pc.seq_len


def retrain_with_mask(
    cfg: UnlearnConfig, progress: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Token-level filtering: the world's ``retrain.variant`` model pretrained again with the
    mask's tokens at loss weight 0 (from scratch, or from the original run's step
    ``retrain.from_step``); returns the loaded model and what was masked and spent."""
    rc = cfg.retrain
    world_dir = rc.world or world_of(cfg.forget)
    if world_dir is None:
        raise ConfigError(
            "retrain needs the world: set retrain.world (or a WORLD_DIR:forget corpus)"
        )
    pcfg = _pretrain_config(cfg.model, rc.pretrain, cfg.loop.device)
    if rc.from_step < 0 or (pcfg.steps and rc.from_step >= pcfg.steps):
        raise ConfigError(f"retrain.from_step={rc.from_step} must be in [0, {pcfg.steps})")
    world = World.load(world_dir)
    docs = world.corpus(VARIANTS[rc.variant])
    corpus = tokenize_corpus(docs, world.tokenizer, max_length=pcfg.seq_len)
    keep, info = corpus_mask(
        rc.mask,
        docs,
        corpus,
        world.tokenizer,
        scores=cfg.token_weights[0] if cfg.token_weights else None,
        world_keywords=world.hazard_keywords(),
    )
    init = (
        pretrain_snapshot(world_dir, rc.variant, pcfg, rc.from_step, progress=progress)
        if rc.from_step
        else None
    )
    path = pretrain(world_dir, rc.variant, pcfg, progress=progress, token_weights=keep, init=init)
    pm = read_json(Path(path) / "metrics.json")
    steps = pcfg.steps - rc.from_step
    info.update(
        model=str(path),
        from_step=rc.from_step,
        steps=steps,
        tokens=steps * pcfg.batch_size * pcfg.seq_len,
        hazard_qa=pm.get("hazard_qa", {}).get("acc"),
        general_qa=pm.get("general_qa", {}).get("acc"),
    )
    logger.info(
        "retrained %s with %.1f%% of its tokens masked (%s): %s",
        rc.variant,
        100 * info["masked_frac"],
        rc.mask.source,
        path,
    )
    return load_model(str(path), dtype=cfg.dtype, device="cpu"), info


def undo_phase(
    cfg: UnlearnConfig,
    model: nn.Module,
    tokenizer: Any,
    prep: PreparedData,
    eval_fn: Callable[[nn.Module, int], dict[str, float]] | None,
    out_dir: Path,
    progress: bool = True,
    fingerprint: str | None = None,
) -> tuple[LoopResult, dict[str, Any]]:
    """UNDO's perturb-and-distill phase (:class:`UndoConfig`): ``model`` (the unlearned one)
    is the frozen teacher; the model itself is perturbed toward a fresh initialisation and
    trained to match the teacher on the distillation data (every parameter trains)."""
    u = cfg.undo
    source = u.data or cfg.retain
    if not source:
        raise ConfigError(
            "undo needs distillation data: set undo.data (e.g. WORLD_DIR:pretrain) or a retain "
            "corpus"
        )
    max_length = int(prep.data["forget"].input_ids.shape[1])
    docs = load_corpus(source, text_field=cfg.text_field, limit=u.data_limit)
    corpus = tokenize_corpus(docs, tokenizer, max_length=max_length)
    info: dict[str, Any] = {"alpha": u.alpha, "steps": u.steps, "data": source, "rows": len(corpus)}
    weights = None
    if u.mask is not None:
        keep, info["mask"] = corpus_mask(
            u.mask,
            docs,
            corpus,
            tokenizer,
            scores=cfg.token_weights[0] if cfg.token_weights else None,
        )
        weights = {"distill": keep}
    teacher = frozen_copy(model)
    perturb_toward_init(model, u.alpha, seed=u.init_seed)
    lcfg = dataclasses.replace(
        cfg.loop,
        steps=u.steps,
        lr=u.lr if u.lr is not None else cfg.loop.lr,
        batch_size=u.batch_size or cfg.loop.batch_size,
        warmup_steps=u.warmup_steps,
        ordered=None,
        lora=None,  # the perturbation moved every weight: all of them are distilled
        layers=None,
        target_modules=None,
    )
    res = train_loop(
        model,
        Distill(corpus="distill", teacher=teacher),
        {"distill": corpus},
        lcfg,
        weights,
        eval_fn,
        out_dir=out_dir,
        progress=progress,
        fingerprint=fingerprint,
    )
    info["tokens"] = res.steps_done * lcfg.batch_size * lcfg.grad_accum * max_length
    return res, info


def _loop_cfg(cfg: UnlearnConfig) -> LoopConfig:
    lcfg = cfg.loop
    if cfg.curriculum:
        lcfg = dataclasses.replace(lcfg, ordered=sorted(set(lcfg.ordered or []) | {"forget"}))
    return lcfg


__all__ = [
    "UnlearnConfig",
    "PhaseConfig",
    "EditConfig",
    "RetrainConfig",
    "UndoConfig",
    "retrain_with_mask",
    "undo_phase",
    "RECIPES",
    "unlearn",
    "load_unlearn_config",
    "make_eval_fn",
    "resolve_weights",
    "validate_unlearn_config",
    "prepare_data",
    "to_dict",
]
