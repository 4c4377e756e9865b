"""Causal attention with a hand-derived double backward, for MAGIC's trajectory and reverse step.

The reverse step differentiates the training gradient once more (a double backward). Through
ordinary eager attention, autograd then replays the backward of every op of the softmax chain
(matmul, scale, mask, fp32 softmax, casts) and differentiates each again: ~40 passes over
(B, H, T, T) tensors per layer, most of a reverse step's time on a GPU. Here the attention core
``O = softmax(scale * Q K^T + causal) V`` is one autograd node:

- forward and first backward: on a GPU, FlashAttention kernels in half precision and the
  memory-efficient kernels in float32 (whose fp32 path multiplies with 3xTF32 tensor-core
  products, accurate to fp32), both backwards in their deterministic mode, so replays reproduce
  the recorded run bit for bit; explicit math elsewhere (CPU, float64, unsupported shapes). The
  engine uses the node for GPU runs in half precision and fp32; float64 (the reference) and CPU
  runs keep plain ops, see ``trajectory.exact_eager_attention``;
- the backward is itself one node, whose backward (the double backward) is written out below,
  from (Q, K, V, O, lse, dO) and the cotangents of (dQ, dK, dV).

Derivation (per batch and head; P = softmax(S), S = c Q K^T, D = rowsum(dO * O)):

    dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ = c dS K,  dK = c dS^T Q

Given cotangents (gQ, gK, gV) of (dQ, dK, dV):

    G    = c (gQ K^T + Q gK^T)                    cotangent of dS
    r    = rowsum(G * P)
    Pbar = dO gV^T + G * (dP - D) - r * dP        total cotangent of P (through dS, D, O and dV)
    Sbar = P * (Pbar - rowsum(P * Pbar))          through the softmax
    Qbar = c (dS gK + Sbar K)
    Kbar = c (dS^T gQ + Sbar^T Q)
    Vbar = (G * P)^T dO - P^T (r * dO)
    dObar = P gV + (G * P) V - r * O

Masked (future) positions have P = 0, so they drop out of every term. Tests check all of it
against autograd's own derivatives in float64 (``gradcheck``, ``gradgradcheck``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.utils.deterministic as det
from torch import Tensor
from torch.autograd.function import once_differentiable

from magic_unlearn.attribution.compiled import (
    CompileFallbackWarning,
    TensorSpec,
    compile_wanted,
    compiled_double_backward,
    note_double_backward,
    run_double_backward,
)


def _flash_ok(q: Tensor, k: Tensor) -> bool:
    """FlashAttention applies: CUDA, half precision, equal lengths, a supported head size."""
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and q.shape[-2] == k.shape[-2]
        and torch.backends.cuda.is_flash_attention_available()
    )


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """FlashAttention's backward accumulates dQ with atomics unless determinism is requested.

    The op has no argument for it, only the process-wide flag, which is set for this one call
    (other threads issuing GPU ops meanwhile see it too: at worst a nondeterministic-only op
    raises instead of running).
    """
    on = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False  # NaN-filling fresh buffers is only a debugging aid
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(on, warn_only=warn_only)
        det.fill_uninitialized_memory = fill


def _probs(q: Tensor, k: Tensor, lse: Tensor, scale: float) -> Tensor:
    """P = exp(c Q K^T - lse) with the causal mask, in float32 (float64 for float64 inputs)."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q, k.transpose(-1, -2)).to(acc)  # (B, H, T, S)
    t_q, t_k = s.shape[-2], s.shape[-1]
    s = s.mul_(scale).sub_(lse.unsqueeze(-1).to(acc))
    if t_q > 1:
        future = torch.ones(t_q, t_k, dtype=torch.bool, device=s.device).triu(t_k - t_q + 1)
        s = s.masked_fill_(future, float("-inf"))
    return s.exp_()


