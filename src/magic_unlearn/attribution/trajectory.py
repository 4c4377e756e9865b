"""The forward trajectory: deterministic weighted fine-tuning that MAGIC replays and differentiates.

Step t trains on rows ``batch_order(n, cfg)[t]`` with loss
``sum_i w_i * l_i / n_t`` where l_i is the NLL of target token i, w_i its weight (1 by default)
and n_t the number of target tokens in the batch (a constant that does not depend on w, so
w = 1 is ordinary mean-token training).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from magic_unlearn.attribution import compiled
from magic_unlearn.attribution.attention import causal_attention
from magic_unlearn.attribution.config import TrajectoryConfig
from magic_unlearn.attribution.graphs import GraphCache
from magic_unlearn.attribution.layers import use_fused_layers
from magic_unlearn.attribution.optim import TrajectoryOptimizer, make_optimizer
from magic_unlearn.data import TokenizedCorpus, per_token_nll
from magic_unlearn.lora import apply_lora
from magic_unlearn.models import matmul_tf32, resolve_dtype


def batch_order(n: int, cfg: TrajectoryConfig) -> Tensor:
    """(T, B) row indices: consecutive slices of one fixed permutation per epoch (seed + epoch)."""
    need = cfg.steps * cfg.batch_size
    perms = [
        torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + e))
        for e in range(math.ceil(need / n))
    ]
    return torch.cat(perms)[:need].view(cfg.steps, cfg.batch_size)


# True while the engine runs a model on rows it knows need only the causal mask (no padding
# mask given): "eager_exact" attention then ignores a mask transformers built anyway (it builds
# one during CUDA graph capture, where it cannot check for padding without a host sync)
_PLAIN_CAUSAL: contextvars.ContextVar[bool] = contextvars.ContextVar("plain_causal", default=False)


def per_token_loss(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``per_token_nll`` with the engine's plain-causal marker set when no mask is given."""
    token = _PLAIN_CAUSAL.set(attention_mask is None)
    try:
        return per_token_nll(model, input_ids, attention_mask)
    finally:
        _PLAIN_CAUSAL.reset(token)


def exact_eager_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, Tensor]:
    """Exact, twice-differentiable, graph-safe attention for MAGIC ("eager_exact").

    Plain causal attention (``attention_mask`` None, or the engine's right-padded rows, see
    ``_PLAIN_CAUSAL``) on a GPU in half precision or fp32 is the ``causal_attention`` node
    (``compiled.fused_nodes_apply``). Otherwise
    plain ops: ``attention_mask`` is a boolean (True = attend) or additive float mask, or None
    (causal, applied with device-side kernels only), and the softmax runs in float32 (float64
    for float64 inputs: transformers' eager attention always uses float32, which caps float64
    finite-difference checks at ~1e-7 absolute noise).
    """
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    plain = attention_mask is None or (
        _PLAIN_CAUSAL.get() and not getattr(getattr(module, "config", None), "sliding_window", None)
    )
    dev = query.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    if (
        plain
        and compiled.fused_nodes_apply(dev, dt)
        and getattr(module, "is_causal", True)
        and not (dropout and module.training)
        and not kwargs.get("output_attentions")
    ):
        # a GPU in half precision or fp32: one node, FlashAttention (half) or memory-efficient
        # (fp32) kernels forward and backward, and a fused double backward. CPUs and float64
        # keep the plain ops below: same math, but MAGIC through AdamW's first step is
        # ill-conditioned in fp32 (docs/benchmarks.md), and the node's different rounding moved
        # fp32 CPU scores by chance (tiny-world LDS 0.89 -> 0.61), so CPU runs stay as measured
        out = causal_attention(query.to(dt), key.to(dt), value.to(dt), scaling)
        return out.transpose(1, 2).contiguous(), None  # (B, T, H, hd)
    attn = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    t_q, t_k = attn.shape[-2], attn.shape[-1]
    if attention_mask is not None:
        m = attention_mask[:, :, :, :t_k]
        if m.dtype == torch.bool:
            attn = attn.masked_fill(~m, torch.finfo(attn.dtype).min)
        else:
            attn = attn + m
    elif getattr(module, "is_causal", True) and t_q > 1:
        future = torch.ones(t_q, t_k, dtype=torch.bool, device=attn.device).triu(t_k - t_q + 1)
        attn = attn.masked_fill(future, torch.finfo(attn.dtype).min)  # (T, S) broadcast
    sm_dtype = torch.promote_types(query.dtype, torch.float32)
    attn = F.softmax(attn, dim=-1, dtype=sm_dtype).to(query.dtype)
    attn = F.dropout(attn, p=dropout, training=module.training)
    out = torch.matmul(attn, value).transpose(1, 2).contiguous()  # (B, T, H, hd)
    return out, attn


