"""Multiple-choice tasks as data: question lists, prompt descriptions, few-shot pools.

A question is ``{"question": str, "choices": [4 str], "answer": int 0-3, "subject": str}``
(extra keys are kept). Loaders read the world question sets, MMLU, WMDP-bio and WMDP-bio-robust
from local files (the layout of ``../shared/benchmarks``) or from the Hugging Face hub through the
optional ``datasets`` package, and any local JSON / JSONL / CSV / Parquet file in that schema.
Every record is validated; a bad one raises ``ValueError`` naming the file, line and field.

The descriptions copy lm-evaluation-harness's task YAMLs (``lm_eval/tasks/mmlu/default``,
``lm_eval/tasks/mmlu/continuation``, ``lm_eval/tasks/wmdp``).
"""

from __future__ import annotations

import csv
import json
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic_unlearn.world import World

LETTERS = ("A", "B", "C", "D")
NUM_CHOICES = 4

# lm-eval mmlu/default and wmdp: "The following are multiple choice questions (with answers) ..."
LETTER_DESCRIPTION = (
    "The following are multiple choice questions (with answers) about {subject}.\n\n"
)
# lm-eval mmlu/continuation (the cloze variant)
CLOZE_DESCRIPTION = "The following are questions (with answers) about {subject}.\n\n"
FORMATS = ("letter", "cloze")

MMLU_SUBJECTS = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)

# The six topic configs of the hub dataset EleutherAI/wmdp_bio_robust_mcqa (split "robust").
WMDP_BIO_ROBUST_CONFIGS = (
    "bioweapons_and_bioterrorism",
    "dual_use_virology",
    "enhanced_potential_pandemic_pathogens",
    "expanding_access_to_threat_vectors",
    "reverse_genetics_and_easy_editing",
    "viral_vector_research",
)

WORLD_TASKS = ("hazard_qa", "general_qa")
BENCHMARK_TASKS = ("wmdp_bio", "wmdp_bio_robust", "mmlu")
TASK_NAMES = WORLD_TASKS + BENCHMARK_TASKS

_QUESTION_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Task:
    """A multiple-choice task: questions plus how to prompt them.

    Attributes:
        name: task name (``mmlu``, ``hazard_qa``, a file stem, ...).
        questions: validated question dicts.
        descriptions: per format, a prompt prefix template; ``{subject}`` is replaced by the
            question's subject with underscores as spaces (lm-eval's ``description``).
        default_fmt: the format ``evaluate`` uses when none is given.
        fewshot_pool: examples for k-shot prompts (MMLU: the dev split); the first k of the
            question's subject are used, as lm-eval's ``first_n`` sampler does.
        num_fewshot: k, the number of solved examples put before each question.
        prepend_bos: put the tokenizer's BOS token before every prompt (world models are
            trained on ``[BOS] text`` rows). lm-eval does not, so benchmark tasks leave it off.
        source: where the questions came from (for reports).
    """

    name: str
    questions: list[dict[str, Any]]
    descriptions: dict[str, str] = field(
        default_factory=lambda: {"letter": LETTER_DESCRIPTION, "cloze": CLOZE_DESCRIPTION}
    )
    default_fmt: str = "letter"
    fewshot_pool: list[dict[str, Any]] = field(default_factory=list)
    num_fewshot: int = 0
    prepend_bos: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def subjects(self) -> list[str]:
        """Subjects in order of first appearance."""
        return list(dict.fromkeys(q["subject"] for q in self.questions))

    def description(self, fmt: str, subject: str) -> str:
        """The description prefix for one question's subject."""
        tmpl = self.descriptions.get(fmt, "")
        # str.replace, not str.format: question subjects may hold braces.
        return tmpl.replace("{subject}", subject.replace("_", " "))

    def fewshot_examples(self, subject: str) -> list[dict[str, Any]]:
        """The first ``num_fewshot`` pool examples of ``subject`` (lm-eval's first_n sampler)."""
        if self.num_fewshot <= 0:
            return []
        same = [q for q in self.fewshot_pool if q["subject"] == subject]
        if len(same) < self.num_fewshot:
            raise ValueError(
                f"task {self.name}: {self.num_fewshot}-shot needs {self.num_fewshot} few-shot "
                f"examples of subject '{subject}', the pool has {len(same)}; lower --num-fewshot"
            )
        return same[: self.num_fewshot]


