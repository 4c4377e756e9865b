"""LayerNorm and GELU as autograd nodes with hand-derived, fused double backwards.

MAGIC's reverse step differentiates the training gradient (a double backward). Autograd's
generic double backward of a LayerNorm is ~90 elementwise kernels and of an exact GELU ~10; in a
Pythia-160m reverse step the 25 LayerNorms alone were ~2,300 of its ~6,000 kernels. Here each
layer is one node whose forward and first backward are the same ATen kernels plain autograd runs
(``native_layer_norm`` / ``native_layer_norm_backward``, ``gelu`` / ``gelu_backward``), so the
trajectory is bit-identical to the plain ops; the backward is itself a node whose backward (the
double backward) is written out below and, on a GPU, fused by ``torch.compile``
(``compiled.py``). Tests check the formulas against autograd in float64 (``gradcheck``,
``gradgradcheck``).

LayerNorm, per row of D features: xh = (x - mean) r, r = 1 / sqrt(var + eps), y = xh w + b.
Backward: g = dy w, dx = r (g - mean(g) - xh mean(g xh)), dw = sum_rows dy xh, db = sum_rows dy.
Double backward, from cotangents (a, cw, cb) of (dx, dw, db), with ah = a - mean(a) - xh mean(a xh):

    bar dy = r w ah + cw xh + cb
    bar w  = sum_rows r dy ah
    P      = -r (a mean(g xh) + g mean(a xh)) + cw dy        (partial in xh, r held fixed)
    s      = sum(g ah)                                       (partial in r, xh held fixed)
    bar x  = r (P - mean(P) - xh mean(P xh)) - s r^2 xh / D

GELU (exact, erf form): y = x Phi(x), y' = Phi(x) + x phi(x), y'' = phi(x) (2 - x^2); backward
dx = dy y'(x); double backward from the cotangent a of dx: bar dy = a y'(x), bar x = a dy y''(x).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from magic_unlearn.attribution import compiled
from magic_unlearn.attribution.compiled import (
    TensorSpec,
    compile_wanted,
    note_double_backward,
    run_double_backward,
)

# ----------------------------------------------------------------------------- LayerNorm


def _layer_norm_grad_grad(
    dy: Tensor,
    x: Tensor,
    w: Tensor,
    mean: Tensor,
    rstd: Tensor,
    a: Tensor | None,
    cw: Tensor | None,
    cb: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(bar dy, bar x, bar w) from the cotangents of (dx, dw, db); see the module docstring."""
    acc = torch.promote_types(x.dtype, torch.float32)
    d = x.shape[-1]
    xf, dyf, wf = x.to(acc), dy.to(acc), w.to(acc)
    r = rstd.to(acc)  # (..., 1)
    xh = (xf - mean.to(acc)) * r  # (..., D)
    g = dyf * wf
    bar_dy = torch.zeros_like(dyf)
    p = torch.zeros_like(xf)
    s = None
    bar_w = None
    if a is not None:
        af = a.to(acc)
        ax = (af * xh).mean(-1, keepdim=True)
        ah = af - af.mean(-1, keepdim=True) - ax * xh
        m = (g * xh).mean(-1, keepdim=True)
        p = -r * (af * m + g * ax)
        s = (g * ah).sum(-1, keepdim=True)
        bar_dy = bar_dy + wf * r * ah
        bar_w = (dyf * r * ah).reshape(-1, d).sum(0)
    if cw is not None:
        cwf = cw.to(acc)
        p = p + cwf * dyf
        bar_dy = bar_dy + cwf * xh
    if cb is not None:
        bar_dy = bar_dy + cb.to(acc)
    bar_x = r * (p - p.mean(-1, keepdim=True) - xh * (p * xh).mean(-1, keepdim=True))
    if s is not None:
        bar_x = bar_x - s * r * r * xh / d
    return (
        bar_dy.to(dy.dtype),
        bar_x.to(x.dtype),
        None if bar_w is None else bar_w.to(w.dtype),
    )


