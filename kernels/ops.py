"""The FwPKM hot ops, one signature each, dispatched to the torch or triton backend (see dispatch.py).

Every op takes an optional ``backend=`` ("auto" | "torch" | "triton"); None means the process-wide choice
(`set_backend` / $FWPKM_BACKEND / auto). Value tables are (base (N, d), pool (P, d)) read as the virtual table
[base; pool]: an index i < N is base row i, i >= N is pool row i - N (what `SparseValues.resolve` returns).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fwpkm_rag.kernels import torch_ops
from fwpkm_rag.kernels.autograd import Gather, GatherDot, SegmentSum, Segments, segments
from fwpkm_rag.kernels.dispatch import get_backend


def product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3,
                     backend: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(a) Product-key scoring and two-stage top-k.

    q (G, R, H, k_dim), keys (G, 2Hn, k_dim/2) -> slots (G, R, H, k) int64 (i*n + j), scores (G, R, H, k)
    (s1_i + s2_j, differentiable), sub (G, R, H, 2, n) every sub-key score (for the addressing loss).
    """
    return get_backend(q.device, backend).product_key_topk(q, keys, topk=topk, score=score, eps=eps)


def read_weights(scores: Tensor) -> Tensor:
    """Softmax over every (head, slot) a token selected: (G, R, H, k) -> (G, R, H, k), heads pooled."""
    return torch_ops.read_weights(scores)


def weighted_gather(base: Tensor, pool: Tensor, index: Tensor, weights: Tensor, *,
                    backend: Optional[str] = None) -> Tensor:
    """(b) Weighted embedding-bag gather: out[m] = sum_j weights[m, j] * T[index[m, j]], T = [base; pool].

    base (N, d), pool (P, d) (may be empty), index (M, J) int64 in [0, N + P), weights (M, J) -> (M, d).
    Differentiable in base, pool and weights, to any order (backward to the table is a deterministic
    sort-and-segment row scatter-add).
    """
    be = get_backend(base.device, backend)
    if not (torch.is_grad_enabled() and (base.requires_grad or pool.requires_grad or weights.requires_grad)):
        return be.gather_fwd(base, pool, index, weights)  # no graph to record: skip the autograd wrapper
    return Gather.apply(be, base, pool, index, weights)


def gather_dot(x: Tensor, base: Tensor, pool: Tensor, index: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """out[m, j] = <x[m], T[index[m, j]]>: (M, d), (M, J) -> (M, J) (the gather's gradient to its weights)."""
    return GatherDot.apply(get_backend(base.device, backend), x, base, pool, index)


class RowUpdate(NamedTuple):
    keys: Tensor  # (U,) int64 distinct keys the entries touched, sorted
    rows: Tensor  # (U, d) the touched rows after the update
    counts: Tensor  # (U,) int64 n_u: entries (reads) per touched key


def row_update(base: Tensor, pool: Tensor, index: Tensor, keys: Tensor, weights: Tensor, err: Tensor, *,
               scale: float, backend: Optional[str] = None) -> RowUpdate:
    """(c) Row update with read-count normalisation, for every distinct key u among the entries:

        rows[u] = T[index of u] - scale * G_u / n_u,   G_u = sum over entries (m, j) of u of weights[m, j] * err[m]

    index (M, J) int64 rows of T = [base; pool] the entries read; keys (M, J) int64 what makes two entries the
    same row to update (group * N + slot: two memory groups reading the same base row update different
    copies); weights (M, J); err (M, d) the per-token error (g_t * (v̂_t - target_t) for the value loss);
    n_u counts every entry of u, zero-weight ones included. Deterministic: entries are grouped by key
    (one sort) and each row's sum runs in a fixed order, without float atomics. With autograd recording, differentiable in base, pool, weights and err.
    """
    be = get_backend(base.device, backend)
    seg = segments(keys)
    # Every entry of a segment reads the same row; scatter (last write wins) picks any of them.
    cur_index = torch.empty_like(seg.keys).scatter_(0, seg.inverse.reshape(-1), index.reshape(-1))
    if seg.keys.numel() == 0:
        return RowUpdate(seg.keys, base.new_zeros(0, base.shape[1]), seg.counts)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (base, pool, weights, err))
    if not grad:
        # Fused: one pass reads each touched row, sums its segment and writes the new row.
        rows = be.segment_fwd(weights, err, seg, cur_index, base, pool, -scale, True)
    else:
        ones = weights.new_ones(cur_index.numel(), 1)
        cur = Gather.apply(be, base, pool, cur_index.unsqueeze(1), ones)
        # -scale / n_u folded into each entry's weight (as the fused path does, in the same order)
        scaled = weights * (-scale) / seg.counts.to(weights.dtype)[seg.inverse]
        rows = cur + SegmentSum.apply(be, scaled, err, seg, base.shape[1])
    return RowUpdate(seg.keys, rows, seg.counts)


def group_entries(keys: Tensor) -> Segments:
    """Sort entries (M, J) by key: order, offsets, distinct keys, inverse (M, J), counts (see autograd.py)."""
    return segments(keys)
