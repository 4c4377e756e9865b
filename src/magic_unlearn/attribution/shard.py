"""The sharded parameter layout of multi-process MAGIC: flat shards, differentiable collectives.

The trained tensors of each unit (a decoder layer, or the rest of the model) are concatenated,
zero-padded to a multiple of the world size W and cut into W equal chunks; rank r keeps chunk r
as one leaf tensor, its *shard* (:class:`FlatShard`, FSDP's flat parameter). The shards are what
the optimiser updates, what the checkpoints store (per rank) and what the adjoints and optimiser
buffers are shaped like, so all of them take 1/W of the memory. The model reads the full tensors
through a parametrization (``torch.nn.utils.parametrize``) that all-gathers the unit's shards.

Gradients. :class:`AllGather` is an autograd function whose backward is :class:`ReduceScatter`
(sum), and the reduce-scatter's backward is the all-gather again, so the pair is differentiable to
any order. The training gradient w.r.t. a shard is then the reduce-scatter of the ranks'
full-tensor gradients (each over its own rows), and MAGIC's reverse step, a double backward
through that gradient, all-gathers the adjoint shards in its second pass and reduce-scatters the
Hessian-vector product. This is the ZeRO-3 / FSDP layout (Rajbhandari et al. 2020, "ZeRO: Memory
Optimizations Toward Training Trillion Parameter Models"; Zhao et al. 2023, "PyTorch FSDP") with
collectives that autograd can differentiate again; FSDP's own collectives run in hooks outside
autograd, which a create_graph backward cannot see through.

Rows. Every batch of B rows is split into W slices of ceil(B / W) rows; positions past B are
*ghost rows* (a copy of a real row with loss mask 0: zero gradient, zero score), so any B and W
work (the seed's batch of 4 on 8 GPUs included) with exact results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.utils import parametrize

from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.replay import Fingerprint
from magic_unlearn.attribution.trajectory import Batches
from magic_unlearn.data import TokenizedCorpus

# torch >= 2.13 names it reduce_scatter_single (reduce_scatter_tensor warns there)
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class ShardGroup:
    """The processes one run is sharded over.

    Attributes:
        rank: this process's index in ``group``.
        world_size: number of processes W.
        group: the process group (None: the default group).
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @classmethod
    def current(cls, group: Any = None) -> ShardGroup:
        """The initialised process group (``group`` or the default one), else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(group), dist.get_world_size(group), group)
        return cls()

    def chunk(self, numel: int) -> int:
        """Elements per shard of a tensor with ``numel`` elements."""
        return math.ceil(numel / self.world_size)


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision partial gradients are summed in fp32 (one rounding, as in one process)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class AllGather(torch.autograd.Function):
    """(chunk,) shard -> (W * chunk,) concatenation of all ranks' shards; backward: reduce-scatter."""

    @staticmethod
    def forward(ctx: Any, shard: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = shard.new_empty(dist.get_world_size(group) * shard.numel())
        dist.all_gather_into_tensor(out, shard.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        dt = grad.dtype
        return ReduceScatter.apply(grad.to(_reduce_dtype(dt)), ctx.group).to(dt), None


class ReduceScatter(torch.autograd.Function):
    """(W * chunk,) per-rank tensors -> (chunk,) slice of their sum; backward: all-gather."""

    @staticmethod
    def forward(ctx: Any, full: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = full.new_empty(full.numel() // dist.get_world_size(group))
        _reduce_scatter(out, full.contiguous(), op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return AllGather.apply(grad, ctx.group), None


def flat_shard(t: Tensor, sg: ShardGroup) -> Tensor:
    """This rank's chunk of ``t`` flattened and zero-padded to a multiple of W (a copy)."""
    n, c = t.numel(), sg.chunk(t.numel())
    flat = t.detach().reshape(-1)
    if c * sg.world_size > n:
        flat = torch.cat([flat, flat.new_zeros(c * sg.world_size - n)])
    return flat[sg.rank * c : (sg.rank + 1) * c].clone()


class FlatShard:
    """The trained tensors of one unit (a decoder layer, or the rest of the model) as one flat
    vector, of which this rank holds ``param`` (FSDP's flat parameter).

    One all-gather serves the whole unit, and in the backward one reduce-scatter: a few dozen
    collectives per pass instead of one per tensor. Within a forward of the root module the
    gathered tensors are computed once and shared by every read (``enter`` / ``exit``, called by
    the hooks :func:`shard_parameters` installs); outside one, every read gathers afresh.
    """

    def __init__(self, tensors: list[Tensor], sg: ShardGroup) -> None:
        self.sg = sg
        self.shapes = [t.shape for t in tensors]
        self.numels = [t.numel() for t in tensors]
        self.numel = sum(self.numels)
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        self.param = nn.Parameter(flat_shard(flat, sg), requires_grad=True)
        del flat
        self._depth = 0
        self._parts: list[Tensor] | None = None

    def parts(self) -> list[Tensor]:
        """The full tensors, differentiable in ``param`` (one split node: one gradient concat)."""
        if self._parts is not None:
            return self._parts
        p = self.param
        full = p if self.sg.world_size == 1 else AllGather.apply(p, self.sg.group)
        flat = full[: self.numel] if full.numel() > self.numel else full
        parts = [x.view(s) for x, s in zip(flat.split(self.numels), self.shapes, strict=True)]
        if self._depth > 0:
            self._parts = parts
        return parts

    def enter(self) -> None:
        self._depth += 1

    def exit(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._parts = None


class Gathered(nn.Module):
    """Parametrization: tensor ``index`` of a :class:`FlatShard`, in full (the module's own
    registered original is the flat shard itself, so ``model.parameters()`` lists the shards)."""

    def __init__(self, flat: FlatShard, index: int) -> None:
        super().__init__()
        self.flat = flat
        self.index = index

    def forward(self, original: Tensor) -> Tensor:
        return self.flat.parts()[self.index]


def _unit_of(model: nn.Module) -> dict[int, int]:
    """id(parameter) -> decoder layer index (parameters outside the layers are unit -1)."""
    from magic_unlearn.models import get_decoder_layers

    try:
        layers = get_decoder_layers(model)
    except ValueError:
        return {}
    return {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}


def shard_parameters(model: nn.Module, params: list[Tensor], sg: ShardGroup) -> list[FlatShard]:
    """Replace the trained parameters of ``model`` by flat shards, read through gathers.

    The tensors of ``params`` are grouped by unit (decoder layer, else the rest) and dtype into
    :class:`FlatShard` s. Every module holding one of them (tied weights: every one) gets the
    unit's shard as its parameter under a :class:`Gathered` parametrization, so
    ``module.weight`` is the full tensor, differentiable in the shard. The full tensors are freed
    once the caller lets go of ``params``. Forward hooks on ``model`` share each unit's gathered
    tensors within one forward.

    Returns:
        The flat shards; their ``param`` leaves are what the engine trains.
    """
    paths: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        paths.setdefault(id(p), []).append(name)
    unit = _unit_of(model)
    groups: dict[tuple[int, torch.dtype], list[Tensor]] = {}
    for p in params:
        if id(p) not in paths:
            raise ValueError("shard_parameters: a trained tensor is not a parameter of the model")
        groups.setdefault((unit.get(id(p), -1), p.dtype), []).append(p)
    flats = []
    for members in groups.values():
        flat = FlatShard(members, sg)
        for i, p in enumerate(members):
            for name in paths[id(p)]:
                mod_name, _, attr = name.rpartition(".")
                mod = model.get_submodule(mod_name)
                mod.register_parameter(attr, flat.param)
                parametrize.register_parametrization(mod, attr, Gathered(flat, i), unsafe=True)
        flats.append(flat)

    def enter(*_: Any) -> None:
        for f in flats:
            f.enter()

    def exit(*_: Any) -> None:
        for f in flats:
            f.exit()

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(exit, always_call=True)
    return flats


class ShardedFingerprint(Fingerprint):
    """The replay checksum of a sharded state: per-rank projections summed over the ranks.

    A flat shard of n elements is read as an (n // k, k) matrix (k = min(n, 4096)) plus a tail
    of n mod k elements, projected as ``r_a^T X r_b + r_t . tail``: random vectors of O(sqrt n)
    size, not one of n (``Fingerprint`` projects 1-D tensors with a vector as long as the
    tensor, which for a flat 6.9B shard would be another 28 GB). Every rank gets the same (P,)
    fingerprint, so every rank takes the same drift decision.
    """

    def __init__(self, params: list[Tensor], seed: int, sg: ShardGroup, width: int = 4096) -> None:
        # not Fingerprint.__init__: its vectors are what this class avoids
        g = torch.Generator().manual_seed(seed + 7919 * sg.rank)
        self.sg = sg
        self.parts: list[tuple[int, Tensor, Tensor, Tensor]] = []
        for p in params:
            n = p.numel()
            k = max(1, min(n, width))
            m = n // k
            dt = p.dtype if p.dtype == torch.float64 else torch.float32
            ra, rb, rt = (
                torch.randn(size, generator=g, dtype=torch.float64).to(p.device, dt)
                for size in (m, k, n - m * k)
            )
            self.parts.append((k, ra, rb, rt))

    @torch.no_grad()
    def __call__(self, params: list[Tensor]) -> Tensor:
        out = []
        for p, (k, ra, rb, rt) in zip(params, self.parts, strict=True):
            flat = p.reshape(-1).to(ra.dtype)
            m = ra.numel()
            v = ra @ (flat[: m * k].view(m, k) @ rb)
            if rt.numel():
                v = v + torch.dot(flat[m * k :], rt)
            out.append(v)
        fp = torch.stack(out).double()
        if self.sg.world_size > 1:
            dist.all_reduce(fp, group=self.sg.group)
        return fp


class ShardedBatches(Batches):
    """This rank's slice of every batch, with the token count n_t of the whole batch.

    Rank r takes batch positions ``[r b, (r + 1) b)``, b = ceil(B / W); positions past B are ghost
    rows (row 0 of the batch with loss mask 0), so every rank runs b rows and the sum over ranks
    of the per-rank gradients ``sum_i w_i l_i / n_t`` is the gradient of the whole batch.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        cfg: TrajectoryConfig,
        device: torch.device,
        dtype: torch.dtype,
        sg: ShardGroup,
        max_device_mb: float = 512.0,
    ) -> None:
        super().__init__(corpus, cfg, device, dtype, max_device_mb)
        b = math.ceil(cfg.batch_size / sg.world_size)
        pos = torch.arange(sg.rank * b, sg.rank * b + b)
        real = pos < cfg.batch_size
        self.sel = torch.where(real, pos, torch.zeros_like(pos))  # (b,) batch positions
        self.sel_dev = self.sel.to(device)
        self.keep = real.to(device, self.dtype)[:, None]  # (b, 1) 0 on ghost rows
        self.rows_local = int(real.sum())

    def device_index(self, t: int) -> Tensor:
        return super().device_index(t)[self.sel_dev]

    def __getitem__(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        idx, ids, am, lm, n_t = super().__getitem__(t)
        s = self.sel_dev
        return idx[self.sel], ids[s], None if am is None else am[s], lm[s] * self.keep, n_t


__all__ = [
    "AllGather",
    "Gathered",
    "ReduceScatter",
    "ShardGroup",
    "ShardedBatches",
    "ShardedFingerprint",
    "flat_shard",
    "shard_parameters",
]