def _mem_efficient_ok(q: Tensor, k: Tensor) -> bool:
    """The memory-efficient kernels apply: CUDA, float32, equal lengths, a supported head size."""
    return (
        q.is_cuda
        and q.dtype == torch.float32
        and q.shape[-1] % 4 == 0
        and q.shape[-1] <= 128
        and q.shape[-2] == k.shape[-2]
    )


def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor, tuple]:
    """(O (B, H, T, hd), lse (B, H, T), kernel extras for the backward: () for explicit math)."""
    if _flash_ok(q, k):
        o, lse, cq, ck, mq, mk, seed, offset, _ = (
            torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, 0.0, True, False, scale=scale
            )
        )
        return o, lse, ("flash", cq, ck, mq, mk, seed, offset)
    if _mem_efficient_ok(q, k):
        o, lse_pad, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, True, scale=scale
        )
        # the kernel pads lse to a multiple of 32 rows; its backward wants it as returned
        return o, lse_pad[..., : q.shape[-2]], ("efficient", lse_pad, seed, offset)
    acc = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q, k.transpose(-1, -2)).to(acc).mul_(scale)  # (B, H, T, S)
    t_q, t_k = s.shape[-2], s.shape[-1]
    if t_q > 1:
        future = torch.ones(t_q, t_k, dtype=torch.bool, device=s.device).triu(t_k - t_q + 1)
        s = s.masked_fill_(future, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (B, H, T)
    p = s.sub_(lse.unsqueeze(-1)).exp_()
    return torch.matmul(p.to(v.dtype), v), lse, ()


def _backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, scale: float, extras: tuple
) -> tuple[Tensor, Tensor, Tensor]:
    if extras and extras[0] == "flash":
        cq, ck, mq, mk, seed, offset = extras[1:]
        with _deterministic():
            dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                do.contiguous(),
                q,
                k,
                v,
                o,
                lse,
                cq,
                ck,
                mq,
                mk,
                0.0,
                True,
                seed,
                offset,
                scale=scale,
            )
        return dq, dk, dv
    if extras and extras[0] == "efficient":
        lse_pad, seed, offset = extras[1:]
        # deterministic mode: one key split, no atomics (replays stay bit-exact)
        with _deterministic():
            dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                do.contiguous(),
                q,
                k,
                v,
                None,
                o,
                lse_pad,
                seed,
                offset,
                0.0,
                [True, True, True, False],
                True,
                scale=scale,
            )
        return dq, dk, dv
    p = _probs(q, k, lse, scale)  # (B, H, T, S)
    acc = p.dtype
    dv = torch.matmul(p.to(do.dtype).transpose(-1, -2), do)
    dp = torch.matmul(do, v.transpose(-1, -2)).to(acc)
    d = (do.to(acc) * o.to(acc)).sum(-1, keepdim=True)  # (B, H, T, 1)
    ds = p.mul_(dp.sub_(d)).to(q.dtype)  # P * (dP - D)
    dq = torch.matmul(ds, k) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q) * scale
    return dq, dk, dv