# ------------------------------------------------------------------------------------------
# validation and file readers


def validate_question(rec: Any, where: str, default_subject: str = "default") -> dict[str, Any]:
    """Check one record against the MCQ schema and return a clean copy.

    Args:
        rec: the raw record.
        where: ``file:line`` (or similar) used in error messages.
        default_subject: subject used when the record has none.

    Raises:
        ValueError: naming ``where`` and the offending field.
    """
    if not isinstance(rec, dict):
        raise ValueError(
            f"{where}: expected an object with fields question, choices, answer; "
            f"got {type(rec).__name__}"
        )
    for f in ("question", "choices", "answer"):
        if f not in rec:
            raise ValueError(
                f"{where}: missing field '{f}' (each question needs 'question', "
                f"'choices' (4 strings) and 'answer' (integer 0-3))"
            )
    if not isinstance(rec["question"], str):
        raise ValueError(
            f"{where}: field 'question' must be a string, got {type(rec['question']).__name__}"
        )
    choices = rec["choices"]
    if hasattr(choices, "tolist"):  # numpy arrays from Parquet
        choices = choices.tolist()
    if not isinstance(choices, (list, tuple)):
        raise ValueError(
            f"{where}: field 'choices' must be a list of {NUM_CHOICES} strings, "
            f"got {type(choices).__name__}"
        )
    if len(choices) != NUM_CHOICES:
        raise ValueError(
            f"{where}: field 'choices' has {len(choices)} entries, expected {NUM_CHOICES}"
        )
    for i, c in enumerate(choices):
        if not isinstance(c, str):
            raise ValueError(
                f"{where}: field 'choices' entry {i} must be a string, got {type(c).__name__}"
            )
    ans = rec["answer"]
    if isinstance(ans, bool) or not isinstance(ans, numbers.Integral):
        raise ValueError(
            f"{where}: field 'answer' must be an integer 0-{NUM_CHOICES - 1} "
            f"(the index of the correct choice), got {ans!r}"
        )
    if not 0 <= int(ans) < NUM_CHOICES:
        raise ValueError(
            f"{where}: field 'answer' is {int(ans)}, expected an integer in 0..{NUM_CHOICES - 1}"
        )
    subject = rec.get("subject", default_subject)
    if subject is None:
        subject = default_subject
    if not isinstance(subject, str):
        raise ValueError(f"{where}: field 'subject' must be a string, got {type(subject).__name__}")
    out = dict(rec)
    out.update(question=rec["question"], choices=list(choices), answer=int(ans), subject=subject)
    return out


def validate_questions(
    records: list[Any], source: str = "<questions>", default_subject: str = "default"
) -> list[dict[str, Any]]:
    """Validate a list of records; positions in errors are 1-based record numbers."""
    return [
        validate_question(r, f"{source}: record {i}", default_subject)
        for i, r in enumerate(records, 1)
    ]


def _letter_or_int(v: str, where: str) -> int:
    s = v.strip()
    if s.upper() in LETTERS:
        return LETTERS.index(s.upper())
    try:
        return int(s)
    except ValueError:
        raise ValueError(
            f"{where}: field 'answer' must be a letter A-D or an integer 0-3, got {v!r}"
        ) from None


