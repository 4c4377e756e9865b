"""The fused LayerNorm / GELU nodes (attribution/layers.py) and their compile plumbing
(attribution/compiled.py): formulas against autograd in float64, first-order kernels identical
to the plain ops, the engine with every fused node on, and the precompile signatures."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from magic_unlearn.attribution import TrajectoryConfig, attribute, compiled, per_token_loss
from magic_unlearn.attribution.layers import FusedLayerNorm, gelu, layer_norm, use_fused_layers
from magic_unlearn.models import build_model


def _ln_inputs(dtype=torch.float64, seed=0, shape=(2, 3, 6)):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    w = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(dtype)
    return [t.requires_grad_() for t in (x, w, b)]


def test_layer_norm_and_gelu_pass_gradcheck_and_gradgradcheck():
    x, w, b = _ln_inputs()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b))
    assert torch.autograd.gradcheck(gelu, (x,))
    assert torch.autograd.gradgradcheck(gelu, (x,))


def _double_backward(f, inputs, seed=3, which=None):
    """d/d(inputs, dy) <grad(f . dy), cotangents>: what MAGIC's reverse step computes."""
    out = f(*inputs)
    gen = torch.Generator().manual_seed(seed)
    # drawn in float64 whatever the dtype, so fp32 and float64 runs see the same numbers
    dy = (
        torch.randn(out.shape, generator=gen, dtype=torch.float64)
        .to(out.device, out.dtype)
        .requires_grad_()
    )
    grads = torch.autograd.grad(out, inputs, dy, create_graph=True)
    cot = [
        torch.randn(g.shape, generator=gen, dtype=torch.float64).to(g.device, g.dtype)
        if which is None or i in which
        else None
        for i, g in enumerate(grads)
    ]
    outs = [g for g, c in zip(grads, cot, strict=True) if c is not None]
    return torch.autograd.grad(
        outs, (*inputs, dy), [c for c in cot if c is not None], allow_unused=True
    )


@pytest.mark.parametrize("which", [None, (0,), (1,), (2,), (1, 2)])
def test_layer_norm_double_backward_matches_autograd(which):
    """Every pattern of cotangents (of dx, dw, db) MAGIC can send, against F.layer_norm."""
    x, w, b = _ln_inputs(seed=1)
    got = _double_backward(lambda x, w, b: layer_norm(x, w, b, 1e-5), (x, w, b), which=which)
    ref = _double_backward(
        lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5), (x, w, b), which=which
    )
    for a, r in zip(got, ref, strict=True):
        if r is None or a is None:
            assert (r is None or float(r.abs().max()) == 0) and (
                a is None or float(a.abs().max()) == 0
            )
        else:
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_gelu_double_backward_matches_autograd():
    (x,) = _ln_inputs(seed=2)[:1]
    got = _double_backward(gelu, (x,))
    ref = _double_backward(F.gelu, (x,))
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


def test_forward_and_first_backward_are_the_plain_kernels():
    """fp32: the nodes run the same ATen kernels as plain autograd (bit-identical trajectory)."""
    x, w, b = _ln_inputs(torch.float32, seed=4, shape=(3, 5, 64))
    dy = torch.randn(3, 5, 64)
    y1 = layer_norm(x, w, b, 1e-5)
    y2 = F.layer_norm(x, (64,), w, b, 1e-5)
    assert torch.equal(y1, y2)
    for a, r in zip(
        torch.autograd.grad(y1, (x, w, b), dy), torch.autograd.grad(y2, (x, w, b), dy), strict=True
    ):
        assert torch.equal(a, r)
    assert torch.equal(gelu(x), F.gelu(x))
    assert torch.equal(
        torch.autograd.grad(gelu(x), x, dy)[0], torch.autograd.grad(F.gelu(x), x, dy)[0]
    )


def test_fp32_double_backward_is_as_accurate_as_plain_ops():
    """fp32 second derivatives of the nodes vs float64 autograd: within a small factor of the
    plain-op fp32 error (the nodes change rounding, not accuracy)."""
    x, w, b = _ln_inputs(torch.float64, seed=5, shape=(4, 7, 96))
    ref = _double_backward(lambda x, w, b: F.layer_norm(x, (96,), w, b, 1e-5), (x, w, b))
    lo = [t.detach().float().requires_grad_() for t in (x, w, b)]
    node = _double_backward(lambda x, w, b: layer_norm(x, w, b, 1e-5), lo)
    plain = _double_backward(lambda x, w, b: F.layer_norm(x, (96,), w, b, 1e-5), lo)
    for n, p, r in zip(node, plain, ref, strict=True):
        if r is None:  # the bias enters no derivative
            assert n is None or float(n.abs().max()) == 0
            continue
        e_node = float((n.double() - r).norm() / r.norm())
        e_plain = float((p.double() - r).norm() / r.norm())
        assert e_node < max(10 * e_plain, 1e-6), (e_node, e_plain)
    xg = x.detach().float().requires_grad_()
    ref = _double_backward(F.gelu, (x,))
    for n, r in zip(_double_backward(gelu, (xg,)), ref, strict=True):
        assert float((n.double() - r).norm() / r.norm()) < 1e-5


