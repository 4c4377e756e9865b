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


def test_mix_trains_on_both_corpora_and_rows_are_found_by_id(word_tokenizer, tmp_path) -> None:
    """``mix`` corpora join the run (rows after the corpus's); ``select_docs`` takes a corpus's
    rows back by document id, as an unlearning run does with its forget corpus."""
    from magic_unlearn.attribution import ArtifactMismatchError, run_attribution
    from magic_unlearn.data import load_corpus, tokenize_corpus

    word_tokenizer.save_pretrained(tmp_path / "tok")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        "".join(json.dumps({"id": f"a{i}", "text": "the red fox"}) + "\n" for i in range(3))
    )
    b.write_text(
        "".join(json.dumps({"id": f"b{i}", "text": "a blue cat is"}) + "\n" for i in range(4))
    )
    job = dict(
        model=None, corpus=str(a), queries=["q"], method="random", trajectory={"max_length": 8}
    )
    art = run_attribution(AttributionJob(**job, mix=[str(b)], tokenizer=str(tmp_path / "tok")))
    assert art.meta["doc_ids"] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    sub = art.select_docs(["a2", "a0"])
    assert sub.meta["doc_ids"] == ["a2", "a0"] and sub.meta["n_docs"] == 2
    assert (sub.scores["q"][0] == art.scores["q"][2]).all()
    corpus = tokenize_corpus(load_corpus(str(a)), word_tokenizer, max_length=8).subset([2, 0])
    sub.check_compatible(corpus, word_tokenizer)  # the forget rows of an unlearning run
    with pytest.raises(ArtifactMismatchError, match="not scored"):
        art.select_docs(["a0", "zz"])
    with pytest.raises(ValueError, match="unique"):
        run_attribution(AttributionJob(**job, mix=[str(a)], tokenizer=str(tmp_path / "tok")))