def _read_csv(path: Path, default_subject: str) -> list[dict[str, Any]]:
    """CSV: MMLU layout (no header: question,A,B,C,D,answer-letter) or a header row naming
    ``question``, ``answer`` and either ``choices`` (a JSON list) or ``A..D`` columns."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if (
                header is None
                and reader.line_num == 1
                and {"question", "answer"} <= {c.strip().lower() for c in row}
            ):
                header = [c.strip().lower() for c in row]
                continue
            if header is None:
                if len(row) not in (6, 7):
                    raise ValueError(
                        f"{where}: expected 6 columns question,A,B,C,D,answer (MMLU layout), "
                        f"got {len(row)}; field 'choices' needs exactly {NUM_CHOICES} columns"
                    )
                rec: dict[str, Any] = {
                    "question": row[0],
                    "choices": row[1:5],
                    "answer": _letter_or_int(row[5], where),
                }
                if len(row) == 7:
                    rec["subject"] = row[6]
            else:
                if len(row) != len(header):
                    raise ValueError(
                        f"{where}: {len(row)} columns but the header has {len(header)}"
                    )
                d = dict(zip(header, row, strict=True))
                rec = {k: v for k, v in d.items() if k not in ("a", "b", "c", "d", "choices")}
                if "choices" in d:
                    try:
                        rec["choices"] = json.loads(d["choices"])
                    except json.JSONDecodeError:
                        raise ValueError(
                            f"{where}: field 'choices' must be a JSON list of {NUM_CHOICES} strings"
                        ) from None
                elif all(k in d for k in ("a", "b", "c", "d")):
                    rec["choices"] = [d["a"], d["b"], d["c"], d["d"]]
                if "answer" in d:
                    rec["answer"] = _letter_or_int(d["answer"], where)
            out.append(validate_question(rec, where, default_subject))
    return out


def _json_list_lines(text: str) -> list[int]:
    """The line on which each element of a top-level JSON list starts."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    lines = []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return lines
        lines.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)