def test_use_fused_layers_keeps_weights_and_copies():
    model = build_model("neox-tiny", vocab_size=32, seed=0)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    n = use_fused_layers(model)
    # per layer: 2 LayerNorms and a GELU; plus the final LayerNorm
    assert n == 3 * model.config.num_hidden_layers + 1
    assert sum(isinstance(m, FusedLayerNorm) for m in model.modules()) == (
        2 * model.config.num_hidden_layers + 1
    )
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 32, (2, 9))
    torch.testing.assert_close(twin(input_ids=ids).logits, model(input_ids=ids).logits)


def _f(heldout):
    return lambda m: per_token_loss(m, heldout, None)[:, 1:].mean()


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_engine_with_fused_nodes_matches_plain_ops(monkeypatch, opt):
    """float64 on the CPU with every fused node forced on (as on a GPU) gives the plain-op
    scores: the hand-derived double backwards are the same math."""
    from magic_unlearn.attribution import layers

    model = build_model("neox-tiny", vocab_size=40, seed=0, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    from magic_unlearn.data import TokenizedCorpus

    ids = torch.randint(0, 40, (6, 10), generator=g)
    am = torch.ones_like(ids)
    lm = am.double()
    lm[:, 0] = 0
    neg = torch.full_like(ids, -1)
    corpus = TokenizedCorpus(ids, am, lm, neg, neg.clone(), [str(i) for i in range(6)])
    q = {"f": _f(torch.randint(0, 40, (2, 10), generator=g))}
    cfg = TrajectoryConfig(
        optimizer=opt, lr=0.05 if opt == "sgd" else 1e-2, steps=4, batch_size=2, dtype="float64"
    )
    plain = attribute(model, corpus, q, cfg, progress=False).scores["f"]
    calls = {"ln": 0, "gelu": 0}
    orig_ln, orig_gelu = layers._LayerNorm.apply, layers._Gelu.apply

    def count(kind, fn):
        def inner(*a):
            calls[kind] += 1
            return fn(*a)

        return inner

    monkeypatch.setattr(compiled, "fused_nodes_apply", lambda dev, dt: True)
    monkeypatch.setattr(layers._LayerNorm, "apply", count("ln", orig_ln))
    monkeypatch.setattr(layers._Gelu, "apply", count("gelu", orig_gelu))
    fused = attribute(model, corpus, q, cfg, progress=False).scores["f"]
    assert calls["ln"] > 0 and calls["gelu"] > 0
    assert plain.abs().max() > 0
    torch.testing.assert_close(fused, plain, rtol=1e-8, atol=1e-12)


def test_precompile_signatures_match_the_reverse_step(monkeypatch):
    """The signatures the node forwards note are exactly those of the double backward calls of
    a real reverse step (shapes, dtypes, strides, requires_grad, constants), so a precompiled
    function is found by the reverse step instead of compiled again."""
    from magic_unlearn.attribution.trajectory import prepare_model, weighted_grads

    seen: dict[str, set] = {"real": set(), "pre": set()}
    phase = {"now": "real"}

    def sig(args):
        return tuple(
            (tuple(a.shape), a.dtype, a.stride(), a.requires_grad)
            if isinstance(a, torch.Tensor)
            else a
            for a in args
        )

    def fake_pick(name, fn, cuda, want):
        def rec(*args):
            seen[phase["now"]].add((name, sig(args)))
            return fn(*args)

        return rec if want else fn

    monkeypatch.setattr(compiled, "_pick", fake_pick)
    monkeypatch.setattr(compiled, "fused_nodes_apply", lambda dev, dt: True)
    model = build_model("neox-tiny", vocab_size=40, seed=0, attn_implementation="sdpa")
    cfg = TrajectoryConfig(dtype="float32", batch_size=2)
    model, params = prepare_model(model, cfg)
    ids = torch.randint(0, 40, (2, 12))
    lm = torch.ones(2, 12)
    lm[:, 0] = 0
    compiled.clear_noted()
    weighted_grads(model, params, ids, None, lm, lm.sum(), None, cfg)  # a training step
    w = torch.ones_like(lm).requires_grad_()
    with compiled.compiled_double_backward(True):  # a reverse step
        g, _ = weighted_grads(model, params, ids, None, lm, lm.sum(), w, cfg, create_graph=True)
    torch.autograd.grad(g, [*params, w], [torch.randn_like(x) for x in g])
    phase["now"] = "pre"
    sec: dict[str, float] = {}
    n = compiled.precompile(rows=None, device_types=("cpu",), seconds=sec)
    assert n == 3  # attention, layer_norm, gelu
    assert set(sec) == {"attention", "layer_norm", "gelu"} and min(sec.values()) > 0
    assert {s[0] for s in seen["real"]} == {"attention", "layer_norm", "gelu"}
    assert seen["pre"] == seen["real"]


@pytest.mark.gpu
def test_gpu_nodes_match_plain_ops_and_float64(monkeypatch):
    """On a GPU, fp32 and bf16 (as autocast runs them): forward and first backward identical to
    the plain ops, compiled double backwards as accurate as the plain ops' against float64."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setattr(compiled, "_COMPILED", {})  # no earlier test's compile (or failure)
    x, w, b = _ln_inputs(torch.float64, seed=6, shape=(4, 33, 256))
    ref_ln = _double_backward(lambda x, w, b: F.layer_norm(x, (256,), w, b, 1e-5), (x, w, b))
    ref_gelu = _double_backward(F.gelu, (x,))
    for dtype in (torch.float32, torch.bfloat16):
        xs = [t.detach().to("cuda", dtype).requires_grad_() for t in (x, w, b)]
        ln_in = [t.float().detach().requires_grad_() for t in xs]  # autocast: LayerNorm in fp32
        dy = torch.randn(ln_in[0].shape, device="cuda")
        y1, y2 = layer_norm(*ln_in, 1e-5), F.layer_norm(ln_in[0], (256,), *ln_in[1:], 1e-5)
        assert torch.equal(y1, y2)
        g1 = torch.autograd.grad(y1, ln_in, dy)
        g2 = torch.autograd.grad(y2, ln_in, dy)
        assert all(torch.equal(a, r) for a, r in zip(g1, g2, strict=True))
        xg = xs[0]
        assert torch.equal(gelu(xg), F.gelu(xg))
        with compiled.compiled_double_backward(True):
            node_ln = _double_backward(lambda x, w, b: layer_norm(x, w, b, 1e-5), ln_in)
            node_gelu = _double_backward(gelu, (xg,))
        plain_ln = _double_backward(lambda x, w, b: F.layer_norm(x, (256,), w, b, 1e-5), ln_in)
        plain_gelu = _double_backward(F.gelu, (xg,))
        assert {"layer_norm", "gelu"} <= set(compiled._COMPILED)  # compiled code really ran
        checked = 0
        for node, plain, ref in [(node_ln, plain_ln, ref_ln), (node_gelu, plain_gelu, ref_gelu)]:
            for n, p, r in zip(node, plain, ref, strict=True):
                if r is None:
                    continue
                checked += 1
                e_n = float((n.double().cpu() - r).norm() / r.norm())
                e_p = float((p.double().cpu() - r).norm() / r.norm())
                assert e_n < max(3 * e_p, 1e-6), (dtype, e_n, e_p)
        assert checked == 3 + 2  # LayerNorm: x, w, dy (b enters no derivative); GELU: x, dy
    assert "failed" not in compiled._COMPILED


def test_compile_cache_folder_is_persistent_unless_the_user_chose_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = compiled.use_persistent_compile_cache()
    assert path == tmp_path / "xdg" / "magic_unlearn" / "inductor" and path.is_dir()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiled.use_persistent_compile_cache() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_warm_compiler_imports_once_and_never_on_a_cpu(monkeypatch, tmp_path):
    """The compiler warm-up (issue 15's cold start): nothing without a GPU; with one, a single
    worker thread per process that imports dynamo and inductor, and the first compile waits
    for it (two threads importing inductor at once is not safe)."""
    import sys

    monkeypatch.setattr(compiled, "_WARM", [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compiled.warm_compiler() is None and compiled._WARM == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    th = compiled.warm_compiler()
    assert th is not None and compiled.warm_compiler() is th  # once per process
    compiled._wait_warm()
    assert not th.is_alive()
    assert "torch._inductor.compile_fx" in sys.modules