def _exact_mask(*args: Any, **kwargs: Any) -> Tensor | None:
    """transformers' boolean SDPA mask, None when the attention is plain causal.

    transformers skips the mask for unpadded causal inputs, except while a CUDA graph is being
    captured (some versions then always build it); without a padding mask, full-length queries
    and the plain causal mask function there is nothing to build, so None is returned here
    directly and the captured step runs the same fused attention as an eager one.
    """
    # transformers is imported where it is used, as everywhere in the package (models.py):
    # importing it costs seconds, and ``import magic_unlearn.attribution`` should not
    from transformers.masking_utils import sdpa_mask

    kwargs.pop("dtype", None)
    q_len = kwargs.get("q_length")
    if q_len is None and kwargs.get("cache_position") is not None:
        q_len = kwargs["cache_position"].shape[0]
    fn = kwargs.get("mask_function")
    if (
        not args
        and kwargs.get("attention_mask") is None
        and kwargs.get("allow_is_causal_skip", True)
        and (fn is None or getattr(fn, "__name__", "") == "causal_mask_function")
        and kwargs.get("local_size") is None
        and q_len is not None
        and q_len == kwargs.get("kv_length")
        and not isinstance(kwargs.get("q_offset"), Tensor)
        and not kwargs.get("q_offset")
        and not kwargs.get("kv_offset")
    ):
        return None
    return sdpa_mask(*args, **kwargs)


def _register_exact_attention() -> None:
    # lazy for the reason given in _exact_mask
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register("eager_exact", exact_eager_attention)
    # custom attention names get no mask unless a mask builder is registered too
    ALL_MASK_ATTENTION_FUNCTIONS.register("eager_exact", _exact_mask)


def use_exact_attention(model: nn.Module) -> None:
    """Switch "eager" and "sdpa" attention to "eager_exact" (same math, twice differentiable).

    Unpadded causal attention (the engine's right-padded rows) runs as one node,
    ``attention.causal_attention``: FlashAttention forward and deterministic backward on a GPU,
    a hand-derived double backward everywhere. Masked attention runs plain ops with the softmax
    in fp32 (float64 for float64 models). Why not SDPA itself: its fused kernels have no double
    backward and their backward sums in a varying order (replays would drift), and its math
    kernel upcasts bf16 inputs to fp32 (slow non-tensor-core GEMMs under autocast).
    """
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "_attn_implementation", None) not in ("eager", "sdpa"):
        return
    _register_exact_attention()
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and getattr(c, "_attn_implementation", None) in ("eager", "sdpa"):
            c._attn_implementation = "eager_exact"


