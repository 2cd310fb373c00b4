"""Triton primitives of the weighted gather: the same contracts as `torch_impl` (imports triton).

- `gather_fwd`      one program per (token, block of d): loops over the token's J entries, picks each row from
                    the base or the pool with masked loads, accumulates w * row in fp32 (fp64 for fp64 input).
- `gather_dot_fwd`  one program per entry: <g[m], T[index[m, j]]>, the gather's gradient to its weights.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from fwpkm_rag.kernels import triton_utils as tu
from fwpkm_rag.kernels.triton_utils import table_row


@triton.jit
def _gather_kernel(base, pool, index, w, out, N, J, d, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < d
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for j in range(J):
        i = tl.load(index + m * J + j).to(tl.int64)
        wj = tl.load(w + m * J + j).to(ACC)
        acc += wj * table_row(base, pool, i, N, d, cols, cmask).to(ACC)
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
        acc += gv * table_row(base, pool, i, N, d, cols, cmask).to(ACC)
    tl.store(out + m * J + j, tl.sum(acc, axis=0).to(out.dtype.element_ty))


def gather_fwd(base: Tensor, pool: Tensor, index: Tensor, w: Tensor) -> Tensor:
    """out[m] = sum_j w[m, j] * T[index[m, j]] with T = [base; pool]: (M, J) -> (M, d)."""
    M, J = index.shape
    N, d = base.shape
    base, pool = tu.tables(base, pool)
    out = tu.empty((M, d), base)
    if M == 0:
        return out
    BLOCK_D = tu.block_d(d)
    _gather_kernel[(M, triton.cdiv(d, BLOCK_D))](
        base, pool, index.contiguous(), w.to(base.dtype).contiguous(), out, N, J, d,
        ACC=tu.acc_type(base.dtype), BLOCK_D=BLOCK_D,
    )
    return out


def gather_dot_fwd(g: Tensor, base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """out[m, j] = <g[m], T[index[m, j]]>: (M, d), (M, J) -> (M, J)."""
    M, J = index.shape
    N, d = base.shape
    base, pool = tu.tables(base, pool)
    out = tu.empty((M, J), base)
    if M == 0 or J == 0:
        return out
    _gather_dot_kernel[(M, J)](
        g.to(base.dtype).contiguous(), base, pool, index.contiguous(), out, N, J, d,
        ACC=tu.acc_type(base.dtype), BLOCK_D=tu.block_d(d),
    )
    return out
