"""Every registered unlearning method and every registered attack runs once on a tiny model.

Parametrized over the registries, so a newly registered method or attack is covered without
editing this file (a method whose constructor needs arguments gets them in ``METHOD_ARGS``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from magic_unlearn.models import get_decoder_layers
from magic_unlearn.tamper import (
    ATTACKS,
    Attack,
    AttackConfig,
    AttackContext,
    AttackRun,
    get_attack,
    load_suite,
    register_attack,
    run_attack,
    run_suite,
)
from magic_unlearn.unlearn import METHODS, LoopConfig, Method, get_method, train_loop
from magic_unlearn.unlearn.methods.tensors import layer_indices
from test_unlearn_loop import make_corpus, tiny

YEAR = re.compile(r"\b(19|20)\d\d\b")  # a citation names its year

# constructor arguments of methods that have required ones (or slow defaults)
METHOD_ARGS = {
    "dir_ablate": lambda: {"directions": {1: torch.eye(32, dtype=torch.float64)[:1]}},
    "lens": lambda: {"lens_steps": 2},
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_a_tiny_model(name: str) -> None:
    cls = METHODS[name]
    assert issubclass(cls, Method) and cls.name == name
    assert YEAR.search(cls.__doc__ or ""), f"{cls.__name__}'s docstring cites no paper"
    data = {"forget": make_corpus(n=8), "retain": make_corpus(n=8, seed=1)}
    base = tiny()
    method = get_method(name, **METHOD_ARGS.get(name, lambda: {})())
    steps = 3
    res = train_loop(
        copy.deepcopy(base),
        method,
        data,
        LoopConfig(steps=steps, lr=1e-2, batch_size=4, device="cpu", log_every=1),
        progress=False,
    )
    assert [h["step"] for h in res.history] == list(range(1, steps + 1))
    assert all(math.isfinite(h["loss"]) for h in res.history)
    moved = {
        n
        for (n, a), (_, b) in zip(
            base.named_parameters(), res.model.named_parameters(), strict=True
        )
        if not torch.equal(a, b)
    }
    assert moved, f"{name} did not change the model"
    # the method's hooks decide what trains when the loop config does not
    if method.trainable_layers is not None:
        layers = layer_indices(base, method.trainable_layers)
        assert all(any(f"layers.{i}." in n for i in layers) for n in moved), moved
    if method.trainable_modules is not None:
        assert all(set(n.split(".")) & set(method.trainable_modules) for n in moved), moved


def test_method_registry_rejects_non_methods_and_duplicates() -> None:
    from magic_unlearn.unlearn import register_method

    with pytest.raises(TypeError, match="not a Method subclass"):
        register_method("_not_a_method")(object)
    with pytest.raises(ValueError, match="already registered"):

        @register_method("sft")
        class Other(Method):
            def __call__(self, model, batch, step, total_steps):  # noqa: ANN001, ANN204
                raise AssertionError

    assert "_not_a_method" not in METHODS
    with pytest.raises(TypeError, match="must be a magic_unlearn.unlearn.methods.Method"):
        train_loop(tiny(), object(), {"forget": make_corpus()}, LoopConfig(steps=1))


# ------------------------------------------------------------------------------------------
# attacks


WORDS = "red blue green fox cat dog bird fish alpha beta gamma delta the of is".split()


def _scorer(corpus):  # noqa: ANN001, ANN202
    """A stand-in scorer: 'accuracy' = fraction of next tokens predicted exactly."""

    def score(model):  # noqa: ANN001, ANN202
        out = model(input_ids=corpus["input_ids"], attention_mask=corpus["attention_mask"])
        acc = float((out.logits[:, :-1].argmax(-1) == corpus["input_ids"][:, 1:]).double().mean())
        return {"hazard_acc": acc, "hazard_loss": 1 - acc, "general_acc": 0.5, "general_loss": 1.0}

    return score


@pytest.fixture
def attack_setup(tmp_path: Path, word_tokenizer, tiny_model):  # noqa: ANN001, ANN201
    docs = [{"id": str(i), "text": " ".join(WORDS[i:] + WORDS[:i])} for i in range(8)]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    enc = word_tokenizer([d["text"] for d in docs[:4]], return_tensors="pt", padding=True)
    ctx = AttackContext(
        scorer=_scorer(enc),
        tokenizer=word_tokenizer,
        eval_key="k",
        prompts=(enc["input_ids"], enc["attention_mask"]),
        sources={"c": str(path)},
        device="cpu",
    )
    unlearned = copy.deepcopy(tiny_model)
    with torch.no_grad():  # a different model, so ablation directions are nonzero
        for p in unlearned.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return ctx, unlearned, tiny_model


def _settings(kind: str) -> AttackConfig:
    return AttackConfig(
        kind=kind, data="c", steps=2, eval_every=1, batch_size=4, max_length=16, lr=1e-2
    )


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_every_attack_runs_on_a_tiny_model(kind: str, attack_setup) -> None:  # noqa: ANN001
    ctx, model, original = attack_setup
    cls = ATTACKS[kind]
    assert issubclass(cls, Attack) and cls.name == kind
    assert YEAR.search(cls.__doc__ or ""), f"{cls.__name__}'s docstring cites no paper"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initial = ctx.scorer(model)
    e = run_attack(model, kind, _settings(kind), ctx, original=original, initial=initial)
    assert "skipped" not in e, e.get("skipped")
    assert e["kind"] == kind and e["x_label"] == cls.x_label
    json.dumps(e)  # the entry goes into curves.json as is
    steps = [p["step"] for p in e["points"]]
    if cls.x_label == "layer":
        assert steps == list(range(len(get_decoder_layers(model))))
    else:
        assert steps[0] == 0 and steps == sorted(set(steps))
    if cls.starts_at_model:
        assert {k: v for k, v in e["points"][0].items() if k != "step"} == initial
    if cls.trains:
        assert steps[-1] == 2  # the training budget: `steps`
    for k, v in model.state_dict().items():  # attacks work on copies
        assert torch.equal(v, before[k]), k
    if cls.needs_original:
        e = run_attack(model, kind, _settings(kind), ctx, original=None)
        assert "original (base) model" in e["skipped"]


def test_a_registered_attack_runs_from_a_suite_file(tmp_path: Path, attack_setup) -> None:  # noqa: ANN001
    """Adding an attack = one class + @register_attack; suites name it by ``kind:``."""
    ctx, model, _ = attack_setup

    @register_attack("_noise_test")
    class NoiseAttack(Attack):
        """Perturb the weights once (a stand-in attack for this test, cf. Lucki et al. 2024)."""

        def corpora(self, attack: AttackConfig) -> dict[str, str]:
            return {"data": attack.data}

        def run(self, model, attack, ctx, *, corpora, original, initial):  # noqa: ANN001, ANN201
            assert len(corpora["data"]) == 8 and original is None
            work = copy.deepcopy(model)
            with torch.no_grad():
                for p in work.parameters():
                    p.mul_(1.5)
            return AttackRun([{"step": 0, **initial}, {"step": 1, **ctx.scorer(work)}], {"x": 1})

    try:
        y = tmp_path / "s.yaml"
        y.write_text("name: t\nattacks:\n  noise:\n    kind: _noise_test\n    data: c\n")
        suite = load_suite(y)
        assert get_attack("_noise_test").trains is False
        out = run_suite(model, suite, ctx)
        assert [p["step"] for p in out["noise"]["points"]] == [0, 1] and out["noise"]["x"] == 1
        assert out["noise"]["kind"] == "_noise_test" and out["noise"]["x_label"] == "step"
        # derived suites scale only attacks that train
        assert load_suite("world_gpu").attacks["ablate"] == load_suite("world").attacks["ablate"]

        @register_attack("_clash_test")
        class Clash(NoiseAttack):
            def run(self, model, attack, ctx, *, corpora, original, initial):  # noqa: ANN001, ANN201
                return AttackRun([{"step": 0, **initial}], {"kind": "other"})

        with pytest.raises(ValueError, match=r"may not set \['kind'\]"):
            run_attack(model, "c", AttackConfig(kind="_clash_test", data="c"), ctx, initial={})
    finally:
        ATTACKS.pop("_noise_test", None)
        ATTACKS.pop("_clash_test", None)
    with pytest.raises(ValueError, match="attack kind must be one of"):
        AttackConfig(kind="_noise_test")
    with pytest.raises(TypeError, match="not an Attack subclass"):
        register_attack("_bad")(object)


def test_cli_lists_every_registered_method_and_attack() -> None:
    from typer.testing import CliRunner

    from magic_unlearn.cli import app

    r = CliRunner().invoke(app, ["unlearn", "methods"])
    assert r.exit_code == 0, r.output
    # a name opens each entry (two spaces in); wrapped description lines are indented deeper
    lines = r.output.split("recipes")[0].splitlines()[1:]
    listed = {ln.split()[0] for ln in lines if ln.startswith("  ") and ln[2] != " "}
    assert listed == set(METHODS)
    # whole sentences, not first docstring lines cut mid-sentence
    assert '(Jang et al. 2023, "Knowledge' in r.output
    text = " ".join(r.output.split())
    assert 'Unlearning for Mitigating Privacy Risks in Language Models")' in text
    r = CliRunner().invoke(app, ["tamper-attacks"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert {ln.split()[0] for ln in lines if ln[2] != " "} == set(ATTACKS)
    text = " ".join(r.output.split())
    assert "[x: layer]" in text and "trains" in text