def trajectory_matmuls(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn(..., cfg, ...)`` with CUDA float32 matmuls as ``cfg.precision`` says: TF32 for
    "tf32", true float32 otherwise, whatever the caller's process-global flag (restored after).

    float32 must mean float32 in MAGIC: TF32 matmuls (left on by a caller, e.g. pretraining in
    the same process) put ~1e-3 relative error in every step, which AdamW's first reverse steps
    amplify (docs/benchmarks.md, "Small world again, after the TF32 fix"); "tf32" asks for them.
    """
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cfg = sig.bind_partial(*args, **kwargs).arguments["cfg"]
        with matmul_tf32(cfg.precision == "tf32"):
            return fn(*args, **kwargs)

    return wrapper


def autocast_ctx(cfg: TrajectoryConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "bf16":
        # no weight-cast cache: CUDA graph capture needs it off, and it saves nothing here
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def prepare_model(
    model: nn.Module, cfg: TrajectoryConfig, inplace: bool = False, exact_attention: bool = True
) -> tuple[nn.Module, list[Tensor]]:
    """Copy (unless inplace), cast to ``cfg.dtype``, add LoRA adapters; return (model, trainables).

    Full training differentiates all parameters; with ``cfg.lora`` only the adapter weights
    (peft, initialised from ``cfg.seed``) train and everything else is frozen.
    """
    if not inplace:
        model = copy.deepcopy(model)
    dt = resolve_dtype(cfg.dtype)
    if dt is not None:
        model = model.to(dt)
    model.eval()  # dropout off: the trajectory must replay exactly
    if exact_attention:
        use_exact_attention(model)
        use_fused_layers(model)  # LayerNorm / GELU nodes (GPU, half precision and fp32)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if cfg.lora is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            # adapters of a half-precision base stay float32 (peft's autocast_adapter_dtype)
            model = apply_lora(model, cfg.lora)
        model.eval()
        params = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
    if not params:
        raise ValueError("no trainable parameters (check TrajectoryConfig.lora.target_modules)")
    return model, params


def check_corpus(corpus: TokenizedCorpus, cfg: TrajectoryConfig) -> None:
    if len(corpus) == 0:
        raise ValueError("corpus has no rows")
    if float(corpus.loss_mask.sum()) == 0:
        raise ValueError("corpus has no target tokens (loss_mask is all zero)")


def right_padded(corpus: TokenizedCorpus) -> bool:
    """True when every row is real tokens then padding, and no padding position is a target.

    Then the causal mask alone is exact for every target: a real token never attends to a later
    pad, and pad outputs carry zero loss weight. The model is called without ``attention_mask``
    (no mask build, and no host sync in it, which CUDA graph capture needs).
    """
    am = corpus.attention_mask
    return bool((am[:, 1:] <= am[:, :-1]).all()) and bool((corpus.loss_mask <= am).all())


class Batches:
    """Device-resident batches of the fixed data order (inputs, masks, indices, n_t).

    On a GPU the corpus rows are copied to the device once when they fit in ``max_device_mb``
    (else each batch goes through pinned memory): a copy from pageable host memory blocks the
    host until the GPU has caught up, which would stall every step of a CUDA-graphed run.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        cfg: TrajectoryConfig,
        device: torch.device,
        dtype: torch.dtype,
        max_device_mb: float = 512.0,
    ) -> None:
        self.order = batch_order(len(corpus), cfg)  # (T, B)
        self.corpus = corpus
        self.device = device
        # masks and token counts stay >= fp32: bf16 cannot even count 4096 targets exactly
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self.needs_mask = not right_padded(corpus)
        c = corpus
        nbytes = sum(
            x.numel() * x.element_size() for x in (c.input_ids, c.attention_mask, c.loss_mask)
        )
        self.resident = device.type == "cuda" and nbytes <= max_device_mb * 2**20
        if self.resident:
            self.order_dev = self.order.to(device)
            self.rows = (
                c.input_ids.to(device),
                c.attention_mask.to(device) if self.needs_mask else None,
                c.loss_mask.to(device, self.dtype),
            )

    def device_index(self, t: int) -> Tensor:
        """(B,) row indices of step t on the device."""
        if self.resident:
            return self.order_dev[t]
        idx = self.order[t]
        return (
            idx.pin_memory().to(self.device, non_blocking=True)
            if self.device.type == "cuda"
            else idx.to(self.device)
        )

    def __getitem__(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """(idx (B,) on the host, input_ids (B, L), attention_mask (B, L) or None,
        loss_mask (B, L), n_t ()).

        The attention mask is None for right-padded corpora (exact, see ``right_padded``).
        """
        idx = self.order[t]
        if self.resident:
            didx = self.order_dev[t]
            ids, am, lm = (None if x is None else x[didx] for x in self.rows)
        else:
            c = self.corpus
            cuda = self.device.type == "cuda"

            def move(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
                x = x[idx]
                x = x.pin_memory() if cuda else x
                return x.to(self.device, dtype, non_blocking=True)

            ids = move(c.input_ids)
            am = move(c.attention_mask) if self.needs_mask else None
            lm = move(c.loss_mask, self.dtype)
        n_t = lm.sum()
        return idx, ids, am, lm, n_t


def weighted_grads(
    model: nn.Module,
    params: list[Tensor],
    ids: Tensor,
    am: Tensor | None,
    lm: Tensor,
    n_t: Tensor,
    w: Tensor | None,
    cfg: TrajectoryConfig,
    create_graph: bool = False,
) -> tuple[list[Tensor], Tensor]:
    """g = d/dtheta [sum_i w_i l_i / n_t]; returns (grads, detached mean loss).

    SDPA models run the math kernel: the fused kernels' backward sums in a varying order
    (atomics), so replays would not reproduce the recorded run (and it has no double backward).
    """
    with autocast_ctx(cfg, ids.device), sdpa_kernel([SDPBackend.MATH]):
        lt = per_token_loss(model, ids, am)  # (B, L)
    coef = lm if w is None else lm * w
    loss = (lt * coef).sum() / n_t
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return list(grads), (lt.detach() * lm).sum() / n_t


class StepGrads:
    """The training gradient of one batch, CUDA-graphed on a GPU (``cfg.cuda_graphs``).

    Calls return ``(grads, mean loss)``; with a graph, ``grads`` are static tensors that the next
    graph replay overwrites, so the caller consumes them at once (the optimiser step does).
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[Tensor],
        cfg: TrajectoryConfig,
        graphs: GraphCache | None = None,
    ) -> None:
        self.model, self.params, self.cfg = model, params, cfg
        dev = params[0].device
        self.graphs = (
            graphs if graphs is not None else GraphCache(cfg.cuda_graphs and dev.type == "cuda")
        )

    def _fn(self, ids: Tensor, lm: Tensor, n_t: Tensor, w: Tensor, *am: Tensor) -> list[Tensor]:
        grads, loss = weighted_grads(
            self.model, self.params, ids, am[0] if am else None, lm, n_t, w, self.cfg
        )
        return [*grads, loss]

    def __call__(
        self, ids: Tensor, am: Tensor | None, lm: Tensor, n_t: Tensor, w: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        if self.graphs.enabled:
            # lm * 1 == lm exactly, so the graphed step (always weighted) equals the eager one
            inputs = [ids, lm, n_t.reshape(()), torch.ones_like(lm) if w is None else w]
            inputs += [am] if am is not None else []
            out = self.graphs.run("train", self._fn, inputs)
            return out[:-1], out[-1].clone()
        return weighted_grads(self.model, self.params, ids, am, lm, n_t, w, self.cfg)


def iter_steps(
    model: nn.Module,
    params: list[Tensor],
    bufs: list[list[Tensor]],
    opt: TrajectoryOptimizer,
    batches: Batches,
    cfg: TrajectoryConfig,
    start: int,
    stop: int,
    token_weights: Tensor | None = None,
    before_update: Callable[[], None] | None = None,
    grad_fn: StepGrads | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Run steps start..stop-1 in place; yields (t, loss_t) after each step.

    ``before_update`` runs between the gradient and the in-place parameter update (checkpoint
    copies still reading the parameters wait there). ``grad_fn`` computes the gradient (default:
    a fresh ``StepGrads``, graphed on a GPU).
    """
    if grad_fn is None:
        grad_fn = StepGrads(model, params, cfg)
    for t in range(start, stop):
        idx, ids, am, lm, n_t = batches[t]
        w = None
        if token_weights is not None:
            w = token_weights[idx].to(ids.device, lm.dtype)
        grads, loss = grad_fn(ids, am, lm, n_t, w)
        if before_update is not None:
            before_update()
        opt.step(params, bufs, grads, t)
        del grads
        yield t, loss


@trajectory_matmuls
def train_trajectory(
    model: nn.Module,
    corpus: TokenizedCorpus,
    cfg: TrajectoryConfig,
    token_weights: Tensor | None = None,
    inplace: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Run the deterministic fine-tuning trajectory and return the trained model.

    Args:
        model: causal LM (its device is used). Copied unless ``inplace``.
        corpus: training rows; batches follow ``batch_order``.
        cfg: trajectory config (optimiser, schedule, steps, batch size, seed, dtype, LoRA).
        token_weights: (N, L) per-token loss weights (default all ones); used for finite
            differences and for LDS retraining on data subsets (zero rows drop documents).
        inplace: train ``model`` itself instead of a copy.
        progress: show a tqdm bar.

    Returns:
        The trained model (a peft model when ``cfg.lora`` is set).
    """
    check_corpus(corpus, cfg)
    model, params = prepare_model(model, cfg, inplace=inplace)
    if token_weights is not None and tuple(token_weights.shape) != tuple(corpus.input_ids.shape):
        raise ValueError(
            f"token_weights shape {tuple(token_weights.shape)} must match the "
            f"corpus rows {tuple(corpus.input_ids.shape)} (N, L)"
        )
    device = params[0].device
    opt = make_optimizer(cfg)
    bufs = opt.init_buffers(params)
    batches = Batches(corpus, cfg, device, params[0].dtype)
    it = iter_steps(model, params, bufs, opt, batches, cfg, 0, cfg.steps, token_weights)
    if progress:
        it = tqdm(it, total=cfg.steps, desc="train", leave=False)
    for _ in it:
        pass
    return model
