"""The CLI's logging switch: status messages on stderr at INFO, -v adds DEBUG, -q keeps WARNING."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from magic_unlearn.cli import app
from magic_unlearn.pipeline import ResultsStore, Stage, StageResult, execute_run, make_spec


@pytest.fixture(autouse=True)
def _restore_package_logger() -> Iterator[None]:
    log = logging.getLogger("magic_unlearn")
    level, handlers = log.level, list(log.handlers)
    yield
    log.setLevel(level)
    log.handlers[:] = handlers


def _eval(ctx, out: Path) -> StageResult:
    return StageResult(summary={"hazard_acc": 0.3, "general_acc": 0.8})


@pytest.fixture
def results(tmp_path: Path) -> Path:
    spec = make_spec({"name": "ga", "label": "GA", "stages": ["eval"]})
    execute_run(spec, tmp_path, {"eval": Stage("eval", _eval)}, store=ResultsStore(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("flags", "info", "debug"),
    [([], True, False), (["-v"], True, True), (["--verbose"], True, True), (["-q"], False, False)],
)
def test_log_level_switch(results: Path, flags: list[str], info: bool, debug: bool) -> None:
    r = CliRunner().invoke(app, [*flags, "report", str(results)])
    assert r.exit_code == 0, r.output
    # the result stays on stdout whatever the level; status lines go to stderr only
    assert r.stdout.strip() == "1 run(s), 0 failed"
    assert ("I magic_unlearn.cli.pipeline: wrote" in r.stderr) == info
    assert (" D magic_unlearn." in r.stderr) == debug
    level = {(): logging.INFO, ("-v",): logging.DEBUG, ("--verbose",): logging.DEBUG}
    assert logging.getLogger("magic_unlearn").level == level.get(tuple(flags), logging.WARNING)


# ------------------------------------------------------------------------------------------
# bad input as a new user gives it (issue #18): one line naming the file / field / fix,
# exit status 2, no traceback unless -v, nothing half-written left behind


def _scores(tmp_path: Path, scores: dict | None = None) -> Path:
    """A small score artifact folder (random scores over a 4 x 6 corpus)."""
    import torch

    from magic_unlearn.attribution import ScoreArtifact
    from magic_unlearn.data import TokenizedCorpus

    ids = torch.arange(24).reshape(4, 6) + 4
    am = torch.ones(4, 6, dtype=torch.long)
    lm = am.float()
    lm[:, 0] = 0
    neg = torch.full((4, 6), -1)
    c = TokenizedCorpus(ids, am, lm, neg, neg.clone(), [f"d{i}" for i in range(4)])
    g = torch.Generator().manual_seed(0)
    scores = scores or {q: torch.randn(4, 6, generator=g) for q in ("hazard_qa", "general_qa")}
    return ScoreArtifact.from_corpus(c, scores, method="magic").save(tmp_path / "scores")


def _fails(args: list[str], *needles: str, env: dict | None = None) -> str:
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code == 2, (args, r.output)
    assert "Traceback" not in r.output, r.output
    err = r.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: "), r.output
    for n in needles:
        assert n in err[-1], (n, err[-1])
    return err[-1]


def test_edited_truncated_or_empty_scores_are_one_line_errors(
    tmp_path: Path, word_tokenizer
) -> None:
    import torch

    art = _scores(tmp_path)
    word_tokenizer.save_pretrained(tmp_path / "tok")  # unlearn reads the scores after it
    f = art / "scores.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated
    for args in (
        ["analyze", "--scores", str(art), "--out", str(tmp_path / "an")],
        ["unlearn", "--method", "ga", "--model", str(tmp_path / "tok"), "--forget", "f.jsonl"]
        + ["--token-weights", str(art), "--out", str(tmp_path / "u")],
    ):
        _fails(args, str(f), "does not match the hash recorded", "re-run `magic-unlearn attribute`")
    assert not (tmp_path / "an").exists() and not (tmp_path / "u").exists()
    # a file edited in place (same length) is caught by the same hash
    f.write_bytes(data[:-4] + b"\x00\x00\x80\x7f")
    _fails(["analyze", "--scores", str(art), "--out", str(tmp_path / "an")], "does not match")
    # an artifact from before the hash was recorded: an unreadable file still gets one line
    meta = json.loads((art / "meta.json").read_text())
    del meta["scores_file_hash"]
    (art / "meta.json").write_text(json.dumps(meta))
    f.write_bytes(b"")
    _fails(
        ["analyze", "--scores", str(art), "--out", str(tmp_path / "an")],
        "is not a readable safetensors file",
    )
    # NaN scores: the message names the artifact
    nan = torch.zeros(4, 6)
    nan[1, 2] = float("nan")
    art2 = _scores(tmp_path / "n", {"hazard_qa": nan, "general_qa": torch.ones(4, 6)})
    _fails(["analyze", "--scores", str(art2), "--out", str(tmp_path / "an")], str(art2), "NaN")


def test_attribute_validates_the_trajectory_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "scores"
    for bad, field in (("lr=nan", "lr=nan"), ("lr=-1", "lr=-1"), ("betas=[0.9, 1.5]", "betas")):
        _fails(
            ["attribute", "--model", "m", "--corpus", "c.jsonl", "--query", "q.jsonl"]
            + ["--set", bad, "--out", str(out)],
            f"TrajectoryConfig.{field}",
            "--set",
        )
    assert list(tmp_path.iterdir()) == []  # no output, no .magic-work folder


def test_missing_model_is_named_without_minutes_of_retries(monkeypatch) -> None:
    """A name that is no folder is looked up on the hub once: offline, or unknown there, the
    error names the model (the lookup is faked: tests have no network)."""
    import huggingface_hub as hf
    from huggingface_hub.errors import RepositoryNotFoundError

    from magic_unlearn import models

    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)

    def offline(*a, **k):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(hf, "model_info", offline)
    monkeypatch.setattr(hf, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(
        OSError, match="model 'does-not-exist-model': no such local folder .* hub is unreachable"
    ):
        models.load_model("does-not-exist-model")
    monkeypatch.setattr(hf, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    assert models._hub_kwargs("model", "org/cached", None) == {"local_files_only": True}

    class _Resp:
        status_code, headers, url = 404, {}, "https://huggingface.co/x"
        request = None

    def missing(*a, **k):
        raise RepositoryNotFoundError("404 Client Error", response=_Resp())  # type: ignore[arg-type]

    monkeypatch.setattr(hf, "model_info", missing)
    with pytest.raises(
        OSError, match="tokenizer 'org/typo': no such local folder .* no such model"
    ):
        models.load_tokenizer("org/typo")


def test_device_and_benchmark_root_errors(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        _fails(
            ["demo", "--preset", "micro", "--device", "cuda", "--out", str(tmp_path / "d")],
            "no usable CUDA device",
            "--device cpu",
        )
        assert not (tmp_path / "d").exists()
    typo = tmp_path / "benchmakrs"
    _fails(
        ["eval", "--model", "m", "--task", "mmlu"],
        "MAGIC_UNLEARN_BENCHMARKS=",
        str(typo),
        env={"MAGIC_UNLEARN_BENCHMARKS": str(typo)},
    )


def test_question_file_encoding_and_mmlu_subject(tmp_path: Path) -> None:
    from magic_unlearn.evaluation import load_task

    latin = tmp_path / "q.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9?", "choices": ["a", "b", "c", "d"], "answer": 0}\n')
    _fails(["eval", "--model", "m", "--task", str(latin)], str(latin), "not UTF-8")
    # an MMLU CSV passed by path: subject from the stem without the split, as lm-eval says it
    csv = tmp_path / "college_biology_test.csv"
    csv.write_text("What is a cell?,a,b,c,d,A\n")
    task = load_task(str(csv))
    assert task.questions[0]["subject"] == "college_biology"
    assert task.description("letter", "college_biology").endswith("about college biology.\n\n")


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["-v", "analyze", "--scores", str(tmp_path / "x"), "--out", "o"])
    assert r.exit_code == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: score artifact folder")


def test_help_shows_no_bool_metavars() -> None:
    for cmd in (["eval"], ["attribute"], ["unlearn"], ["demo"], ["tamper"]):
        r = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "140"})
        assert r.exit_code == 0 and "<bool>" not in r.output, r.output


def test_cli_imports_with_a_typer_that_lacks_the_help_hook() -> None:
    """Older Typer versions (the GPU image's) have no ``TyperOption.display_type_rich``: the CLI
    must still import and run (it broke every command there once)."""
    import subprocess
    import sys

    code = (
        "import typer.core as c\n"
        "if hasattr(c.TyperOption, 'display_type_rich'):\n"
        "    del c.TyperOption.display_type_rich\n"
        "from typer.testing import CliRunner\n"
        "from magic_unlearn.cli import app\n"
        "r = CliRunner().invoke(app, ['unlearn', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
