"""One attribution run from names and paths: the attribute stage's single entry point.

``magic-unlearn attribute`` parses its flags into an :class:`AttributionJob`, the pipeline's
attribute stage builds one from its run config; both call :func:`run_attribution`, which loads
the tokenizer, corpus, model and measurements and runs the chosen method (MAGIC or a baseline,
chosen here and nowhere else).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from magic_unlearn.attribution.artifact import METHODS, PERS, ScoreArtifact
from magic_unlearn.attribution.baselines import (
    KEYWORD_LEVELS,
    grad_similarity,
    keyword_scores,
    random_scores,
)
from magic_unlearn.attribution.compiled import warm_compiler
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.magic import attribute
from magic_unlearn.attribution.measurements import build_measurements
from magic_unlearn.attribution.resume import work_folder
from magic_unlearn.config import from_dict
from magic_unlearn.data import TokenizedCorpus, load_corpus, tokenize_corpus
from magic_unlearn.distributed import distributed_session, world_size
from magic_unlearn.evaluation.measure import Measurement
from magic_unlearn.io import discard_unless_resumable
from magic_unlearn.models import load_model, load_tokenizer, resolve_device
from magic_unlearn.world import World

logger = logging.getLogger(__name__)


@dataclass
class AttributionJob:
    """One attribution run, as plain values (what CLI flags and pipeline sections become).

    Attributes:
        model: HF model folder or hub id of theta_0 (not needed by ``random`` and ``keyword``).
        corpus: the training corpus: a JSONL/JSON/Parquet file, ``WORLD_DIR:name``, ``hf:id``,
            or a corpus name of ``world``.
        queries: measurement tasks (``hazard_qa``, ``general_qa``, ``wmdp_bio``, ``mmlu``, ... or
            question files), one score set each.
        mix: further corpora (same forms as ``corpus``) trained on in the same run, shuffled
            together with ``corpus``; their rows are scored too and kept in the artifact after
            ``corpus``'s (an unlearning run selects its forget rows by document id). E.g.
            ``["pretrain"]``: the filtered model learns the hazard facts inside the attributed
            run (the ``acquire`` regime).
        out: score artifact folder (None: returned, not saved).
        method: ``magic`` | ``grad_sim`` | ``random`` | ``keyword`` (:data:`METHODS`).
        trajectory: the differentiated fine-tuning run (a ``TrajectoryConfig`` or its fields).
        per: ``token`` | ``example``.
        fmt: question format of the measurements; None: the task's own
            (``build_measurements`` documents the defaults).
        limit: first N questions per task.
        source: question source (``load_task``).
        world: world folder (world question sets, corpus names, tokenizer fallback).
        tokenizer: tokenizer folder or hub id; None: the model's, else ``world/tokenizer``.
        device: ``auto`` | ``cpu`` | ``cuda[:i]``.
        seed: seed of the random baseline; None: ``trajectory.seed``.
        keywords: regexes of the ``keyword`` baseline; None: the world's hazard keyword list
            (``World.hazard_keywords``).
        keyword_level: ``token`` | ``sentence`` | ``example`` (``keyword_scores``).
        overwrite: replace an existing ``out``.
        resume: continue an interrupted MAGIC run from its saved reverse-pass state.
        progress: tqdm bars.
    """

    model: str | None
    corpus: str
    queries: list[str]
    mix: list[str] = field(default_factory=list)
    out: Path | None = None
    method: str = "magic"
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    per: str = "token"
    fmt: str | None = None
    limit: int | None = None
    source: str | None = None
    world: Path | None = None
    tokenizer: str | None = None
    device: str = "auto"
    seed: int | None = None
    keywords: list[str] | None = None
    keyword_level: str = "sentence"
    overwrite: bool = False
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"attribution method {self.method!r}: use one of {METHODS}")
        if self.per not in PERS:
            raise ValueError(f"per={self.per!r} is invalid; use one of {PERS}")
        if not self.queries:
            raise ValueError("an attribution job needs at least one query")
        if self.keyword_level not in KEYWORD_LEVELS:
            raise ValueError(
                f"keyword_level={self.keyword_level!r} is invalid; use one of {KEYWORD_LEVELS}"
            )
        if self.method not in ("random", "keyword") and not self.model:
            raise ValueError(
                f"attribution method {self.method!r} needs the model at theta_0 "
                f"(AttributionJob.model: the CLI's --model, the pipeline run field 'model')"
            )
        if isinstance(self.trajectory, dict):
            self.trajectory = from_dict(TrajectoryConfig, self.trajectory, source="trajectory")
        self.queries = [str(q) for q in self.queries]
        self.mix = [str(m) for m in self.mix or []]
        self.out = Path(self.out) if self.out is not None else None
        self.world = Path(self.world) if self.world is not None else None


def resolve_tokenizer(model: str | None, tokenizer: str | None, world: Path | None) -> Any:
    """``tokenizer`` if given, else the model's, else the world's (``world/tokenizer``)."""
    candidates = [tokenizer] if tokenizer else [model] if model else []
    if world is not None and not tokenizer:
        candidates.append(str(Path(world) / "tokenizer"))
    errors = []
    for c in candidates:
        try:
            return load_tokenizer(c)
        except Exception as e:  # noqa: BLE001 - try the next candidate, report all below
            errors.append(f"{c}: {e}")
    raise FileNotFoundError(
        "could not load a tokenizer (pass --tokenizer or --world): " + "; ".join(errors)
    )


def corpus_source(corpus: str, world: Path | None) -> str:
    """``corpus``, or ``WORLD:corpus`` when it names a corpus of ``world`` (not a file)."""
    if world is not None and ":" not in corpus and not Path(corpus).exists():
        return f"{world}:{corpus}"
    return corpus


def job_documents(job: AttributionJob) -> list[dict[str, Any]]:
    """The documents a job scores, in row order (the one place they are loaded: the keyword
    baseline needs their text again, aligned with the rows): the corpus, then each ``mix``.

    Raises:
        ValueError: a document id repeats across the corpora (rows are found by id).
    """
    docs = load_corpus(corpus_source(job.corpus, job.world))
    for m in job.mix:
        docs += load_corpus(corpus_source(m, job.world))
    ids = [str(d["id"]) for d in docs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(
            f"attribution corpus {job.corpus!r} + mix {job.mix}: document ids must be unique "
            f"across the corpora (repeated: {dup}); the artifact's rows are found by id"
        )
    return docs


def _model_and_measurements(
    job: AttributionJob, tokenizer: Any
) -> tuple[nn.Module, dict[str, Measurement]]:
    dev = resolve_device(job.device)
    # eager attention: the engine switches it to its twice-differentiable variant
    model = load_model(
        str(job.model), dtype=job.trajectory.dtype, device=dev, attn_implementation="eager"
    )
    meas = build_measurements(
        tokenizer,
        job.queries,
        world=str(job.world) if job.world is not None else None,
        fmt=job.fmt,
        limit=job.limit,
        source=job.source,
        model=model,
        device=dev,
    )
    return model, meas


def _run_magic(job: AttributionJob, corpus: TokenizedCorpus, tokenizer: Any) -> ScoreArtifact:
    model, meas = _model_and_measurements(job, tokenizer)
    try:
        return attribute(
            model,
            corpus,
            meas,
            job.trajectory,
            per=job.per,
            out=job.out,
            resume=job.resume,
            progress=job.progress,
            tokenizer=tokenizer,
            inplace=True,
            overwrite=job.overwrite,
        )
    except BaseException:
        if job.out is not None:  # the work folder stays only if it holds a state to resume
            discard_unless_resumable(work_folder(Path(job.out)), what="attribution")
        raise


def _run_grad_sim(job: AttributionJob, corpus: TokenizedCorpus, tokenizer: Any) -> ScoreArtifact:
    model, meas = _model_and_measurements(job, tokenizer)
    return grad_similarity(
        model,
        corpus,
        meas,
        job.trajectory,
        per=job.per,
        out=job.out,
        tokenizer=tokenizer,
        progress=job.progress,
        overwrite=job.overwrite,
    )


def _run_random(job: AttributionJob, corpus: TokenizedCorpus, tokenizer: Any) -> ScoreArtifact:
    seed = job.seed if job.seed is not None else job.trajectory.seed
    return random_scores(
        corpus,
        job.queries,
        seed=seed,
        per=job.per,
        out=job.out,
        tokenizer=tokenizer,
        overwrite=job.overwrite,
    )


def _run_keyword(job: AttributionJob, corpus: TokenizedCorpus, tokenizer: Any) -> ScoreArtifact:
    patterns = job.keywords
    if patterns is None:
        if job.world is None:
            raise ValueError(
                "the keyword baseline needs keywords (AttributionJob.keywords) or a world "
                "(its hazard keyword list)"
            )
        patterns = World.load(job.world).hazard_keywords()
    return keyword_scores(
        job_documents(job),
        corpus,
        job.queries,
        patterns,
        level=job.keyword_level,
        tokenizer=tokenizer,
        per=job.per,
        out=job.out,
        overwrite=job.overwrite,
    )


# the one place where an attribution method name is turned into a computation
_RUNNERS: dict[str, Callable[[AttributionJob, TokenizedCorpus, Any], ScoreArtifact]] = {
    "magic": _run_magic,
    "grad_sim": _run_grad_sim,
    "random": _run_random,
    "keyword": _run_keyword,
}


def run_attribution(job: AttributionJob) -> ScoreArtifact:
    """Run one attribution job: load its inputs, run its method, write its artifact.

    Under ``torchrun`` / ``accelerate launch`` every process runs this with the same job: MAGIC
    is sharded over the processes (``sharded.py``) and rank 0 writes ``job.out``.

    Returns:
        The score artifact (saved to ``job.out`` when set).

    Raises:
        FileExistsError: ``job.out`` exists and ``job.overwrite`` is off.
        FileNotFoundError, ValueError, KeyError: an input is missing or invalid.
    """
    if job.out is not None and job.out.exists() and not job.overwrite:
        raise FileExistsError(f"{job.out} already exists; pass --overwrite")
    # under torchrun / accelerate launch: one process per device, MAGIC sharded over them
    with distributed_session(job.device) as dev:
        if world_size() > 1:
            if job.method != "magic":
                raise ValueError(
                    f"attribution method {job.method!r} runs in one process; only magic is "
                    f"sharded over the {world_size()} processes of this launch"
                )
            job = dataclasses.replace(job, device=str(dev))
        return _run(job)


def _run(job: AttributionJob) -> ScoreArtifact:
    if job.method == "magic" and job.device != "cpu" and job.trajectory.compile_attention:
        warm_compiler()  # the compiler's imports, while the data and the model load
    tok = resolve_tokenizer(job.model, job.tokenizer, job.world)
    corpus = tokenize_corpus(job_documents(job), tok, max_length=job.trajectory.max_length)
    logger.info(
        "attribution (%s): %d rows x %d tokens (%s%s), queries %s",
        job.method,
        len(corpus),
        corpus.input_ids.shape[1],
        job.corpus,
        "".join(f" + {m}" for m in job.mix),
        job.queries,
    )
    return _RUNNERS[job.method](job, corpus, tok)


__all__ = [
    "METHODS",
    "AttributionJob",
    "corpus_source",
    "job_documents",
    "resolve_tokenizer",
    "run_attribution",
]