def read_questions(path: str | Path, default_subject: str | None = None) -> list[dict[str, Any]]:
    """Read and validate a question file (JSON list, JSONL, CSV or Parquet).

    Args:
        path: the file.
        default_subject: subject for records without one (default: the file stem without an
            MMLU split suffix, see :func:`subject_from_stem`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a record breaks the schema (message names file, line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    subj = default_subject if default_subject is not None else subject_from_stem(path.stem)
    try:
        return _read_questions(path, subj)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8"
        ) from None


def subject_from_stem(stem: str) -> str:
    """A question file's default subject: its stem without an MMLU split suffix
    (``college_biology_test`` -> ``college_biology``, as lm-eval names the subject)."""
    for split in ("_test", "_val", "_validation", "_dev", "_train"):
        if stem.endswith(split) and len(stem) > len(split):
            return stem[: -len(split)]
    return stem


def _read_questions(path: Path, subj: str) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        with open(path, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{ln}: invalid JSON ({e.msg})") from e
                out.append(validate_question(rec, f"{path}:{ln}", subj))
    elif suffix == ".json":
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
        if isinstance(data, dict) and isinstance(data.get("questions"), list):
            data = data["questions"]
            where = [f"{path}: record {i}" for i in range(1, len(data) + 1)]
        elif isinstance(data, list):
            where = [f"{path}:{ln} (record {i})" for i, ln in enumerate(_json_list_lines(text), 1)]
        else:
            raise ValueError(
                f"{path}: expected a JSON list of questions (or an object with a 'questions' list)"
            )
        out = [validate_question(r, w, subj) for r, w in zip(data, where, strict=True)]
    elif suffix == ".csv":
        out = _read_csv(path, subj)
    elif suffix == ".parquet":
        try:
            import pandas as pd  # optional: Parquet needs pandas + pyarrow
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs pandas and pyarrow (pip install 'magic-unlearn[hf]')"
            ) from e
        rows = pd.read_parquet(path).to_dict("records")
        out = [validate_question(r, f"{path}: row {i}", subj) for i, r in enumerate(rows, 1)]
    else:
        raise ValueError(
            f"{path}: unsupported question file type '{suffix}'; "
            f"use one of {', '.join(_QUESTION_FILE_SUFFIXES)}"
        )
    if not out:
        raise ValueError(f"{path}: no questions found")
    return out


# ------------------------------------------------------------------------------------------
# benchmark roots and loaders


def default_benchmarks_root() -> Path | None:
    """``$MAGIC_UNLEARN_BENCHMARKS``, else ``../shared/benchmarks`` (from the working folder or
    from the repository) if it exists, else None (the loaders then use the hub).

    Raises:
        FileNotFoundError: the variable is set but names no folder (a typo must not quietly
            fall back to the hub).
    """
    env = os.environ.get("MAGIC_UNLEARN_BENCHMARKS")
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(
                f"MAGIC_UNLEARN_BENCHMARKS={env} is not a folder ({Path(env).absolute()}); "
                f"point it at a benchmarks root (mmlu/, wmdp/, wmdp_bio_robust/) or unset it"
            )
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for cand in (
        Path.cwd().parent / "shared" / "benchmarks",
        repo.parent / "shared" / "benchmarks",
    ):
        if cand.is_dir():
            return cand
    return None


def _import_datasets(what: str) -> Any:
    try:  # optional (the `hf` extra), and slow to import
        import datasets
    except ImportError as e:
        raise ImportError(
            f"{what}: no local copy found and loading from the hub needs the `hf` extra "
            f"(pip install 'magic-unlearn[hf]'); or pass --source PATH to local files / set "
            f"MAGIC_UNLEARN_BENCHMARKS to a folder with the layout of ../shared/benchmarks"
        ) from e
    return datasets


def _hub_rows(ds: Any, where: str, subject: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i, r in enumerate(ds, 1):
        rec = dict(r)
        if subject is not None:
            rec["subject"] = subject
        out.append(validate_question(rec, f"{where}: row {i}", subject or "default"))
    return out


def _per_subject_limit(qs: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    if limit is None:
        return qs
    seen: dict[str, int] = {}
    out = []
    for q in qs:
        k = seen.get(q["subject"], 0)
        if k < limit:
            out.append(q)
            seen[q["subject"]] = k + 1
    return out


def _is_hub(source: str | Path | None) -> bool:
    return source is not None and str(source).split(":", 1)[0] in ("hf", "hub")


def load_mmlu(
    source: str | Path | None = None, split: str = "test", subjects: list[str] | None = None
) -> tuple[list[dict], list[dict], str]:
    """MMLU questions of ``split`` plus the dev split (the few-shot pool).

    Args:
        source: an MMLU folder (``{split}/{subject}_{split}.csv``), a benchmarks root holding
            ``mmlu/``, ``hf`` for the hub dataset ``cais/mmlu``, or None (default root, then hub).
        split: ``test``, ``val``/``validation`` or ``dev``.
        subjects: restrict to these subjects (default: all 57).

    Returns:
        (questions, dev pool, source description)
    """
    subjects = list(subjects or MMLU_SUBJECTS)
    bad = sorted(set(subjects) - set(MMLU_SUBJECTS))
    if bad:
        raise ValueError(f"unknown MMLU subject(s) {bad}; valid: {', '.join(MMLU_SUBJECTS)}")
    local_split = {"validation": "val"}.get(split, split)
    if not _is_hub(source):
        root = Path(source) if source is not None else default_benchmarks_root()
        if root is not None and (root / "mmlu").is_dir():
            root = root / "mmlu"
        if root is not None and (root / local_split).is_dir():
            qs: list[dict] = []
            dev: list[dict] = []
            for s in subjects:
                f = root / local_split / f"{s}_{local_split}.csv"
                if not f.exists():
                    raise FileNotFoundError(f"MMLU file {f} is missing (subject '{s}')")
                qs += read_questions(f, default_subject=s)
                fd = root / "dev" / f"{s}_dev.csv"
                if fd.exists():
                    dev += read_questions(fd, default_subject=s)
            return qs, dev, str(root)
        if source is not None:
            raise FileNotFoundError(
                f"{source}: no MMLU layout found (expected "
                f"{local_split}/<subject>_{local_split}.csv)"
            )
    datasets = _import_datasets("mmlu")
    hub_split = {"val": "validation"}.get(split, split)
    qs = _hub_rows(
        datasets.load_dataset("cais/mmlu", "all", split=hub_split), f"cais/mmlu:{hub_split}"
    )
    dev = _hub_rows(datasets.load_dataset("cais/mmlu", "all", split="dev"), "cais/mmlu:dev")
    keep = set(subjects)
    return (
        [q for q in qs if q["subject"] in keep],
        [q for q in dev if q["subject"] in keep],
        "hf:cais/mmlu",
    )


def load_wmdp_bio(source: str | Path | None = None) -> tuple[list[dict], str]:
    """WMDP-bio (1,273 questions): local ``wmdp/wmdp_bio_questions.json`` or hub ``cais/wmdp``."""
    if not _is_hub(source):
        p = Path(source) if source is not None else default_benchmarks_root()
        if p is not None and p.is_dir():
            for cand in (p / "wmdp" / "wmdp_bio_questions.json", p / "wmdp_bio_questions.json"):
                if cand.exists():
                    p = cand
                    break
        if p is not None and p.is_file():
            return read_questions(p, default_subject="biology"), str(p)
        if source is not None:
            raise FileNotFoundError(
                f"{source}: no WMDP-bio question file found (expected wmdp/wmdp_bio_questions.json)"
            )
    datasets = _import_datasets("wmdp_bio")
    ds = datasets.load_dataset("cais/wmdp", "wmdp-bio", split="test")
    return _hub_rows(ds, "cais/wmdp:wmdp-bio", subject="biology"), "hf:cais/wmdp"


def load_wmdp_bio_robust(source: str | Path | None = None) -> tuple[list[dict], str]:
    """WMDP-bio-robust (868 questions in six topics).

    Local: a file with a ``subject`` field, or a folder holding one file per topic config
    (``{config}.jsonl|json|csv|parquet``; the file stem becomes the subject). Hub:
    ``EleutherAI/wmdp_bio_robust_mcqa``, the six topic configs, split ``robust``.
    """
    if not _is_hub(source):
        p = Path(source) if source is not None else None
        if p is None:
            root = default_benchmarks_root()
            if root is not None and (root / "wmdp_bio_robust").is_dir():
                p = root / "wmdp_bio_robust"
        if p is not None and p.is_file():
            return read_questions(p, default_subject="biology"), str(p)
        if p is not None and p.is_dir():
            qs: list[dict] = []
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in _QUESTION_FILE_SUFFIXES)
            if not files:
                raise FileNotFoundError(
                    f"{p}: no question files ({', '.join(_QUESTION_FILE_SUFFIXES)})"
                )
            for f in files:
                qs += read_questions(f, default_subject=f.stem)
            return qs, str(p)
        if p is not None:
            raise FileNotFoundError(f"{source}: no such file or folder")
    datasets = _import_datasets("wmdp_bio_robust")
    qs = []
    for cfg in WMDP_BIO_ROBUST_CONFIGS:
        ds = datasets.load_dataset("EleutherAI/wmdp_bio_robust_mcqa", cfg, split="robust")
        qs += _hub_rows(ds, f"EleutherAI/wmdp_bio_robust_mcqa:{cfg}", subject=cfg)
    return qs, "hf:EleutherAI/wmdp_bio_robust_mcqa"


def load_world_questions(world: Any, name: str) -> tuple[list[dict], str]:
    """A world question set: ``{world}/questions/{name}.jsonl`` or ``World.questions(name)``."""
    if isinstance(world, (str, Path)):
        world_dir = Path(world)
        for suf in _QUESTION_FILE_SUFFIXES:
            f = world_dir / "questions" / f"{name}{suf}"
            if f.exists():
                return read_questions(f, default_subject=name), str(f)
        if not world_dir.exists():
            raise FileNotFoundError(
                f"world folder {world_dir} does not exist "
                f"(build one with `magic-unlearn world build`)"
            )
        world = World.load(world_dir)
    qs = world.questions(name)
    return validate_questions(list(qs), f"world:{name}", default_subject=name), f"world:{name}"


# ------------------------------------------------------------------------------------------
# the task registry


@dataclass(frozen=True)
class TaskRequest:
    """What :func:`load_task` was asked for, as a task's loader sees it.

    Attributes:
        name: the requested name (``mmlu_virology`` for a subtask of ``mmlu``).
        source: local file/folder, ``hf`` for the hub, or None (the loader's default).
        world: a world folder or ``World`` (world question sets).
        split: the split to read (MMLU: ``test``, ``val``, ``dev``).
    """

    name: str
    source: str | Path | None = None
    world: Any = None
    split: str = "test"


# (validated questions, few-shot pool, where they came from)
LoadedQuestions = tuple[list[dict[str, Any]], list[dict[str, Any]], str]


@dataclass(frozen=True)
class TaskSpec:
    """A named task as data: where its questions come from and how to prompt them (what an
    lm-evaluation-harness task YAML says).

    Attributes:
        name: the name ``load_task`` and ``--task`` accept.
        load: ``load(request) -> (questions, fewshot_pool, source)``; questions validated with
            :func:`validate_question` (:func:`read_questions` does it for files).
        descriptions: per format, the prompt prefix (``{subject}`` is filled per question).
        default_fmt: the format ``evaluate`` uses when none is given.
        prepend_bos: put BOS before every prompt (models trained on ``[BOS] text`` rows).
        limit_per_subject: ``limit`` counts per subject (groups such as ``mmlu``, as
            lm-eval's ``--limit``), else over the whole set.
        subtasks: ``<name>_<suffix>`` also resolves to this task (``mmlu_virology``); the
            loader reads the suffix from ``request.name``.
    """

    name: str
    load: Callable[[TaskRequest], LoadedQuestions]
    descriptions: dict[str, str] = field(
        default_factory=lambda: {"letter": LETTER_DESCRIPTION, "cloze": CLOZE_DESCRIPTION}
    )
    default_fmt: str = "letter"
    prepend_bos: bool = False
    limit_per_subject: bool = False
    subtasks: bool = False


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a named task to :data:`TASKS` (``load_task(spec.name)`` then builds it)."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    if spec.default_fmt not in FORMATS:
        raise ValueError(f"task {spec.name!r}: default_fmt must be one of {FORMATS}")
    TASKS[spec.name] = spec
    return spec


def get_task_spec(name: str) -> TaskSpec | None:
    """The registered task ``name`` resolves to (itself, or the group of a subtask)."""
    if name in TASKS:
        return TASKS[name]
    for spec in TASKS.values():
        if spec.subtasks and name.startswith(spec.name + "_"):
            return spec
    return None


def _load_world_set(req: TaskRequest) -> LoadedQuestions:
    w = req.world if req.world is not None else req.source
    if w is None:
        raise ValueError(f"task {req.name} comes from a world: pass world=DIR (CLI: --world DIR)")
    qs, src = load_world_questions(w, req.name)
    return qs, [], src


def _load_mmlu(req: TaskRequest) -> LoadedQuestions:
    subjects = [req.name[len("mmlu_") :]] if req.name.startswith("mmlu_") else None
    return load_mmlu(req.source, split=req.split, subjects=subjects)


def _load_wmdp_bio(req: TaskRequest) -> LoadedQuestions:
    qs, src = load_wmdp_bio(req.source)
    return qs, [], src


def _load_wmdp_bio_robust(req: TaskRequest) -> LoadedQuestions:
    qs, src = load_wmdp_bio_robust(req.source)
    return qs, [], src


_BIOLOGY_DESCRIPTIONS = {
    "letter": LETTER_DESCRIPTION.replace("{subject}", "biology"),
    "cloze": CLOZE_DESCRIPTION.replace("{subject}", "biology"),
}

for _name in WORLD_TASKS:
    # world models learn from [BOS] text rows and have no use for the English preamble in the
    # cloze format; the letter format keeps lm-eval's description line.
    register_task(
        TaskSpec(
            _name,
            _load_world_set,
            descriptions={"letter": LETTER_DESCRIPTION, "cloze": ""},
            default_fmt="cloze",
            prepend_bos=True,
        )
    )
register_task(TaskSpec("wmdp_bio", _load_wmdp_bio, descriptions=_BIOLOGY_DESCRIPTIONS))
register_task(
    TaskSpec(
        "wmdp_bio_robust",
        _load_wmdp_bio_robust,
        descriptions=_BIOLOGY_DESCRIPTIONS,
        limit_per_subject=True,
    )
)
register_task(TaskSpec("mmlu", _load_mmlu, limit_per_subject=True, subtasks=True))


def load_task(
    name: str,
    source: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int = 0,
    world: Any = None,
    split: str = "test",
) -> Task:
    """Build a :class:`Task` by name.

    Args:
        name: a registered task (:data:`TASKS`: ``hazard_qa`` / ``general_qa`` (world),
            ``wmdp_bio``, ``wmdp_bio_robust``, ``mmlu`` or ``mmlu_<subject>``), or the path
            of a question file.
        source: local file/folder for the questions, ``hf`` for the hub, or None for the
            default (``world`` for world tasks; the benchmarks root, then the hub).
        limit: keep the first ``limit`` questions; for the multi-subject groups ``mmlu`` and
            ``wmdp_bio_robust`` the limit is per subject, as lm-eval's ``--limit`` does.
        num_fewshot: k solved examples before each question (MMLU: first k of the dev split of
            the same subject).
        world: a world folder or ``World`` object (for ``hazard_qa`` / ``general_qa``).
        split: MMLU split (``test``, ``val``, ``dev``).
    """
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    spec = get_task_spec(name)
    kw: dict[str, Any] = {}
    if spec is not None:
        qs, pool, src = spec.load(TaskRequest(name, source=source, world=world, split=split))
        if spec.limit_per_subject:
            qs = _per_subject_limit(qs, limit)
        elif limit:
            qs = qs[:limit]
        kw = dict(
            descriptions=dict(spec.descriptions),
            default_fmt=spec.default_fmt,
            prepend_bos=spec.prepend_bos,
        )
    elif Path(name).suffix.lower() in _QUESTION_FILE_SUFFIXES or Path(name).is_file():
        qs, pool, src = read_questions(name), [], str(name)
        qs = qs[:limit] if limit else qs
        name = Path(name).stem
    else:
        raise ValueError(
            f"unknown task {name!r}: use one of {', '.join(TASKS)}, "
            + "".join(f"{n}_<subject>, " for n, t in TASKS.items() if t.subtasks)
            + "or the path of a question file (.jsonl/.json/.csv/.parquet)"
        )
    if source is not None and not _is_hub(source) and name not in WORLD_TASKS and not qs:
        raise ValueError(f"{source}: no questions")
    task = Task(
        name=name, questions=qs, fewshot_pool=pool, num_fewshot=num_fewshot, source=src, **kw
    )
    if num_fewshot:
        for s in task.subjects:  # fail now, not halfway through an evaluation
            task.fewshot_examples(s)
    return task


def as_task(task: Task | list[dict[str, Any]], name: str = "questions") -> Task:
    """A :class:`Task` from a task or a list of question dicts (validated)."""
    if isinstance(task, Task):
        return task
    if not isinstance(task, (list, tuple)):
        raise TypeError(f"expected a Task or a list of question dicts, got {type(task).__name__}")
    return Task(name=name, questions=validate_questions(list(task), f"<{name}>", name))
