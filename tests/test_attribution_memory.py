"""The memory model: REPLAY state counts match the engine, terms scale as documented."""

from __future__ import annotations

import pytest
import torch

from magic_unlearn.attribution import TrajectoryConfig, attribute, per_token_loss
from magic_unlearn.attribution.memory import (
    GB,
    ModelStats,
    fit_c_layer,
    magic_memory,
    stored_states,
    training_memory,
)
from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import build_model

V, N, L = 30, 4, 8


def _corpus() -> TokenizedCorpus:
    ids = torch.randint(4, V, (N, L), generator=torch.Generator().manual_seed(0))
    am = torch.ones(N, L, dtype=torch.long)
    lm = am.float()
    lm[:, 0] = 0
    neg = torch.full((N, L), -1)
    return TokenizedCorpus(ids, am, lm, neg, neg.clone(), [str(i) for i in range(N)])


@pytest.mark.parametrize(
    "steps,mode,k",
    [(7, "sqrt", None), (10, "sqrt", 4), (16, "kary", 2), (11, "kary", 3), (5, "every", None)],
)
def test_stored_states_match_the_engine(steps: int, mode: str, k: int | None) -> None:
    model = build_model(
        dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16),
        vocab_size=V,
        dtype=torch.float64,
    )
    q = {"f": lambda m: per_token_loss(m, torch.tensor([[5, 6, 7, 8]]), None)[:, 1:].mean()}
    cfg = TrajectoryConfig(
        optimizer="sgd",
        steps=steps,
        batch_size=2,
        dtype="float64",
        checkpointing=mode,
        checkpoint_k=k,
        storage="gpu",
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tm = attribute(model, _corpus(), q, cfg, progress=False).meta["timings"]
    finally:
        torch.set_num_threads(before)
    assert stored_states(steps, mode, k) == (tm["max_stored_states"], tm["replayed_steps"])


def test_gpt_neox_counts_match_a_built_model() -> None:
    kw = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40)
    model = build_model(kw, vocab_size=V)
    s = ModelStats.gpt_neox(16, 3, 40, V)
    assert s.trained == sum(p.numel() for p in model.parameters())
    assert s.max_tensor == max(p.numel() for p in model.parameters())
    # the 6.9B shape of the seed (Pythia-6.9B / deep-ignorance-unfiltered)
    assert abs(ModelStats.gpt_neox(4096, 32, 16384, 50432).trained / 1e9 - 6.857) < 1e-3


def test_sharded_terms_scale_with_world_size() -> None:
    s = ModelStats.gpt_neox(4096, 32, 16384, 50432)
    P = s.trained
    one = magic_memory(s, world_size=1, optimizer="adamw", reverse_microbatch=1)
    four = magic_memory(s, world_size=4, optimizer="adamw", reverse_microbatch=1)
    assert one.gpu["params"] == P * 2 and four.gpu["params"] == P * 2 / 4
    assert four.gpu["optimizer"] == 2 * P * 2 / 4
    assert four.gpu["adjoints"] == 3 * P * 4 / 4  # adjoints of theta, m, v in fp32
    assert four.gpu["adjoint_of_g"] == P * 4 / 4
    # W > 1 keeps the gathered full weights in the double backward's graph
    assert four.phases["double_backward"] > P * 2
    assert one.host["checkpoints"] == 4 * four.host["checkpoints"]
    assert one.stored_states == stored_states(16, "sqrt")[0]
    # plain FSDP training gathers one unit at a time
    tr = training_memory(s, world_size=4)
    assert tr.gpu["transient"] < P * 2 / 4 + one.gpu["transient"]


def test_fit_recovers_the_coefficient() -> None:
    s = ModelStats.gpt_neox(256, 4, 1024, 1000)
    kw = dict(world_size=2, batch_size=4, seq=128, optimizer="sgd")
    truth = magic_memory(s, c_layer=73.0, **kw)
    assert truth.phase == "double_backward"
    assert fit_c_layer(truth.gpu_total, s, **kw) == pytest.approx(73.0)
    tr = training_memory(s, c_layer=21.0, **kw)
    assert fit_c_layer(tr.gpu_total, s, kind="training", **kw) == pytest.approx(21.0)
    assert truth.summary()["gpu_total"] == pytest.approx(truth.gpu_total / GB, abs=1e-3)
