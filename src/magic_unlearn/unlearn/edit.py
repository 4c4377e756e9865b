"""Attribution-guided representation editing (approach 4).

Find directions in the residual stream that separate tokens that teach hazard knowledge from
tokens that teach general knowledge (both chosen by attribution weights), then remove them:

* ``find_directions``: per layer, the difference of (weighted) means ``mu_hazard - mu_general``
  (``method="diffmean"``), or the top-k principal directions of hazard states centred on the
  general mean (``method="pca"``). With ``keep_general=g``, the hazard directions are made
  orthogonal to the top-g principal directions of the general states (protecting the
  MMLU-side subspace).
* ``remove_directions``: weight orthogonalisation (as in Arditi et al. 2024, "Refusal in
  Language Models Is Mediated by a Single Direction"): every matrix that writes into the
  residual stream is replaced by ``(I - Q Q^T) W`` so the stream never gains a component along
  the directions (``mode="all"``: union of all layers' directions, applied to the embedding and
  every block's output projections), or only layer l's own writes lose layer l's directions
  (``mode="layer"``).
* Trained ablation: the ``dir_ablate`` method (:mod:`magic_unlearn.unlearn.methods.ablation`)
  drives the projections to zero by training instead.
"""

from __future__ import annotations

import torch
from torch import nn

from magic_unlearn.data import TokenizedCorpus
from magic_unlearn.models import LayerCapture, get_decoder_layers

# last name components of the linear maps that write into the residual stream
WRITE_NAMES = ("dense", "dense_4h_to_h", "o_proj", "down_proj", "out_proj", "fc2", "c_proj")


@torch.no_grad()
def weighted_states(
    model: nn.Module,
    corpus: TokenizedCorpus,
    weights: torch.Tensor,
    layers: list[int],
    batch_size: int = 16,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Hidden states of tokens with nonzero weight: layer -> ((T, D) states, (T,) weights)."""
    p = next(model.parameters())
    keep = (weights != 0) & (corpus.loss_mask > 0)
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    ws: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    for s in range(0, len(corpus), batch_size):
        rows = slice(s, s + batch_size)
        k = keep[rows]
        if not k.any():
            continue
        with LayerCapture(model, layers, detach=True) as cap:
            model(
                input_ids=corpus.input_ids[rows].to(p.device),
                attention_mask=corpus.attention_mask[rows].to(p.device),
            )
        for i in layers:
            out[i].append(cap.outputs[i][k.to(p.device)].double().cpu())
        ws.append(weights[rows][k].double().abs())
    model.train(was_training)
    if not ws:
        raise ValueError("no token has a nonzero weight: nothing to estimate directions from")
    w = torch.cat(ws)
    return {i: (torch.cat(out[i]), w) for i in layers}


def _orthonormal(vs: torch.Tensor) -> torch.Tensor:
    """Rows -> orthonormal rows spanning them (QR), dropping null directions."""
    q, r = torch.linalg.qr(vs.T)
    good = r.diagonal().abs() > 1e-10 * max(1.0, float(r.diagonal().abs().max()))
    return q[:, good].T


def find_directions(
    model: nn.Module,
    corpus: TokenizedCorpus,
    hazard_w: torch.Tensor,
    general_w: torch.Tensor,
    layers: list[int],
    method: str = "diffmean",
    k: int = 1,
    keep_general: int = 0,
    batch_size: int = 16,
) -> dict[int, torch.Tensor]:
    """Per-layer orthonormal hazard directions, layer -> (k', D) float64 (k' <= k).

    Args:
        hazard_w / general_w: (N, L) nonnegative weights picking hazard- / general-teaching
            tokens (e.g. ``transform_scores`` with ``select="hazard_only"`` / ``"general_only"``).
        method: ``diffmean`` (k = 1) or ``pca``.
        keep_general: protect the top principal directions of the general states.
    """
    if method not in ("diffmean", "pca"):
        raise ValueError(f"direction method {method!r}; use 'diffmean' or 'pca'")
    H = weighted_states(model, corpus, hazard_w, layers, batch_size)
    G = weighted_states(model, corpus, general_w, layers, batch_size)
    dirs = {}
    for i in layers:
        (h, wh), (g, wg) = H[i], G[i]
        mu_h = (wh[:, None] * h).sum(0) / wh.sum()
        mu_g = (wg[:, None] * g).sum(0) / wg.sum()
        if method == "diffmean":
            d = (mu_h - mu_g)[None]
        else:
            x = (h - mu_g) * wh.sqrt()[:, None]
            d = torch.linalg.svd(x, full_matrices=False).Vh[:k]
        if keep_general > 0:
            gx = (g - mu_g) * wg.sqrt()[:, None]
            protect = torch.linalg.svd(gx, full_matrices=False).Vh[:keep_general]
            d = d - (d @ protect.T) @ protect
        dirs[i] = _orthonormal(d)
    return dirs


def _write_modules(block: nn.Module, d_model: int) -> list[nn.Linear]:
    mods = [
        m
        for name, m in block.named_modules()
        if isinstance(m, nn.Linear)
        and name.split(".")[-1] in WRITE_NAMES
        and m.out_features == d_model
    ]
    if not mods:
        raise ValueError(
            f"cannot find residual-stream output projections in {type(block).__name__} "
            f"(looked for linear layers named {WRITE_NAMES})"
        )
    return mods


@torch.no_grad()
def _project_out(
    lin: nn.Module, q: torch.Tensor, attr: str = "weight", rows_are_out: bool = True
) -> None:
    w = getattr(lin, attr)
    qq = q.to(w.device, torch.float64)  # (k, D)
    W = w.double()
    if rows_are_out:  # Linear: (D_out, D_in), output along rows
        W = W - qq.T @ (qq @ W)
    else:  # embedding: (V, D), output along columns
        W = W - (W @ qq.T) @ qq
    w.copy_(W.to(w.dtype))
    b = getattr(lin, "bias", None)
    if rows_are_out and b is not None:
        bb = b.double()
        b.copy_((bb - qq.T @ (qq @ bb)).to(b.dtype))


@torch.no_grad()
def remove_directions(
    model: nn.Module, directions: dict[int, torch.Tensor], mode: str = "all"
) -> None:
    """Orthogonalise residual-stream writes against ``directions`` (in place)."""
    if mode not in ("all", "layer"):
        raise ValueError(f"remove mode {mode!r}; use 'all' or 'layer'")
    blocks = get_decoder_layers(model)
    d_model = model.config.hidden_size
    if mode == "all":
        q = _orthonormal(torch.cat([d.double() for d in directions.values()]))
        _project_out(model.get_input_embeddings(), q, rows_are_out=False)
        for block in blocks:
            for lin in _write_modules(block, d_model):
                _project_out(lin, q)
    else:
        for i, d in directions.items():
            for lin in _write_modules(blocks[i], d_model):
                _project_out(lin, _orthonormal(d.double()))
