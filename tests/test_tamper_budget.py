"""Attack-budget sweeps: the budget suites, the per-step worst case over an lr grid, and
steps-to-recover censored at the budget."""

from __future__ import annotations

import pytest
import torch

from magic_unlearn.config import ConfigError
from magic_unlearn.models import build_model
from magic_unlearn.tamper import (
    AttackConfig,
    VerdictConfig,
    decide,
    format_table,
    load_suite,
    suite_names,
    summarize_attack,
)
from magic_unlearn.tamper.attacks import worst_case_per_step
from magic_unlearn.tamper.config import BUDGET_SUITES


def curve(haz: list[float], every: int = 10) -> list[dict]:
    return [{"step": i * every, "hazard_acc": h, "general_acc": 0.6} for i, h in enumerate(haz)]


def test_budget_suites_scale_the_standard_attack():
    assert {"world_budget", "world_gpu_budget"} <= set(suite_names())
    for name, spec in BUDGET_SUITES.items():
        s = load_suite(name)
        base = load_suite(spec.base)
        assert s.name == name and list(s.attacks) == list(base.attacks)
        for atk, a in s.attacks.items():
            b = base.attacks[atk]
            if atk in spec.attacks:
                assert a.steps == spec.factor * b.steps
                assert a.learning_rates() == list(spec.lrs) and a.lr_select == "per_step"
                assert a.eval_every == spec.eval_every
            else:  # every other attack is the base suite's
                assert a == b
        assert s.verdict.recover_margin == spec.recover_margin == 0.03
    # the tiny world's standard attack: 20 steps -> 200 (10x), over three lrs around 1e-3
    assert load_suite("world_budget").attacks["standard"].steps == 200
    assert load_suite("world_gpu_budget").attacks["standard"].steps == 1000
    # overrides still apply on top
    s = load_suite("world_budget", overrides=["attacks.standard.lrs=[1e-3]"])
    assert s.attacks["standard"].learning_rates() == [1e-3]


def test_lr_select_is_validated():
    with pytest.raises(ValueError, match="lr_select"):
        AttackConfig(lr_select="best")
    with pytest.raises(ConfigError, match="lr_select"):
        load_suite("world", overrides=["attacks.standard.lr_select=max"])


def test_worst_case_per_step_is_the_pointwise_max():
    runs = {
        1e-3: curve([0.25, 0.30, 0.70, 0.65]),
        3e-3: curve([0.25, 0.50, 0.60, 0.80]),
    }
    env = worst_case_per_step(runs)
    assert [p["hazard_acc"] for p in env] == [0.25, 0.50, 0.70, 0.80]
    assert [p["lr"] for p in env] == [1e-3, 3e-3, 1e-3, 3e-3]  # ties: the first lr
    assert [p["step"] for p in env] == [0, 10, 20, 30]
    with pytest.raises(ValueError, match="different steps"):
        worst_case_per_step({1e-3: curve([0.2, 0.3]), 3e-3: curve([0.2, 0.3], every=5)})


def test_per_step_sweep_of_a_real_finetune_attack():
    from magic_unlearn.data import TokenizedCorpus
    from magic_unlearn.tamper.attacks import finetune_attack
    from magic_unlearn.tamper.attacks.finetune import FinetuneAttack

    vocab = 61
    model = build_model(
        {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
        },
        vocab_size=vocab,
        seed=0,
    ).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (8, 10), generator=g)
    lm = torch.ones_like(ids, dtype=torch.float)
    lm[:, 0] = 0
    rows = TokenizedCorpus(
        ids,
        torch.ones_like(ids),
        lm,
        torch.full_like(ids, -1),
        torch.full_like(ids, -1),
        [str(i) for i in range(8)],
    )

    def scorer(m):  # "hazard acc" = -NLL of the corpus: rises as the attack fits it
        from magic_unlearn.data import per_token_nll

        with torch.no_grad():
            nll = float(per_token_nll(m, rows.input_ids, rows.attention_mask)[:, 1:].mean())
        return {"hazard_acc": -nll, "general_acc": 0.5}

    attack = AttackConfig(
        steps=4, eval_every=2, batch_size=4, lrs=[1e-3, 1e-2], lr_select="per_step"
    )
    curves = {
        lr: finetune_attack(model, attack, {"data": rows}, scorer, lr, device="cpu")[0]
        for lr in attack.learning_rates()
    }

    class Ctx:  # the fields of an AttackContext that FinetuneAttack.run reads
        device, progress = "cpu", False

    Ctx.scorer = staticmethod(scorer)
    run = FinetuneAttack().run(
        model, attack, Ctx(), corpora={"data": rows}, original=None, initial=None
    )
    for i, p in enumerate(run.points):
        best = max(curves.values(), key=lambda c: c[i]["hazard_acc"])[i]
        assert p["step"] == best["step"] and p["hazard_acc"] == pytest.approx(best["hazard_acc"])
    assert set(run.info["sweep"]) == {repr(1e-3), repr(1e-2)}


def test_steps_to_recover_is_censored_at_the_budget():
    cfg = VerdictConfig(recover_margin=0.03)
    pts = curve([0.25, 0.5, 0.9, 0.98])  # base 1.0: within 3 points first at step 30
    s = summarize_attack("standard", pts, cfg, base_acc=1.0, filtered_points=curve([0.3]))
    assert s.steps_to_recover == 30 and s.budget == 30
    never = summarize_attack("standard", curve([0.25, 0.5, 0.96]), cfg, base_acc=1.0)
    assert never.steps_to_recover is None and never.budget == 20
    layer = summarize_attack("probe", curve([0.2, 0.4], every=1), cfg, x_label="layer")
    assert layer.budget is None
    table = format_table(decide({"standard": never}, cfg))
    assert ">20" in table  # censored: not "never"
