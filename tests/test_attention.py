"""The hand-derived attention node against autograd's own derivatives, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from magic_unlearn.attribution.attention import causal_attention


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    s = q @ k.transpose(-1, -2) * scale
    t_q, t_k = s.shape[-2], s.shape[-1]
    future = torch.ones(t_q, t_k, dtype=torch.bool).triu(t_k - t_q + 1)
    return torch.softmax(s.masked_fill(future, float("-inf")), dim=-1) @ v


def qkv(b: int = 2, h: int = 2, t: int = 5, s: int | None = None, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = t if s is None else s
    mk = lambda n: torch.randn(b, h, n, d, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    return mk(t), mk(s), mk(s)


@pytest.mark.parametrize("t,s", [(5, 5), (1, 1), (3, 6)])
def test_forward_and_first_derivatives_match_softmax_attention(t, s):
    q, k, v = qkv(t=t, s=s)
    scale = 1 / math.sqrt(q.shape[-1])
    out, ref = causal_attention(q, k, v, scale), reference(q, k, v, scale)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    g1 = torch.autograd.grad(out, (q, k, v), go)
    g2 = torch.autograd.grad(ref, (q, k, v), go)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    q, k, v = qkv(b=1, h=2, t=4, d=3)
    fn = lambda q, k, v: causal_attention(q, k, v, 0.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


@pytest.mark.parametrize("which", ["all", "q", "k", "v", "qk"])
def test_double_backward_matches_autograd(which):
    """The HVP-shaped quantity MAGIC needs: d/d(q, k, v, dO) <grad(out . dO), cotangents>."""
    q, k, v = qkv(t=6, d=4, seed=1)
    do = torch.randn(q.shape, dtype=torch.float64).requires_grad_()
    scale = 0.4
    res = []
    for f in (causal_attention, reference):
        out = f(q, k, v, scale)
        grads = torch.autograd.grad(out, (q, k, v), do, create_graph=True)
        # plain randn (randn_like follows strides, which differ between the two graphs)
        gen = torch.Generator().manual_seed(3)
        cot = [
            torch.randn(x.shape, generator=gen, dtype=x.dtype)
            if n in which or which == "all"
            else None
            for n, x in zip("qkv", grads, strict=True)
        ]
        outs = [g for g, c in zip(grads, cot, strict=True) if c is not None]
        res.append(
            torch.autograd.grad(
                outs, (q, k, v, do), [c for c in cot if c is not None], allow_unused=True
            )
        )
    for a, b in zip(*res, strict=True):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fp32_node_is_as_accurate_as_plain_ops():
    """The fp32 node (explicit ops on the CPU) against float64 plain-op attention: values, first
    and second derivatives are as close as fp32 plain-op attention gets (rounding, not math)."""
    g = torch.Generator().manual_seed(7)
    shape = (2, 3, 48, 16)
    base = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]
    cot = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
    scale = 0.25

    def derivs(fn, dtype):
        q, k, v, do = [x.to(dtype).requires_grad_() for x in base]
        out = fn(q, k, v, scale)
        grads = torch.autograd.grad(out, (q, k, v), do, create_graph=True)
        second = torch.autograd.grad(grads, (q, k, v, do), [c.to(dtype) for c in cot])
        return [x.detach() for x in (out, *grads, *second)]

    ref = derivs(reference, torch.float64)
    node = derivs(causal_attention, torch.float32)
    plain = derivs(reference, torch.float32)
    for n, p, r in zip(node, plain, ref, strict=True):
        e_node = float((n.double() - r).norm() / r.norm())
        e_plain = float((p.double() - r).norm() / r.norm())
        assert e_node < max(5 * e_plain, 1e-6) and e_node < 1e-5, (e_node, e_plain)


def test_mixed_dtypes_are_refused():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one dtype"):
        causal_attention(q, k.float(), v, 1.0)


def test_engine_model_skips_the_mask_for_plain_causal_inputs(monkeypatch):
    """The mask builder returns None for unpadded causal rows (also during CUDA graph capture,
    where transformers may build a full mask), so the fused attention node is used."""
    import transformers.masking_utils as mu

    from magic_unlearn.attribution import TrajectoryConfig, attention, compiled
    from magic_unlearn.attribution.trajectory import _exact_mask, prepare_model
    from magic_unlearn.models import build_model

    model = build_model("neox-tiny", vocab_size=32, seed=0, attn_implementation="sdpa")
    model, _ = prepare_model(model, TrajectoryConfig(dtype="float64"))
    monkeypatch.setattr(compiled, "fused_nodes_apply", lambda dev, dt: True)  # a GPU in life
    calls = {"n": 0}
    orig = attention._Attn.forward

    def counted(*a, **k):
        calls["n"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(attention._Attn, "forward", staticmethod(counted))
    # what capture-time transformers does: never skip the causal mask
    monkeypatch.setattr(mu, "_ignore_causal_mask_sdpa", lambda *a, **k: False)
    ids = torch.randint(0, 32, (2, 7))
    model(input_ids=ids, use_cache=False)
    assert calls["n"] == model.config.num_hidden_layers
    # the engine's own calls ignore a built mask too (whatever the mask builder does)
    full = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
    mu.ALL_MASK_ATTENTION_FUNCTIONS.register("eager_exact", lambda *a, **k: full)
    try:
        calls["n"] = 0
        model(input_ids=ids, use_cache=False)
        assert calls["n"] == 0  # a mask was given: the plain-op path
        from magic_unlearn.attribution.trajectory import per_token_loss

        per_token_loss(model, ids, None)
        assert calls["n"] == model.config.num_hidden_layers
    finally:
        mu.ALL_MASK_ATTENTION_FUNCTIONS.register("eager_exact", _exact_mask)
    # a padding mask still builds the mask (and the plain-op attention path)
    m = _exact_mask(
        batch_size=2,
        q_length=7,
        kv_length=7,
        attention_mask=torch.ones(2, 7, dtype=torch.bool).tril(),
        mask_function=mu.causal_mask_function,
    )
    assert m is not None and m.shape[-2:] == (7, 7)


def _double_backward(fn, q, k, v, do, cot):
    out = fn(q, k, v, 0.3)
    grads = torch.autograd.grad(out, (q, k, v), do, create_graph=True)
    return torch.autograd.grad(grads, (q, k, v, do), cot)


def test_failed_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    from magic_unlearn.attribution import attention, compiled

    monkeypatch.setattr(compiled, "_COMPILED", {})

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled, "_pick", lambda name, fn, cuda, want: broken)
    q, k, v = qkv(t=5, seed=2)
    do = torch.randn(q.shape, dtype=torch.float64).requires_grad_()
    cot = [torch.randn(x.shape, dtype=torch.float64) for x in (q, k, v)]
    with attention.compiled_double_backward(), pytest.warns(UserWarning, match="eagerly"):
        got = _double_backward(causal_attention, q, k, v, do, cot)
    ref = _double_backward(reference, q, k, v, do, cot)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert "failed" in compiled._COMPILED


@pytest.mark.gpu
def test_gpu_kernels_and_compiled_double_backward_match_autograd(monkeypatch):
    """On a GPU: FlashAttention (bf16) and memory-efficient (fp32) forward and deterministic
    backward, and the double backward eager and compiled, against autograd's derivatives of the
    plain-op attention in float64 and against each other; the first backward is
    bit-reproducible, and the compiled run really ran compiled code."""
    from magic_unlearn.attribution import attention, compiled

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    monkeypatch.setattr(compiled, "_COMPILED", {})  # no earlier test's compile (or failure)
    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 64, 32)
    base = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4)]
    cot = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
    for dtype, kind, tol in [
        (torch.float32, "efficient", 1e-4),
        (torch.bfloat16, "flash", 5e-2),
    ]:
        # the reference sees the same rounded inputs: only the kernels' own rounding is left
        ref_in = [x.to(dtype).double().requires_grad_() for x in base]
        ref_out = reference(*ref_in[:3], 0.3)
        ref_first = torch.autograd.grad(ref_out, ref_in[:3], ref_in[3])
        ref = _double_backward(
            reference, *ref_in[:3], ref_in[3], [c.to(dtype).double() for c in cot]
        )
        x = [t.to("cuda", dtype).requires_grad_() for t in base]
        assert attention._forward(*x[:3], 0.3)[2][0] == kind
        out = causal_attention(*x[:3], 0.3)
        first = torch.autograd.grad(out, x[:3], x[3])
        again = torch.autograd.grad(causal_attention(*x[:3], 0.3), x[:3], x[3])
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # deterministic
        for a, b in zip([out, *first], [ref_out, *ref_first], strict=True):
            err = float((a.detach().double().cpu() - b.detach()).norm() / b.norm())
            assert err < tol, (dtype, "first order", err)
        runs = {}
        for comp in (False, True):
            with attention.compiled_double_backward(comp):
                runs[comp] = _double_backward(
                    causal_attention, *x[:3], x[3], [c.to("cuda", dtype) for c in cot]
                )
            assert ("attention" in compiled._COMPILED) == comp  # eager first, then compiled
            for a, b in zip(runs[comp], ref, strict=True):
                err = float((a.double().cpu() - b).norm() / b.norm())
                assert err < tol, (dtype, comp, err)
        for a, b in zip(runs[True], runs[False], strict=True):  # compiled vs eager node
            err = float((a.double() - b.double()).norm() / b.double().norm())
            assert err < tol, (dtype, "compiled vs eager", err)
        monkeypatch.setattr(compiled, "_COMPILED", {})  # the next dtype starts eager again
    assert "failed" not in compiled._COMPILED