def _grad_grad(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Tensor,
    do: Tensor,
    gq: Tensor | None,
    gk: Tensor | None,
    gv: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cotangents of (Q, K, V, dO) from those of (dQ, dK, dV); see the module docstring."""
    lo = q.dtype
    p = _probs(q, k, lse, scale)  # (B, H, T, S) float32+
    acc = p.dtype
    x = torch.matmul(do, v.transpose(-1, -2)).to(acc)  # dP
    d = (do.to(acc) * o.to(acc)).sum(-1, keepdim=True)  # (B, H, T, 1)
    dp = x.clone()
    x = x.sub_(d)  # dP - D
    ds = (p * x).to(lo)
    g = None
    if gq is not None:
        g = torch.matmul(gq.to(lo), k.transpose(-1, -2)).to(acc)
    if gk is not None:
        t = torch.matmul(q, gk.to(lo).transpose(-1, -2)).to(acc)
        g = t if g is None else g.add_(t)
    if g is not None:
        g = g.mul_(scale)
        gp = g * p
        r = gp.sum(-1, keepdim=True)  # (B, H, T, 1)
        pbar = x.mul_(g).sub_(dp.mul_(r))  # G * (dP - D) - r * dP
    else:
        gp = r = None
        pbar = x.zero_()
    if gv is not None:
        pbar = pbar.add_(torch.matmul(do, gv.to(lo).transpose(-1, -2)))
    sbar = (pbar - (p * pbar).sum(-1, keepdim=True)).mul_(p).to(lo)
    p_lo = p.to(lo)
    qbar = torch.matmul(sbar, k)
    kbar = torch.matmul(sbar.transpose(-1, -2), q)
    if gk is not None:
        qbar = qbar + torch.matmul(ds, gk.to(lo))
    if gq is not None:
        kbar = kbar + torch.matmul(ds.transpose(-1, -2), gq.to(lo))
    qbar, kbar = qbar * scale, kbar * scale
    dobar = torch.zeros_like(do)
    vbar = torch.zeros_like(v)
    if gv is not None:
        dobar = dobar + torch.matmul(p_lo, gv.to(lo))
    if gp is not None:
        assert r is not None
        gp_lo = gp.to(lo)
        vbar = vbar + torch.matmul(gp_lo.transpose(-1, -2), do)
        vbar = vbar - torch.matmul(p_lo.transpose(-1, -2), (r * do.to(acc)).to(lo))
        dobar = dobar + torch.matmul(gp_lo, v) - (r * o.to(acc)).to(do.dtype)
    return qbar, kbar, vbar, dobar


class _AttnGrad(torch.autograd.Function):
    """(Q, K, V, dO) -> (dQ, dK, dV): the attention backward as a differentiable node."""

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        do: Tensor,
        o: Tensor,
        lse: Tensor,
        scale: float,
        extras: tuple,
        compile_gg: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(q, k, v, do, o, lse)
        ctx.scale, ctx.compile_gg = scale, compile_gg
        return _backward(q, k, v, o, lse, do, scale, extras)

    @staticmethod
    @once_differentiable
    def backward(
        ctx, gq: Tensor | None, gk: Tensor | None, gv: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        q, k, v, do, o, lse = ctx.saved_tensors
        qbar, kbar, vbar, dobar = run_double_backward(
            "attention", _grad_grad, ctx.compile_gg, q, k, v, o, lse, do, gq, gk, gv, ctx.scale
        )
        return qbar, kbar, vbar, dobar, None, None, None, None, None


class _Attn(torch.autograd.Function):
    """O = softmax(scale * Q K^T + causal mask) V, twice differentiable."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, compile_gg: bool) -> Tensor:
        o, lse, extras = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.extras, ctx.compile_gg = scale, extras, compile_gg
        # the double backward a reverse step will compile (compiled.precompile)
        t = TensorSpec(tuple(q.shape), q.dtype, q.device)
        tl = TensorSpec(tuple(lse.shape), lse.dtype, q.device)
        note_double_backward("attention", _grad_grad, t, t, t, t, tl, t, t, t, t, scale)
        return o

    @staticmethod
    def backward(ctx, do: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        # O and lse enter as constants: _AttnGrad's own backward differentiates through them
        dq, dk, dv = _AttnGrad.apply(
            q, k, v, do, o.detach(), lse.detach(), ctx.scale, ctx.extras, ctx.compile_gg
        )
        return dq, dk, dv, None, None


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal softmax attention, (B, H, T, hd) inputs of one dtype -> (B, H, T, hd).

    Rows attend to keys at positions <= their own (aligned to the end when S > T). The softmax
    runs in float32 (float64 for float64 inputs); matmuls stay in the input dtype.
    """
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"causal_attention needs one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return _Attn.apply(q, k, v, float(scale), compile_wanted())


__all__ = ["CompileFallbackWarning", "causal_attention", "compiled_double_backward"]
