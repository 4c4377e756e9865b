"""Removal curves (analysis/removal.py) against a known response, and the seed ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from magic_unlearn.analysis.removal import removal_curves, removal_markdown, top_units
from magic_unlearn.attribution import TrajectoryConfig
from magic_unlearn.data import TokenizedCorpus

N, L = 10, 6


def _corpus() -> TokenizedCorpus:
    ids = torch.arange(N * L).reshape(N, L) % 30 + 4
    am = torch.ones(N, L, dtype=torch.long)
    lm = torch.ones(N, L)
    lm[:, 0] = 0
    neg = torch.full((N, L), -1)
    return TokenizedCorpus(ids, am, lm, neg, neg.clone(), [f"d{i}" for i in range(N)])


class _Trained(torch.nn.Linear):
    def __init__(self, w: torch.Tensor | None) -> None:
        super().__init__(1, 1)
        self.w = torch.ones(N, L, dtype=torch.float64) if w is None else w.double()


def test_top_units_picks_the_extremes() -> None:
    s = np.array([0.3, -2.0, 0.0, -0.5, 1.0])
    assert top_units(s, 2, "proponents").tolist() == [1, 3]
    assert top_units(s, 2, "detractors").tolist() == [0, 4]
    with pytest.raises(ValueError, match="side"):
        top_units(s, 1, "both")


def test_removal_curves_against_a_quadratic_response(tmp_path: Path) -> None:
    corpus = _corpus()
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, L, generator=g, dtype=torch.float64) * corpus.loss_mask.double()
    calls = {"n": 0}

    def train_fn(model, corpus, cfg, token_weights=None):
        calls["n"] += 1
        return _Trained(token_weights)

    def f(m: _Trained) -> float:
        d = float((s * (m.w - 1)).sum())  # the first-order change
        return 2.0 + d + 0.5 * d * d

    kw = dict(fractions=(0.1, 0.2, 0.5), unit="doc", out=tmp_path / "rc", progress=False)
    res = removal_curves(
        lambda: torch.nn.Linear(1, 1),
        corpus,
        {"f": f},
        TrajectoryConfig(),
        {"magic:f": s},
        {"magic:f": "f"},
        train_fn=train_fn,
        **kw,
    )
    c = res["curves"]["magic:f"]
    doc = (s * corpus.loss_mask.double()).sum(1).numpy()
    assert res["k"] == [1, 2, 5] and c["k"] == [1, 2, 5]
    for i, k in enumerate(c["k"]):
        dropped = np.argsort(doc, kind="mergesort")[:k]
        pred = float(-doc[dropped].sum())
        assert c["predicted"][i] == pytest.approx(pred)
        assert c["actual"][i] == pytest.approx(pred + 0.5 * pred * pred)
        assert c["ratio"][i] == pytest.approx(1 + 0.5 * pred)
    assert c["sign_agree"] == 1.0 and c["spearman"] == pytest.approx(1.0)
    assert len(c["random_actual"]) == 3
    assert calls["n"] == 1 + 3 + 3  # base, 3 top-k drops, 3 random drops
    assert "| 5 | 50.0 |" in removal_markdown(res)
    # cached: a second call retrains nothing
    again = removal_curves(
        lambda: torch.nn.Linear(1, 1),
        corpus,
        {"f": f},
        TrajectoryConfig(),
        {"magic:f": s},
        {"magic:f": "f"},
        train_fn=train_fn,
        **kw,
    )
    assert calls["n"] == 7 and again["curves"]["magic:f"]["actual"] == c["actual"]
    with pytest.raises(ValueError, match="drop all"):
        removal_curves(
            lambda: torch.nn.Linear(1, 1),
            corpus,
            {"f": f},
            TrajectoryConfig(),
            {"magic:f": s},
            {"magic:f": "f"},
            fractions=(1.0,),
            train_fn=train_fn,
            progress=False,
        )


def test_ensemble_is_the_mean_of_its_members(tmp_path: Path) -> None:
    from magic_unlearn.attribution import ScoreArtifact, attribute
    from magic_unlearn.attribution.ensemble import attribute_ensemble
    from magic_unlearn.models import build_model
    from test_attribution import TINY, V, cfg_for, f_heldout, make_corpus

    model = build_model(TINY, vocab_size=V, seed=0, dtype=torch.float64)
    corpus = make_corpus()
    cfg = cfg_for("sgd", steps=4, seed=5)
    ens = attribute_ensemble(
        model, corpus, {"f": f_heldout}, cfg, [0, 1], out=tmp_path / "e", progress=False
    )
    members = [
        attribute(model, corpus, {"f": f_heldout}, cfg_for("sgd", steps=4, seed=s), progress=False)
        for s in (0, 1)
    ]
    ref = (members[0].scores["f"] + members[1].scores["f"]) / 2
    torch.testing.assert_close(ens.scores["f"], ref, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(members[0].scores["f"], members[1].scores["f"])
    loaded = ScoreArtifact.load(tmp_path / "e")
    assert loaded.meta["ensemble"]["seeds"] == [0, 1]
    assert [m["seed"] for m in loaded.meta["ensemble"]["members"]] == [0, 1]
    with pytest.raises(ValueError, match="repeat"):
        attribute_ensemble(model, corpus, {"f": f_heldout}, cfg, [1, 1])
