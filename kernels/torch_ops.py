"""Torch backend of the FwPKM hot ops (CPU, any GPU, and the reference the triton kernels are tested against).

Two kinds of functions live here:
- `product_key_topk` and `read_weights`: ordinary differentiable torch code (both backends use them; on a GPU
  the scoring is a matmul, which cuBLAS already does well, and torch.topk is the selection).
- the raw primitives `gather_fwd`, `gather_dot_fwd`, `segment_fwd`: plain tensor functions, no autograd. The
  autograd Functions in `kernels/autograd.py` compose them (and the triton backend's versions, which have the
  same signatures) into differentiable ops whose backward is itself differentiable.

Value tables are passed as a pair (base (N, d), pool (P, d)) read as one virtual table [base; pool]: index i < N
is base row i, index i >= N is pool row i - N. That is how `SparseValues` stores a memory (a shared base plus
each group's rewritten rows) without ever concatenating the (possibly 512 MiB) base.

Shapes use G for memory groups, R for tokens per group, H heads, n sub-keys per book, k top-k, M tokens
(entries' owners), J = H*k entries per token, E = M*J entries, U distinct rows touched, d widths.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3):
    """Score queries against both sub-key books and select each head's top-k slots.

    q:    (G, R, H, k_dim)       queries, one per head
    keys: (G, 2*H*n, k_dim/2)    sub-keys; row (h*2 + m)*n + j is sub-key j of book m of head h
    returns
      slots  (G, R, H, k) int64  slot index i*n + j (i from book 0, j from book 1)
      scores (G, R, H, k)        s1_i + s2_j of the selected slots
      sub    (G, R, H, 2, n)     every sub-key score (the addressing loss needs them all)
    """
    G, R, H, k_dim = q.shape
    half = k_dim // 2
    n = keys.shape[-2] // (2 * H)
    qh = q.reshape(G, R, H, 2, half)
    book = keys.reshape(G, H, 2, n, half)
    dot = torch.einsum("grhmd,ghmnd->grhmn", qh, book)  # (G, R, H, 2, n)
    if score == "idw":
        # ||q||^2 - 2 q.K + ||K||^2, clamped: twice differentiable at every size, unlike torch.cdist.
        sq_dist = qh.pow(2).sum(-1, keepdim=True) - 2 * dot + book.pow(2).sum(-1)[:, None]
        sub = -torch.log(eps + sq_dist.clamp_min(0))
    elif score == "dot":
        sub = dot
    else:
        raise ValueError(f"unknown score {score!r}")
    top_scores, top_idx = sub.topk(topk, dim=-1)  # (G, R, H, 2, k)
    cand = top_scores[..., 0, :, None] + top_scores[..., 1, None, :]  # (G, R, H, k, k)
    scores, flat = cand.flatten(-2).topk(topk, dim=-1)  # (G, R, H, k)
    i = top_idx[..., 0, :].gather(-1, torch.div(flat, topk, rounding_mode="floor"))
    j = top_idx[..., 1, :].gather(-1, flat % topk)
    slots = i * n + j
    return slots, scores, sub


def read_weights(scores: Tensor) -> Tensor:
    """Softmax over every (head, slot) a token selected: (G, R, H, k) -> (G, R, H, k), heads pooled."""
    G, R, H, k = scores.shape
    return torch.softmax(scores.reshape(G, R, H * k), dim=-1).reshape(G, R, H, k)


# ------------------------------------------------------------------------------------------ raw primitives

def lookup_rows(base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """Rows of the virtual table [base; pool] at `index` (any shape) -> (*index.shape, d)."""
    return _rows(base, pool, index.reshape(-1)).reshape(*index.shape, base.shape[1])


def gather_fwd(base: Tensor, pool: Tensor, index: Tensor, w: Tensor) -> Tensor:
    """out[m] = sum_j w[m, j] * T[index[m, j]] with T = [base; pool]: (M, J) -> (M, d), no autograd.

    F.embedding_bag is torch's fused gather-and-sum: it never materialises the (M, J, d) rows, which is what
    makes the CPU read bandwidth-bound instead of allocation-bound. With a non-empty pool it runs once per
    table; entries that belong to the other table point at row 0 (a cached row) with weight 0.
    """
    w = w.to(base.dtype)
    if pool.shape[0] == 0:
        return F.embedding_bag(index, base, per_sample_weights=w, mode="sum")
    N = base.shape[0]
    in_pool = index >= N
    zero = w.new_zeros(())
    out = F.embedding_bag(torch.where(in_pool, 0, index), base, per_sample_weights=torch.where(in_pool, zero, w),
                          mode="sum")
    return out + F.embedding_bag(torch.where(in_pool, index - N, 0), pool,
                                 per_sample_weights=torch.where(in_pool, w, zero), mode="sum")


def gather_dot_fwd(g: Tensor, base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """out[m, j] = <g[m], T[index[m, j]]>: (M, d), (M, J) -> (M, J), no autograd (dL/dw of the gather)."""
    rows = lookup_rows(base, pool, index)  # (M, J, d)
    return torch.bmm(rows, g.to(rows.dtype).unsqueeze(-1)).squeeze(-1)


def segment_fwd(w: Tensor, x: Tensor, seg, cur_index: Optional[Tensor], base: Tensor, pool: Tensor,
                coef: float, normalise: bool) -> Tensor:
    """Per touched row u: out[u] = T[cur_index[u]] (or 0) + coef * S_u / (n_u if normalise else 1), where
    S_u = sum over the entries (m, j) of segment u of w[m, j] * x[m] and n_u the segment's length.

    w (M, J), x (M, d); seg: the entries grouped by row (autograd.Segments: inverse, counts, offsets, order).
    Deterministic, no float atomics: on CPU index_add_ walks the entries serially, in entry order (3x faster
    than segment_reduce over the sorted entries, measured at E 1024, d 128); on CUDA index_add_ uses atomics,
    so the entries are sorted and segment_reduce adds each segment in order.
    """
    M, J = w.shape
    d = x.shape[1]
    U = seg.counts.numel()
    if x.device.type == "cpu":
        # coef / n_u folded into the E entry weights: no elementwise pass over the (U, d) sums (each extra pass
        # cost about as much as the sum itself, measured at the small bench config). The same arithmetic, in
        # the same order, as ops.row_update's differentiable path, so with and without autograd agree bitwise.
        scale = w * coef
        if normalise:
            scale = scale / seg.counts.to(w.dtype)[seg.inverse]
        contrib = (scale.unsqueeze(-1) * x.unsqueeze(1)).reshape(M * J, d).to(base.dtype)
        S = base.new_zeros(U, d).index_add_(0, seg.inverse.reshape(-1), contrib)
        return S if cur_index is None else _rows(base, pool, cur_index).add_(S)
    order = seg.order
    contrib = w.reshape(-1)[order].unsqueeze(-1) * x[torch.div(order, J, rounding_mode="floor")]
    S = torch.segment_reduce(contrib, "sum", lengths=seg.counts, axis=0)
    if normalise:
        S = S / seg.counts.clamp_min(1).to(S.dtype).unsqueeze(-1)
    if cur_index is None:
        return (coef * S).to(base.dtype)
    return _rows(base, pool, cur_index).add_(S.to(base.dtype), alpha=coef)


def _rows(base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """A fresh (U, d) copy of the rows of [base; pool] at a 1-D index: all from base, then the few pool rows
    copied over (two passes instead of lookup_rows' two full gathers and a where)."""
    N = base.shape[0]
    out = base.index_select(0, index.clamp_max(N - 1))
    if pool.shape[0]:
        sel = (index >= N).nonzero().squeeze(1)
        out.index_copy_(0, sel, pool.index_select(0, index[sel] - N))
    return out
