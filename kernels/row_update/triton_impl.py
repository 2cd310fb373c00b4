"""Triton primitive of the row update: the same contract as `torch_impl.segment_fwd` (imports triton).

`segment_fwd`: one program per (touched row, block of d) walks the row's segment of the sorted entries in
order (deterministic, no atomics), optionally normalises by the segment length and adds the row's current
value: the read-count-normalised row update V_u - lr * G_u / n_u in one pass.
"""
from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl
from torch import Tensor

from fwpkm_rag.kernels import triton_utils as tu
from fwpkm_rag.kernels.segments import Segments
from fwpkm_rag.kernels.triton_utils import table_row


@triton.jit
def _segment_kernel(w, x, order, offsets, cur_index, base, pool, out, N, J, d, coef,
                    HAS_CUR: tl.constexpr, NORMALISE: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    u = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < d
    start = tl.load(offsets + u).to(tl.int64)
    end = tl.load(offsets + u + 1).to(tl.int64)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for e in range(start, end):  # the segment's entries in sorted order: a fixed summation order
        o = tl.load(order + e).to(tl.int64)
        wt = tl.load(w + o).to(ACC)
        acc += wt * tl.load(x + (o // J) * d + cols, mask=cmask, other=0.0).to(ACC)
    if NORMALISE:
        acc = acc / tl.maximum(end - start, 1).to(ACC)
    res = coef * acc
    if HAS_CUR:
        i = tl.load(cur_index + u).to(tl.int64)
        res += table_row(base, pool, i, N, d, cols, cmask).to(ACC)
    tl.store(out + u * d + cols, res.to(out.dtype.element_ty), mask=cmask)


def segment_fwd(w: Tensor, x: Tensor, seg: Segments, cur_index: Optional[Tensor], base: Tensor, pool: Tensor,
                coef: float, normalise: bool) -> Tensor:
    """Per touched row u: T[cur_index[u]] (or 0) + coef * S_u / (n_u if normalise): (M, J), (M, d) -> (U, d)."""
    order, offsets = seg.order, seg.offsets
    U = offsets.numel() - 1
    J = w.shape[1]
    N, d = base.shape
    base, pool = tu.tables(base, pool)
    out = tu.empty((U, d), base)
    if U == 0:
        return out
    BLOCK_D = tu.block_d(d)
    has_cur = cur_index is not None
    _segment_kernel[(U, triton.cdiv(d, BLOCK_D))](
        w.to(base.dtype).contiguous(), x.to(base.dtype).contiguous(), order.contiguous(), offsets.contiguous(),
        cur_index.contiguous() if has_cur else order, base, pool, out, N, J, d, float(coef),
        HAS_CUR=has_cur, NORMALISE=bool(normalise), ACC=tu.acc_type(base.dtype), BLOCK_D=BLOCK_D,
    )
    return out
