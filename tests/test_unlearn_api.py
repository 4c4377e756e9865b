"""unlearn() / CLI end to end on a tiny model: outputs, recipes, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from magic_unlearn.attribution.artifact import ScoreArtifact
from magic_unlearn.cli import app
from magic_unlearn.config import ConfigError
from magic_unlearn.data import tokenize_corpus
from magic_unlearn.io import read_manifest
from magic_unlearn.models import build_model, load_model
from magic_unlearn.unlearn.api import load_unlearn_config, unlearn

FORGET = [
    "the virus host route tissue gene",
    "a gene of the virus is in the host",
    "the tissue route of alpha virus",
    "beta gene and gamma host",
    "the red fox and the virus",
    "delta virus host in tissue",
]
RETAIN = [
    "the red fox and the blue cat",
    "a green bird with a fish",
    "the dog is in the red",
    "blue fish and green cat",
]
MAXLEN = 16


@pytest.fixture
def setup(tmp_path: Path, word_tokenizer):  # noqa: ANN001, ANN201
    from magic_unlearn.attribution.artifact import ScoreArtifact

    model = build_model(
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        vocab_size=len(word_tokenizer),
        seed=0,
    )
    mdir = tmp_path / "base"
    model.save_pretrained(mdir)
    word_tokenizer.save_pretrained(mdir)
    for name, texts in (("forget", FORGET), ("retain", RETAIN)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"{name}{i}", "text": t}) + "\n")
    docs = [{"id": f"forget{i}", "text": t} for i, t in enumerate(FORGET)]
    c = tokenize_corpus(docs, word_tokenizer, max_length=MAXLEN)
    g = torch.Generator().manual_seed(0)
    scores = {
        "hazard_qa": torch.randn(c.input_ids.shape, generator=g) * c.loss_mask,
        "general_qa": torch.randn(c.input_ids.shape, generator=g) * c.loss_mask,
    }
    art = ScoreArtifact.from_corpus(c, scores, method="random", tokenizer=word_tokenizer)
    art.save(tmp_path / "scores")
    # same document ids, other texts (the texts in reverse order): found by id, refused by hash
    swapped = [{"id": d["id"], "text": e["text"]} for d, e in zip(docs, docs[::-1], strict=True)]
    other = tokenize_corpus(swapped, word_tokenizer, max_length=MAXLEN)
    ScoreArtifact.from_corpus(
        other,
        {"hazard_qa": torch.zeros(other.input_ids.shape)},
        method="random",
        tokenizer=word_tokenizer,
    ).save(tmp_path / "other")
    qs = [
        {"question": "the virus", "choices": ["host", "fox", "cat", "dog"], "answer": 0},
        {"question": "the red", "choices": ["bird", "fox", "gene", "fish"], "answer": 1},
    ]
    with open(tmp_path / "qa.jsonl", "w") as f:
        for q in qs:
            f.write(json.dumps(q) + "\n")
    return tmp_path


def _common(tmp: Path) -> list[str]:
    return [
        "--model",
        str(tmp / "base"),
        "--forget",
        str(tmp / "forget.jsonl"),
        "--set",
        f"max_length={MAXLEN}",
        "--set",
        "loop.batch_size=2",
        "--set",
        "loop.device=cpu",
        "--no-progress",
    ]


def test_cli_graddiff_writes_complete_artifact(setup: Path) -> None:
    out = setup / "out"
    r = CliRunner().invoke(
        app,
        [
            "unlearn",
            "--method",
            "graddiff",
            *_common(setup),
            "--retain",
            str(setup / "retain.jsonl"),
            "--set",
            "loop.steps=4",
            "--set",
            "loop.lr=1e-2",
            "--set",
            f"eval_tasks=[{setup / 'qa.jsonl'}]",
            "--set",
            "loop.eval_every=2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    for f in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "config.yaml",
        "manifest.json",
        "tokenizer.json",
    ):
        assert (out / f).exists(), f
    assert read_manifest(out, "unlearn")["method"] == "graddiff"
    m = json.loads((out / "metrics.json").read_text())
    key = f"{(setup / 'qa.jsonl')}/acc"
    assert key in m["before"] and key in m["after"]
    assert [e["step"] for e in m["phases"][0]["evals"]] == [2, 4]
    assert m["phases"][0]["history"][-1]["step"] == 4
    # the saved model is the trained one
    base = load_model(setup / "base")
    new = load_model(out)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(base.state_dict().values(), new.state_dict().values(), strict=True)
    )
    cfg = load_unlearn_config(out / "config.yaml")
    assert cfg.method == "graddiff" and cfg.loop.steps == 4
    assert not list(setup.glob(".out*"))  # no checkpoint / partial folders left


@pytest.mark.parametrize(
    "recipe",
    ["two_phase", "ga_orth_general", "curriculum", "selected_forget", "rep_edit", "value_weighted"],
)
def test_recipes_run(setup: Path, recipe: str) -> None:
    cfg = load_unlearn_config(
        None,
        [
            f"max_length={MAXLEN}",
            "loop.batch_size=2",
            "loop.steps=2",
            "loop.device=cpu",
            "stabilise.steps=2",
            "edit.layers=[1]",
        ],
        recipe=recipe,
        # curriculum and selected_forget go with any method: they name none
        method="ga" if recipe in ("curriculum", "selected_forget") else None,
        model=str(setup / "base"),
        forget=str(setup / "forget.jsonl"),
        token_weights=[str(setup / "scores")],
    )
    out = unlearn(cfg, setup / recipe, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["recipe"] == recipe
    if recipe == "two_phase":
        assert [p["phase"] for p in m["phases"]] == ["main", "stabilise"]
    if recipe == "selected_forget":
        assert m["n_forget_rows_used"] < m["n_forget_rows"]
    if recipe == "rep_edit":
        assert m["edit"]["n_directions"] == {"1": 1}


def test_method_is_required(setup: Path) -> None:
    """No silent default method: a run without --method (or a recipe / config naming one) is
    refused before anything is loaded (issue #18)."""
    r = CliRunner().invoke(app, ["unlearn", *_common(setup), "--out", str(setup / "m")])
    assert r.exit_code == 2, r.output
    assert "no unlearning method given: pass --method NAME" in r.output
    assert not (setup / "m").exists()
    r = CliRunner().invoke(app, ["unlearn", "--help"], env={"COLUMNS": "120"})
    text = re.sub(r"[\s│]+", " ", r.output)  # the help box wraps and frames lines
    assert "Required: there is no default" in text and "loop.steps 100" in text


def test_token_weights_weight_by_default(setup: Path) -> None:
    """Scores passed with default settings change the weights: the method's default transform
    (hazard_teach) applies and is recorded; sft, which has none, says which option it needs."""
    from magic_unlearn.unlearn.weights import SEED_CONFIGS, transform_scores

    base = [f"max_length={MAXLEN}", "loop.batch_size=2", "loop.steps=2", "loop.device=cpu"]
    common = dict(model=str(setup / "base"), forget=str(setup / "forget.jsonl"))
    cfg = load_unlearn_config(
        None, base, method="ga", token_weights=[str(setup / "scores")], **common
    )
    out = unlearn(cfg, setup / "w", progress=False)
    m = json.loads((out / "metrics.json").read_text())
    art = ScoreArtifact.load(setup / "scores")
    want, _ = transform_scores(
        art.token_scores("hazard_qa"), art.loss_mask, None, SEED_CONFIGS["hazard_teach"]
    )
    lm = art.loss_mask > 0
    assert m["forget_weighted_tokens"] == int(((want != 0) & lm).sum()) < int(lm.sum())
    assert m["forget_weight_mean_abs"] == pytest.approx(float(want[lm].abs().mean()))
    saved = load_unlearn_config(out / "config.yaml")
    assert saved.weights == SEED_CONFIGS["hazard_teach"]  # the resolved transform is recorded
    # an explicit transform wins; without scores every token weighs 1
    cfg = load_unlearn_config(
        None,
        [*base, "weights.select=all"],
        method="ga",
        token_weights=[str(setup / "scores")],
        **common,
    )
    m = json.loads((unlearn(cfg, setup / "w2", progress=False) / "metrics.json").read_text())
    assert m["forget_weight_mean_abs"] == 1.0
    with pytest.raises(ConfigError, match="--recipe value_weighted"):
        unlearn(
            load_unlearn_config(
                None, base, method="sft", token_weights=[str(setup / "scores")], **common
            ),
            setup / "w3",
            progress=False,
        )
    assert not (setup / "w3").exists()


def test_bad_input_leaves_no_output(setup: Path) -> None:
    run = CliRunner().invoke
    cases = [
        (["--method", "ga", "--token-weights", str(setup / "other")], "hash mismatch"),
        (["--method", "nope"], "unknown unlearning method 'nope'"),
        (["--method", "ga", "--set", "loop.layers=[9]"], "layer 9 out of range"),
        (
            [
                "--method",
                "ga",
                "--token-weights",
                str(setup / "scores"),
                "--set",
                "weights.threshold=1e9",
            ],
            "selected no token",
        ),
        (
            ["--method", "ga", "--set", "forget_limit=0", "--forget", str(setup / "empty.jsonl")],
            "does not exist",
        ),
        (["--method", "ga", "--set", "loop.stepz=3"], "unknown field"),
        (
            [
                "--method",
                "sft",
                "--set",
                "loop.lr=1e30",
                "--set",
                "loop.steps=6",
                "--set",
                "loop.optimizer=sgd",
                "--set",
                "loop.max_grad_norm=null",
            ],
            "non-finite loss",
        ),
    ]
    for args, msg in cases:
        r = run(app, ["unlearn", *_common(setup), *args, "--out", str(setup / "bad")])
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output, (msg, r.output)
        assert not (setup / "bad").exists() and not list(setup.glob(".bad*"))
    (setup / "empty.jsonl").write_text("")
    r = run(
        app,
        [
            "unlearn",
            *_common(setup),
            "--method",
            "ga",
            "--forget",
            str(setup / "empty.jsonl"),
            "--out",
            str(setup / "bad"),
        ],
    )
    assert r.exit_code == 2 and "empty" in r.output


def test_interrupted_unlearn_resumes_to_the_same_model(setup: Path) -> None:
    from magic_unlearn.unlearn.methods import METHODS, GradDiff, register_method

    state = {"fired": False}

    @register_method("_crash_once_test")
    class CrashOnce(GradDiff):
        def __call__(self, model, batch, step, total):  # noqa: ANN001, ANN204
            if step == 5 and not state["fired"]:
                state["fired"] = True
                raise KeyboardInterrupt("simulated crash")
            return super().__call__(model, batch, step, total)

    try:
        common = dict(
            model=str(setup / "base"),
            forget=str(setup / "forget.jsonl"),
            retain=str(setup / "retain.jsonl"),
        )
        ov = [
            f"max_length={MAXLEN}",
            "loop.batch_size=2",
            "loop.steps=8",
            "loop.device=cpu",
            "loop.checkpoint_every=2",
            "loop.lr=1e-2",
        ]
        ref = unlearn(
            load_unlearn_config(None, ov, method="graddiff", **common),
            setup / "ref",
            progress=False,
        )
        cfg = load_unlearn_config(None, ov, method="_crash_once_test", **common)
        with pytest.raises(KeyboardInterrupt):
            unlearn(cfg, setup / "res", progress=False)
        assert (
            not (setup / "res").exists() and (setup / ".res.ckpt" / "main" / "checkpoint").exists()
        )
        unlearn(cfg, setup / "res", progress=False)
        assert not (setup / ".res.ckpt").exists()
        a, b = load_model(ref), load_model(setup / "res")
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.allclose(x, y, atol=1e-6), k
    finally:
        METHODS.pop("_crash_once_test", None)


def test_resume_with_other_settings_is_refused_or_restarted(setup: Path) -> None:
    """A checkpoint of an interrupted run resumes only into the same settings (issue #18)."""
    from magic_unlearn.checkpoint import CheckpointMismatchError
    from magic_unlearn.unlearn.methods import METHODS, GradDiff, register_method

    @register_method("_crash_at_3_test")
    class CrashAt3(GradDiff):
        def __call__(self, model, batch, step, total):  # noqa: ANN001, ANN204
            if step == 3:
                raise KeyboardInterrupt("simulated crash")
            return super().__call__(model, batch, step, total)

    try:
        common = dict(
            model=str(setup / "base"),
            forget=str(setup / "forget.jsonl"),
            retain=str(setup / "retain.jsonl"),
        )
        ov = [f"max_length={MAXLEN}", "loop.batch_size=2", "loop.steps=6", "loop.device=cpu"]
        ov += ["loop.checkpoint_every=2", "loop.log_every=1"]
        crash = load_unlearn_config(
            None, [*ov, "loop.lr=1e-4"], method="_crash_at_3_test", **common
        )
        with pytest.raises(KeyboardInterrupt):
            unlearn(crash, setup / "res", progress=False)
        assert (setup / ".res.ckpt" / "main" / "checkpoint").exists()
        other = load_unlearn_config(None, [*ov, "loop.lr=5e-3"], method="graddiff", **common)
        with pytest.raises(CheckpointMismatchError, match="other settings.*--overwrite"):
            unlearn(other, setup / "res", progress=False)
        assert not (setup / "res").exists()
        unlearn(other, setup / "res", overwrite=True, progress=False)  # starts over
        hist = json.loads((setup / "res" / "metrics.json").read_text())["phases"][0]["history"]
        assert [h["step"] for h in hist] == list(range(1, 7))  # from the start, not step 2
        assert all(h["lr"] == pytest.approx(5e-3) for h in hist)
    finally:
        METHODS.pop("_crash_at_3_test", None)
