"""Unlearning methods: math against independent references, and each does what it claims."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from magic_unlearn.data import per_token_nll
from magic_unlearn.lens import train_tuned_lens
from magic_unlearn.models import LayerCapture
from magic_unlearn.unlearn import LoopConfig, get_method, train_loop
from magic_unlearn.unlearn.edit import find_directions, remove_directions
from magic_unlearn.unlearn.methods import L2SP, kl_per_token, orthogonality_loss
from test_unlearn_loop import V, batch_of, make_corpus, tiny

CFG = dict(batch_size=4, device="cpu", log_every=1)


def _perturbed(m: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
    m2 = copy.deepcopy(m)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m2


def _seq_logprob_bruteforce(m: torch.nn.Module, c) -> torch.Tensor:  # noqa: ANN001
    out = []
    with torch.no_grad():
        logits = m(input_ids=c.input_ids, attention_mask=c.attention_mask).logits.double()
    for i in range(len(c)):
        s = 0.0
        for j in range(1, c.input_ids.shape[1]):
            if c.loss_mask[i, j] > 0:
                s += float(torch.log_softmax(logits[i, j - 1], -1)[c.input_ids[i, j]])
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def test_npo_and_simnpo_match_their_formulas() -> None:
    ref, c = tiny(), make_corpus()
    m = _perturbed(ref)
    npo = get_method("npo", beta=0.7, retain_coef=0.0)
    npo.setup(ref, {"forget": c}, LoopConfig())
    loss, _ = npo(m, {"forget": batch_of(c)}, 0, 1)
    lp, lp0 = _seq_logprob_bruteforce(m, c), _seq_logprob_bruteforce(ref, c)
    want = (-(2 / 0.7) * torch.log(torch.sigmoid(-0.7 * (lp - lp0)))).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)  # fp32 log-probs

    simnpo = get_method("simnpo", beta=1.5, gamma=0.3, retain_coef=0.0)
    loss, _ = simnpo(m, {"forget": batch_of(c)}, 0, 1)
    n = c.loss_mask.sum(1).double()
    want = (-(2 / 1.5) * torch.log(torch.sigmoid(-(1.5 / n) * lp - 0.3))).mean()
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)  # fp32 log-probs


def test_kl_orthogonality_and_l2sp_against_bruteforce() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(2, 5, 7, generator=g, dtype=torch.float64),
        torch.randn(2, 5, 7, generator=g, dtype=torch.float64),
    )
    kl = kl_per_token(a, b)
    want = F.kl_div(
        torch.log_softmax(b[:, :-1], -1),
        torch.log_softmax(a[:, :-1], -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    assert torch.allclose(kl[:, 1:], want) and torch.all(kl[:, 0] == 0)

    h = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    lm = torch.ones(4, 6, dtype=torch.float64)
    lm[:, 0] = 0
    lm[1, 4:] = 0
    w = torch.rand(4, 6, generator=g, dtype=torch.float64)
    b_ = {"loss_mask": lm, "token_weight": w}
    pooled = [
        sum(w[i, j] * lm[i, j] * h[i, j] for j in range(6)) / (w[i] * lm[i]).sum() for i in range(4)
    ]
    pairs = [
        max(0.0, float(F.cosine_similarity(pooled[i], pooled[j], dim=0)))
        for i in range(4)
        for j in range(4)
        if i != j
    ]
    want = sum(pairs) / len(pairs) * float(lm.sum(1).mean())
    assert float(orthogonality_loss(h, b_)) == pytest.approx(want, rel=1e-10)

    m = tiny()
    reg = L2SP(coef=0.5)
    reg.on_train_start(m)
    p = m.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    with torch.no_grad():
        p.add_(0.1)
    v, _ = reg(m, {}, 0, 1)
    assert float(v.detach()) == pytest.approx(0.5 * 0.01 * p.numel(), rel=1e-10)
    (gp,) = torch.autograd.grad(v, [p])
    assert torch.allclose(gp, torch.full_like(p, 0.5 * 2 * 0.1))


def test_regularisers_compose_with_any_method() -> None:
    m, c, r = tiny(), make_corpus(), make_corpus(seed=1)
    batch = {"forget": batch_of(c), "retain": batch_of(r)}
    plain = get_method("ga")
    reg = get_method("ga", retain_nll=2.0, retain_kl=1.0, l2sp=3.0)
    reg.setup(m, {"forget": c, "retain": r}, LoopConfig())
    reg.on_train_start(m)
    nll_r = per_token_nll(m, r.input_ids, r.attention_mask)
    want = plain(m, batch, 0, 1)[0] + 2.0 * (nll_r * r.loss_mask).sum() / r.loss_mask.sum()
    loss, logs = reg(m, batch, 0, 1)  # at the start: KL = 0 and L2-SP = 0
    assert float(loss) == pytest.approx(float(want), rel=1e-10)
    assert logs["kl_retain"] == pytest.approx(0.0, abs=1e-12) and logs["l2sp"] == 0.0


def _hidden(m: torch.nn.Module, c, layers: list[int]) -> dict[int, torch.Tensor]:  # noqa: ANN001
    with torch.no_grad(), LayerCapture(m, layers, detach=True) as cap:
        m(input_ids=c.input_ids, attention_mask=c.attention_mask)
    return cap.outputs


def _tok(c) -> torch.Tensor:  # noqa: ANN001
    return c.loss_mask > 0


def test_rr_lowers_cosine_to_reference() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    base = tiny()
    h0 = _hidden(base, c, [0, 1])
    res = train_loop(
        tiny(),
        get_method("rr"),
        {"forget": c, "retain": r},
        LoopConfig(steps=15, lr=1e-2, **CFG),
        progress=False,
    )
    h1 = _hidden(res.model, c, [0, 1])
    for i in (0, 1):
        cos = F.cosine_similarity(h0[i], h1[i], dim=-1)[_tok(c)].mean()
        assert cos < 0.8, (i, float(cos))
    assert res.history[-1]["cos"] < res.history[0]["cos"]


def test_orth_cb_lowers_pairwise_cosine() -> None:
    c, r = make_corpus(n=8), make_corpus(seed=1)
    bb = batch_of(c)
    before = float(orthogonality_loss(_hidden(tiny(), c, [1])[1], bb))
    res = train_loop(
        tiny(),
        get_method("orth_cb", orth_coef=5.0, schedule="constant"),
        {"forget": c, "retain": r},
        LoopConfig(steps=20, lr=1e-2, **CFG),
        progress=False,
    )
    after = float(orthogonality_loss(_hidden(res.model, c, [1])[1], bb))
    assert after < 0.5 * before, (before, after)


def test_rmu_moves_activations_toward_target() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    method = get_method("rmu", layer=1, steering_coef=3.0, alpha=1.0)
    base = tiny()
    res = train_loop(
        tiny(),
        method,
        {"forget": c, "retain": r},
        LoopConfig(steps=20, lr=1e-2, **CFG),
        progress=False,
    )
    target = method.scale * method.u.double()
    d0 = (_hidden(base, c, [1])[1] - target).norm(dim=-1)[_tok(c)].mean()
    d1 = (_hidden(res.model, c, [1])[1] - target).norm(dim=-1)[_tok(c)].mean()
    assert d1 < 0.7 * d0, (float(d0), float(d1))
    # only the MLPs of layers <= 1 train by default (layer 1: layers 0..1)
    moved = {
        n
        for (n, a), (_, b) in zip(
            base.named_parameters(), res.model.named_parameters(), strict=True
        )
        if not torch.equal(a, b)
    }
    assert moved and all(".mlp." in n for n in moved)


def test_tuned_lens_fits_and_last_layer_is_exact() -> None:
    m, c = tiny(), make_corpus(n=16)
    lens, fit = train_tuned_lens(m, c, steps=40, lr=1e-2, batch_size=8)
    assert fit[-1] < 0.8 * fit[0]
    h = _hidden(m, c, [1])[1]
    with torch.no_grad():
        logits = m(input_ids=c.input_ids, attention_mask=c.attention_mask).logits
        assert torch.allclose(lens(h, 1), logits, atol=1e-10)


def test_lens_method_raises_forget_entropy() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    warm = train_loop(
        tiny(),
        get_method("sft"),
        {"forget": c},
        LoopConfig(steps=30, lr=1e-2, **CFG),
        progress=False,
    ).model
    res = train_loop(
        copy.deepcopy(warm),
        get_method("lens", lens="tuned", lens_steps=10),
        {"forget": c, "retain": r},
        LoopConfig(steps=15, lr=1e-2, **CFG),
        progress=False,
    )
    assert res.history[-1]["lens_forget"] < 0.7 * res.history[0]["lens_forget"]


def test_sequential_moves_one_layer_per_stage() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    base = tiny()
    # 4 steps over 2 layers: steps 0-1 train layer 1 (the last), steps 2-3 layer 0
    res = train_loop(
        tiny(),
        get_method("sequential"),
        {"forget": c, "retain": r},
        LoopConfig(steps=4, lr=1e-2, **CFG),
        progress=False,
    )
    assert [h["layer"] for h in res.history] == [1.0, 1.0, 0.0, 0.0]
    half = train_loop(
        tiny(),
        get_method("sequential"),
        {"forget": c, "retain": r},
        LoopConfig(steps=2, lr=1e-2, **CFG),
        progress=False,
    ).model
    moved = {
        n
        for (n, a), (_, b) in zip(base.named_parameters(), half.named_parameters(), strict=True)
        if not torch.equal(a, b)
    }
    # 2 steps over 2 layers: step 0 moves only layer 1, step 1 only layer 0
    assert moved and {n.split(".")[2] for n in moved} == {"0", "1"}
    assert all(n.startswith("gpt_neox.layers.") for n in moved)
    one = train_loop(
        tiny(),
        get_method("sequential"),
        {"forget": c, "retain": r},
        LoopConfig(steps=1, lr=1e-2, **CFG),
        progress=False,
    ).model
    moved = {
        n
        for (n, a), (_, b) in zip(base.named_parameters(), one.named_parameters(), strict=True)
        if not torch.equal(a, b)
    }
    assert moved and all(n.startswith("gpt_neox.layers.1.") for n in moved)


def test_ga_orth_and_bf16_autocast_run() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    res = train_loop(
        tiny(dtype=torch.float32),
        get_method("ga_orth"),
        {"forget": c, "retain": r},
        LoopConfig(steps=8, lr=3e-3, precision="bf16", **CFG),
        progress=False,
    )
    assert res.history[-1]["nll_forget"] > res.history[0]["nll_forget"]


def test_direction_removal_zeroes_the_component() -> None:
    m, c = tiny(), make_corpus(n=10)
    hw = torch.zeros_like(c.loss_mask)
    gw = torch.zeros_like(c.loss_mask)
    hw[:5] = c.loss_mask[:5]
    gw[5:] = c.loss_mask[5:]
    dirs = find_directions(m, c, hw, gw, [0, 1], method="diffmean")
    # independent: normalised difference of the two groups' mean hidden states
    h = _hidden(m, c, [1])[1]
    dm = h[:5][hw[:5] > 0].mean(0) - h[5:][gw[5:] > 0].mean(0)
    assert torch.allclose(dirs[1][0].abs(), (dm / dm.norm()).abs(), atol=1e-10)
    pca = find_directions(m, c, hw, gw, [1], method="pca", k=2, keep_general=1)
    assert pca[1].shape == (2, 32) and torch.allclose(
        pca[1] @ pca[1].T, torch.eye(2, dtype=torch.float64), atol=1e-10
    )
    m_layer = copy.deepcopy(m)
    remove_directions(m_layer, {1: dirs[1]}, mode="layer")
    hl = _hidden(m_layer, c, [0, 1])
    assert ((hl[1] - hl[0]) @ dirs[1].T).abs().max() < 1e-10  # layer 1 writes nothing along d
    assert ((hl[1] @ dirs[1].T).abs().max()) > 1e-6  # but the stream still carries it
    remove_directions(m, dirs, mode="all")
    q = torch.cat([dirs[0], dirs[1]])
    for i, hh in _hidden(m, c, [0, 1]).items():
        assert (hh @ q.T).abs().max() < 1e-10, i


def test_dir_ablate_reduces_projection() -> None:
    c, r = make_corpus(), make_corpus(seed=1)
    m = tiny()
    hw = c.loss_mask.clone()
    hw[6:] = 0
    gw = c.loss_mask - hw
    dirs = find_directions(m, c, hw, gw, [1])

    def proj(model: torch.nn.Module) -> float:
        h = _hidden(model, c, [1])[1]
        return float(((h @ dirs[1].T) ** 2).sum(-1)[_tok(c)].mean())

    before = proj(m)
    res = train_loop(
        m,
        get_method("dir_ablate", directions=dirs),
        {"forget": c, "retain": r},
        LoopConfig(steps=20, lr=1e-3, **CFG),
        progress=False,
    )
    assert proj(res.model) < 0.6 * before


def test_method_argument_errors() -> None:
    with pytest.raises(ValueError, match="objective"):
        get_method("lens", objective="nope")
    with pytest.raises(ValueError, match="needs directions"):
        get_method("dir_ablate")
    with pytest.raises(ValueError, match="layer 7 out of range"):
        get_method("rr", layers=[7]).setup(tiny(), {}, LoopConfig())
    assert V > 0
