"""Triton backend of the FwPKM hot ops: the same raw primitives as `torch_ops`, as triton kernels.

Imported only by `dispatch.backend_module("triton")` (importing this module imports triton). Kernels run on
CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before this module is imported: triton decides
at decoration time whether a kernel is compiled or interpreted). That is how they are tested without a GPU.

- `gather_fwd`      one program per (token, block of d): loops over the token's J entries, picks each row from
                    the base or the pool with masked loads, accumulates w * row in fp32 (fp64 for fp64 input).
- `gather_dot_fwd`  one program per entry: <g[m], T[index[m, j]]>, the gather's gradient to its weights.
- `segment_fwd`     one program per (touched row, block of d): walks the row's segment of the sorted entries
                    in order (deterministic, no atomics), optionally normalises by the segment length and adds
                    the row's current value: the read-count-normalised row update V_u - lr * G_u / n_u.
Product-key scoring stays torch (a matmul plus torch.topk); no benchmark on a GPU has shown a fused kernel
worth its complexity yet (docs/kernels.md).
All address arithmetic is int64 (program ids are cast before multiplying); non-power-of-two widths are masked.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from fwpkm_rag.kernels.torch_ops import product_key_topk, read_weights  # noqa: F401  (shared by both backends)

# Tests set this: outputs are allocated with torch.empty and pre-filled with NaN, so an element that a kernel
# forgets to write shows up as NaN instead of as stale memory that happens to be right.
FILL_NAN = False
MAX_BLOCK_D = 128


def _empty(shape, like: Tensor) -> Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if FILL_NAN else out


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(d: int) -> int:
    return max(16, min(triton.next_power_of_2(d), MAX_BLOCK_D))


def _tables(base: Tensor, pool: Tensor) -> tuple[Tensor, Tensor]:
    # An empty pool has no usable pointer; base stands in (never read: every index is then < N).
    base = base.contiguous()
    return base, (pool.contiguous() if pool.shape[0] else base)


@triton.jit
def _row(base, pool, i, N, d, cols, cmask):
    """Row i of the virtual table [base; pool] (masked, so only one of the two loads touches memory)."""
    iv = cols * 0 + i  # the row index as a vector, so the masks are plain vector bools
    rb = tl.load(base + iv * d + cols, mask=cmask & (iv < N), other=0.0)
    rp = tl.load(pool + (iv - N) * d + cols, mask=cmask & (iv >= N), other=0.0)
    return rb + rp


@triton.jit
def _gather_kernel(base, pool, index, w, out, N, J, d, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < d
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for j in range(J):
        i = tl.load(index + m * J + j).to(tl.int64)
        wj = tl.load(w + m * J + j).to(ACC)
        acc += wj * _row(base, pool, i, N, d, cols, cmask).to(ACC)
    tl.store(out + m * d + cols, acc.to(out.dtype.element_ty), mask=cmask)


@triton.jit
def _gather_dot_kernel(g, base, pool, index, out, N, J, d, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    i = tl.load(index + m * J + j).to(tl.int64)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for c0 in range(0, d, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        cmask = cols < d
        gv = tl.load(g + m * d + cols, mask=cmask, other=0.0).to(ACC)
        acc += gv * _row(base, pool, i, N, d, cols, cmask).to(ACC)
    tl.store(out + m * J + j, tl.sum(acc, axis=0).to(out.dtype.element_ty))


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
        res += _row(base, pool, i, N, d, cols, cmask).to(ACC)
    tl.store(out + u * d + cols, res.to(out.dtype.element_ty), mask=cmask)


def gather_fwd(base: Tensor, pool: Tensor, index: Tensor, w: Tensor) -> Tensor:
    """out[m] = sum_j w[m, j] * T[index[m, j]] with T = [base; pool] (same contract as torch_ops.gather_fwd)."""
    M, J = index.shape
    N, d = base.shape
    base, pool = _tables(base, pool)
    out = _empty((M, d), base)
    if M == 0:
        return out
    BLOCK_D = _block(d)
    _gather_kernel[(M, triton.cdiv(d, BLOCK_D))](
        base, pool, index.contiguous(), w.to(base.dtype).contiguous(), out, N, J, d,
        ACC=_acc(base.dtype), BLOCK_D=BLOCK_D,
    )
    return out


def gather_dot_fwd(g: Tensor, base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """out[m, j] = <g[m], T[index[m, j]]> (same contract as torch_ops.gather_dot_fwd)."""
    M, J = index.shape
    N, d = base.shape
    base, pool = _tables(base, pool)
    out = _empty((M, J), base)
    if M == 0 or J == 0:
        return out
    _gather_dot_kernel[(M, J)](
        g.to(base.dtype).contiguous(), base, pool, index.contiguous(), out, N, J, d,
        ACC=_acc(base.dtype), BLOCK_D=_block(d),
    )
    return out


def segment_fwd(w: Tensor, x: Tensor, seg, cur_index: Optional[Tensor], base: Tensor, pool: Tensor, coef: float,
                normalise: bool) -> Tensor:
    """Per touched row u: T[cur_index[u]] (or 0) + coef * S_u / (n_u if normalise) (see torch_ops.segment_fwd)."""
    order, offsets = seg.order, seg.offsets
    U = offsets.numel() - 1
    J = w.shape[1]
    N, d = base.shape
    base, pool = _tables(base, pool)
    out = _empty((U, d), base)
    if U == 0:
        return out
    BLOCK_D = _block(d)
    has_cur = cur_index is not None
    _segment_kernel[(U, triton.cdiv(d, BLOCK_D))](
        w.to(base.dtype).contiguous(), x.to(base.dtype).contiguous(), order.contiguous(), offsets.contiguous(),
        cur_index.contiguous() if has_cur else order, base, pool, out, N, J, d, float(coef),
        HAS_CUR=has_cur, NORMALISE=bool(normalise), ACC=_acc(base.dtype), BLOCK_D=BLOCK_D,
    )
    return out
