"""MAGIC's reverse step: optimiser VJP, Hessian-vector product and per-token scores of step t.

Per step t, with the live state at s_t (Ilyas & Engstrom 2025, "MAGIC"):

    (adj s_t, adj g_t) = VJP of U_t at adj s_{t+1}                 (elementwise, optim.py)
    h = d/d(theta, w) <g_t(theta, w), adj g_t>      (one backward through the graph of g_t)
    adj theta_t += h_theta   (Hessian-vector product)
    score_i     += h_{w_i} = <adj g_t, grad l_i> / n_t             (per-token scores of step t)

Several measurements share the first backward (the graph of g_t); each adds one second backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from magic_unlearn.attribution.attention import compiled_double_backward
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.replay import Replay
from magic_unlearn.attribution.trajectory import weighted_grads


@dataclass
class ReverseState:
    """What the reverse pass carries from step t+1 to step t, per query.

    Attributes:
        adj_params: adjoint of theta_{t+1}, one tensor per trained tensor (>= fp32).
        adj_buffers: adjoints of the optimiser buffers, ``[buffer][param]``.
        scores: (N, L) per-token scores accumulated over the steps done so far.
    """

    adj_params: dict[str, list[Tensor]]
    adj_buffers: dict[str, list[list[Tensor]]]
    scores: dict[str, Tensor]

    @property
    def queries(self) -> list[str]:
        return list(self.adj_params)

    def named_tensors(self) -> dict[str, Tensor]:
        """Every tensor under a stable name (what the resume state saves and restores)."""
        out: dict[str, Tensor] = {}
        for q in self.adj_params:
            for i, a in enumerate(self.adj_params[q]):
                out[f"adj_p.{q}.{i}"] = a
            for j, bl in enumerate(self.adj_buffers[q]):
                for i, a in enumerate(bl):
                    out[f"adj_b.{q}.{j}.{i}"] = a
            out[f"scores.{q}"] = self.scores[q]
        return out


class ReverseFn:
    """The fused double backward of one micro-batch for Q queries, accumulating in place.

    Called as ``fn(ids, lm, n_t, idx, [am], *gbar, *adj, *scores)`` with, per query, the adjoint
    of g_t (one tensor per parameter), the adjoint of theta_t (updated in place with the HVP)
    and the (N, L) score table (rows ``idx`` get d/dw_i <g, gbar> = <gbar, grad l_i> / n_t).
    In-place updates of persistent tensors let one CUDA graph hold the whole step.
    """

    def __init__(
        self, model: nn.Module, params: list[Tensor], cfg: TrajectoryConfig, nq: int, masked: bool
    ) -> None:
        self.model, self.params, self.cfg, self.nq, self.masked = model, params, cfg, nq, masked

    def __call__(
        self, ids: Tensor, lm: Tensor, n_t: Tensor, idx: Tensor, *rest: Tensor
    ) -> list[Tensor]:
        am = rest[0] if self.masked else None
        rest = rest[1:] if self.masked else rest
        n_p, nq = len(self.params), self.nq
        gbars, adjs, tables = rest[: nq * n_p], rest[nq * n_p : 2 * nq * n_p], rest[2 * nq * n_p :]
        w = torch.ones_like(lm).requires_grad_()  # (b, L) token weights at w = 1
        with compiled_double_backward(self.cfg.compile_attention):
            g, _ = weighted_grads(
                self.model, self.params, ids, am, lm, n_t, w, self.cfg, create_graph=True
            )
        live = [i for i, gi in enumerate(g) if gi.requires_grad]
        for q in range(nq):
            gbar = gbars[q * n_p : (q + 1) * n_p]
            # VJP of g in direction gbar = d/d(theta, w) <g, gbar>: HVP and per-token scores
            res = torch.autograd.grad(
                [g[i] for i in live],
                [*self.params, w],
                grad_outputs=[gbar[i].to(g[i].dtype) for i in live],
                retain_graph=q < nq - 1,
                allow_unused=True,
            )
            with torch.no_grad():
                pairs = [(adjs[q * n_p + i], h) for i, h in enumerate(res[:-1]) if h is not None]
                same = [(a, h) for a, h in pairs if a.dtype == h.dtype]
                if same:
                    torch._foreach_add_([a for a, _ in same], [h for _, h in same])
                for a, h in pairs:
                    if a.dtype != h.dtype:  # half-precision HVP into an fp32 adjoint: upcast
                        a.add_(h)  # element by element, not a full fp32 copy of the HVP
                if res[-1] is not None:
                    tables[q].index_add_(0, idx, (res[-1] * lm).to(tables[q].dtype))
            del res
        return []


class ReverseStep:
    """One fused reverse step at t (live state = s_t): optimiser VJP, HVP and per-token scores.

    The batch may be split into ``cfg.reverse_microbatch`` rows: the HVP and the token
    derivatives are sums over rows, so only the activations of one micro-batch are alive.
    On a GPU each micro-batch shape is one CUDA graph (``cfg.cuda_graphs``), kept in the
    replay's graph cache; the adjoints of g_t are buffers reused by every step.
    """

    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self.fns: dict[int, ReverseFn] = {}  # by number of queries
        self.gbar: dict[str, list[Tensor]] = {}  # adjoints of g_t, reused every step

    def __call__(self, t: int, state: ReverseState) -> None:
        rp = self.replay
        cfg, params, opt = rp.cfg, rp.params, rp.opt
        idx, ids, am, lm, n_t = rp.batches[t]
        bsz = ids.shape[0]
        mb = min(cfg.reverse_microbatch or bsz, bsz)
        spans = [(s, min(s + mb, bsz)) for s in range(0, bsz, mb)]
        queries = state.queries
        g_full = None
        if opt.vjp_needs_grad:  # g_t is needed before any HVP
            g_full = [torch.zeros_like(p) for p in params]
            for s, e in spans:
                gs, _ = rp.grads(ids[s:e], None if am is None else am[s:e], lm[s:e], n_t)
                torch._foreach_add_(g_full, gs)
        if not self.gbar:
            self.gbar = {q: [torch.empty_like(a) for a in state.adj_params[q]] for q in queries}
        for q in queries:
            opt.vjp(
                params,
                rp.bufs,
                g_full,
                t,
                state.adj_params[q],
                state.adj_buffers[q],
                out=self.gbar[q],
            )
        del g_full
        fn = self.fns.get(len(queries))
        if fn is None:
            fn = self.fns[len(queries)] = ReverseFn(
                rp.model, params, cfg, len(queries), masked=am is not None
            )
        persistent = [
            *(x for q in queries for x in self.gbar[q]),
            *(x for q in queries for x in state.adj_params[q]),
            *(state.scores[q] for q in queries),
        ]
        dev_idx = rp.batches.device_index(t)
        for s, e in spans:
            inputs = [ids[s:e], lm[s:e], n_t.reshape(()), dev_idx[s:e]]
            inputs += [am[s:e]] if am is not None else []
            rp.grads.graphs.run("reverse", fn, inputs, persistent, in_place=True)


__all__ = ["ReverseFn", "ReverseState", "ReverseStep"]
