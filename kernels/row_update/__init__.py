"""Op (c): the read-count-normalised row update of the touched value rows.

Files: `naive.py` the loop reference (tests), `torch_impl.py` and `triton_impl.py` the raw primitive
(`segment_fwd`, same signature). Without autograd the update is one fused pass per touched row; with autograd
recording it is composed of the differentiable Gather and SegmentSum (kernels/autograd.py), same arithmetic.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from fwpkm_rag.kernels.autograd import Gather, SegmentSum
from fwpkm_rag.kernels.dispatch import get_backend
from fwpkm_rag.kernels.segments import Segments, segments


class RowUpdate(NamedTuple):
    keys: Tensor  # (U,) int64 distinct keys the entries touched, sorted
    rows: Tensor  # (U, d) the touched rows after the update
    counts: Tensor  # (U,) int64 n_u: entries (reads) per touched key


def row_update(base: Tensor, pool: Tensor, index: Tensor, keys: Tensor, weights: Tensor, err: Tensor, *,
               scale: float, backend: Optional[str] = None) -> RowUpdate:
    """Row update with read-count normalisation, for every distinct key u among the entries:

        rows[u] = T[index of u] - scale * G_u / n_u,   G_u = sum over entries (m, j) of u of weights[m, j] * err[m]

    index (M, J) int64 rows of T = [base; pool] the entries read; keys (M, J) int64 what makes two entries the
    same row to update (group * N + slot: two memory groups reading the same base row update different
    copies); weights (M, J); err (M, d) the per-token error (g_t * (v̂_t - target_t) for the value loss);
    n_u counts every entry of u, zero-weight ones included. Deterministic: entries are grouped by key (one
    sort) and each row's sum runs in a fixed order, without float atomics. With autograd recording,
    differentiable in base, pool, weights and err.
    """
    be = get_backend(base.device, backend)
    seg = segments(keys)
    # Every entry of a segment reads the same row; scatter (last write wins) picks any of them.
    cur_index = torch.empty_like(seg.keys).scatter_(0, seg.inverse.reshape(-1), index.reshape(-1))  # (U,)
    if seg.keys.numel() == 0:
        return RowUpdate(seg.keys, base.new_zeros(0, base.shape[1]), seg.counts)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (base, pool, weights, err))
    if not grad:
        # Fused: one pass reads each touched row, sums its segment and writes the new row.
        rows = be.segment_fwd(weights, err, seg, cur_index, base, pool, -scale, True)  # (U, d)
    else:
        ones = weights.new_ones(cur_index.numel(), 1)
        cur = Gather.apply(be, base, pool, cur_index.unsqueeze(1), ones)  # (U, d) the rows before the update
        # -scale / n_u folded into each entry's weight (as the fused path does, in the same order)
        scaled = weights * (-scale) / seg.counts.to(weights.dtype)[seg.inverse]  # (M, J)
        rows = cur + SegmentSum.apply(be, scaled, err, seg, base.shape[1])
    return RowUpdate(seg.keys, rows, seg.counts)


def group_entries(keys: Tensor) -> Segments:
    """Sort entries (M, J) by key: order, offsets, distinct keys, inverse (M, J), counts (see segments.py)."""
    return segments(keys)
