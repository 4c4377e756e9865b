"""The attribute stage's entry points: build_measurements (one rule for the CLI, the pipeline and
LDS), AttributionJob validation and the method table."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from magic_unlearn.attribution import METHODS, AttributionJob, build_measurements
from magic_unlearn.attribution.measurements import queries_info
from magic_unlearn.attribution.run import _RUNNERS, corpus_source

QS = [
    {
        "question": "the red fox is in the",
        "choices": ["host", "route", "tissue", "gene"],
        "answer": i % 4,
        "subject": "bio",
    }
    for i in range(3)
]


@pytest.fixture
def qfile(tmp_path: Path) -> Path:
    p = tmp_path / "qs.jsonl"
    p.write_text("".join(json.dumps(q) + "\n" for q in QS))
    return p


def test_every_method_has_one_runner() -> None:
    assert set(_RUNNERS) == set(METHODS)


def test_measurement_format_defaults(word_tokenizer, qfile: Path, tmp_path: Path) -> None:
    """fmt: explicit > recorded > the task's own (letter for files, cloze for world sets)."""
    (tmp_path / "w" / "questions").mkdir(parents=True)
    (tmp_path / "w" / "questions" / "hazard_qa.jsonl").write_text(qfile.read_text())
    m = build_measurements(word_tokenizer, [str(qfile), "hazard_qa"], world=tmp_path / "w")
    assert m[str(qfile)].batch.fmt == "letter" and m["hazard_qa"].batch.fmt == "cloze"
    m = build_measurements(
        word_tokenizer, [str(qfile), "hazard_qa"], world=tmp_path / "w", fmt="letter"
    )
    assert {x.batch.fmt for x in m.values()} == {"letter"}
    # rebuilt as a score artifact recorded it: the stem names the query, its format is kept
    rec = {"qs": {"task": str(qfile), "fmt": "cloze", "n_questions": 3}}
    m = build_measurements(word_tokenizer, [str(qfile)], recorded=rec)
    assert list(m) == ["qs"] and m["qs"].batch.fmt == "cloze" and len(m["qs"]) == 3
    assert queries_info(m)["qs"]["fmt"] == "cloze"
    m = build_measurements(word_tokenizer, [str(qfile)], recorded=rec, fmt="letter")
    assert m["qs"].batch.fmt == "letter"
    with pytest.raises(ValueError, match="scored 2 questions"):
        build_measurements(word_tokenizer, [str(qfile)], recorded={"qs": {"n_questions": 2}})


def test_measurement_length_is_the_models_context(word_tokenizer, qfile: Path) -> None:
    """Prompts are left-truncated to the model's context window, as ``evaluate`` does."""
    full = build_measurements(word_tokenizer, [str(qfile)], fmt="cloze")[str(qfile)]
    assert full.batch.input_ids.shape[1] > 5
    short = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=5))
    cut = build_measurements(word_tokenizer, [str(qfile)], fmt="cloze", model=short)[str(qfile)]
    assert cut.batch.input_ids.shape[1] == 5
    # the kept tokens are the last ones: the answer stays scored
    assert int(cut.batch.target_mask.sum()) == int(full.batch.target_mask.sum())


def test_job_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="attribution method 'tracin'"):
        AttributionJob(model="m", corpus="c", queries=["q"], method="tracin")
    with pytest.raises(ValueError, match="needs the model"):
        AttributionJob(model=None, corpus="c", queries=["q"], method="magic")
    with pytest.raises(ValueError, match="at least one query"):
        AttributionJob(model="m", corpus="c", queries=[])
    with pytest.raises(ValueError, match="per="):
        AttributionJob(model="m", corpus="c", queries=["q"], per="doc")
    job = AttributionJob(
        model=None, corpus="forget", queries=["q"], method="random", trajectory={"steps": 3}
    )
    assert job.trajectory.steps == 3
    assert corpus_source("forget", tmp_path) == f"{tmp_path}:forget"
    assert corpus_source("forget", None) == "forget"