class _LayerNormGrad(torch.autograd.Function):
    """(dy, x, w) -> (dx, dw, db): the LayerNorm backward as a differentiable node."""

    @staticmethod
    def forward(
        ctx,
        dy: Tensor,
        x: Tensor,
        w: Tensor,
        b: Tensor,
        mean: Tensor,
        rstd: Tensor,
        compile_gg: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.save_for_backward(dy, x, w, mean, rstd)
        ctx.compile_gg = compile_gg
        ctx.set_materialize_grads(False)
        return torch.ops.aten.native_layer_norm_backward(
            dy, x, [x.shape[-1]], mean, rstd, w, b, [True, True, True]
        )

    @staticmethod
    @once_differentiable
    def backward(
        ctx, a: Tensor | None, cw: Tensor | None, cb: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        dy, x, w, mean, rstd = ctx.saved_tensors
        bar_dy, bar_x, bar_w = run_double_backward(
            "layer_norm", _layer_norm_grad_grad, ctx.compile_gg, dy, x, w, mean, rstd, a, cw, cb
        )
        # the bias enters neither dx nor dw nor db
        return bar_dy, bar_x, bar_w, None, None, None, None


class _LayerNorm(torch.autograd.Function):
    """y = LayerNorm(x) w + b over the last dimension, twice differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor, eps: float, compile_gg: bool) -> Tensor:
        y, mean, rstd = torch.native_layer_norm(x, [x.shape[-1]], w, b, eps)
        ctx.save_for_backward(x, w, b, mean, rstd)
        ctx.compile_gg = compile_gg
        # the double backward a reverse step will compile (compiled.precompile)
        sx = TensorSpec(tuple(x.shape), x.dtype, x.device)
        sw = TensorSpec(tuple(w.shape), w.dtype, x.device)
        sm = TensorSpec(tuple(mean.shape), mean.dtype, x.device)
        note_double_backward("layer_norm", _layer_norm_grad_grad, sx, sx, sw, sm, sm, sx, sw, sw)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, w, b, mean, rstd = ctx.saved_tensors
        # mean and rstd enter as constants: _LayerNormGrad's backward differentiates through them
        dx, dw, db = _LayerNormGrad.apply(dy, x, w, b, mean.detach(), rstd.detach(), ctx.compile_gg)
        return dx, dw, db, None, None


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``F.layer_norm`` over the last dimension with weight and bias, as one fused node.

    Under autocast it computes in float32, as autocast runs ``layer_norm``.
    """
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        x, weight, bias = x.float(), weight.float(), bias.float()
    with torch.autocast(dev, enabled=False):
        return _LayerNorm.apply(x, weight, bias, float(eps), compile_wanted())


# ----------------------------------------------------------------------------- GELU

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad_grad(dy: Tensor, x: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """(bar dy, bar x) from the cotangent a of dx = dy gelu'(x); see the module docstring."""
    acc = torch.promote_types(x.dtype, torch.float32)
    xf, af = x.to(acc), a.to(acc)
    phi = torch.exp(-0.5 * xf * xf) * _INV_SQRT2PI
    d1 = 0.5 * (1.0 + torch.erf(xf * _INV_SQRT2)) + xf * phi  # gelu'(x)
    d2 = phi * (2.0 - xf * xf)  # gelu''(x)
    return (af * d1).to(dy.dtype), (af * dy.to(acc) * d2).to(x.dtype)


class _GeluGrad(torch.autograd.Function):
    """(dy, x) -> dx = dy gelu'(x) as a differentiable node."""

    @staticmethod
    def forward(ctx, dy: Tensor, x: Tensor, compile_gg: bool) -> Tensor:
        ctx.save_for_backward(dy, x)
        ctx.compile_gg = compile_gg
        return torch.ops.aten.gelu_backward(dy, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, a: Tensor) -> tuple[Tensor | None, ...]:
        dy, x = ctx.saved_tensors
        bar_dy, bar_x = run_double_backward("gelu", _gelu_grad_grad, ctx.compile_gg, dy, x, a)
        return bar_dy, bar_x, None


class _Gelu(torch.autograd.Function):
    """y = x Phi(x) (exact GELU), twice differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor, compile_gg: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.compile_gg = compile_gg
        sx = TensorSpec(tuple(x.shape), x.dtype, x.device)  # for compiled.precompile
        note_double_backward("gelu", _gelu_grad_grad, sx, sx, sx)
        return F.gelu(x)

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        return _GeluGrad.apply(dy, x, ctx.compile_gg), None


def gelu(x: Tensor) -> Tensor:
    """Exact GELU (``F.gelu``) as one fused node (autocast leaves GELU in the input dtype)."""
    return _Gelu.apply(x, compile_wanted())


# ----------------------------------------------------------------------------- model patching


def _compute_dtype(x: Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


class FusedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` that runs as the fused node where ``compiled.fused_nodes_apply``.

    Same weights, same forward and first backward kernels, hence the same trajectory.
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.LayerNorm's signature
        if (
            self.weight is not None
            and self.bias is not None
            and len(self.normalized_shape) == 1
            and compiled.fused_nodes_apply(input.device.type, _compute_dtype(input))
        ):
            return layer_norm(input, self.weight, self.bias, self.eps)
        return super().forward(input)


def _gelu_forward(self: nn.Module, input: Tensor) -> Tensor:  # noqa: A002
    if compiled.fused_nodes_apply(input.device.type, _compute_dtype(input)):
        return gelu(input)
    return F.gelu(input)


def use_fused_layers(model: nn.Module) -> int:
    """Run the model's LayerNorms and exact GELUs as the fused nodes; returns how many.

    ``nn.LayerNorm`` modules (exactly that class, with weight and bias) become
    ``FusedLayerNorm`` (a subclass: same parameters and state dict). transformers'
    ``GELUActivation`` modules whose function is the exact ``F.gelu`` call ``gelu`` instead. On
    CPUs and in float64 both keep the plain ops.
    """
    try:  # transformers is imported where it is used (models.py), and it may be absent here
        from transformers.activations import GELUActivation
    except ImportError:  # pragma: no cover - transformers is a dependency
        GELUActivation = None  # noqa: N806
    n = 0
    for m in model.modules():
        if type(m) is nn.LayerNorm and m.elementwise_affine and m.bias is not None:
            m.__class__ = FusedLayerNorm
            n += 1
        elif (
            GELUActivation is not None
            and isinstance(m, GELUActivation)
            and getattr(m, "act", None) is F.gelu
        ):
            m.act = _gelu_forward.__get__(m)
            n += 1
    return n


__all__ = [
    "FusedLayerNorm",
    "gelu",
    "layer_norm",
    "use_fused_layers",
]
