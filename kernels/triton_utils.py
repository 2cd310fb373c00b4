"""What the triton kernels of every op share: output allocation, accumulator type, block width, table access.

Importing this module imports triton; only the triton backend (triton_ops.py and the ops' triton_impl.py)
does. Kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1 (set before triton is imported:
triton decides at decoration time whether a kernel is compiled or interpreted). That is how they are tested
without a GPU. All address arithmetic is int64 (program ids are cast before multiplying); non-power-of-two
widths are masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Tests set this: outputs are allocated with torch.empty and pre-filled with NaN, so an element that a kernel
# forgets to write shows up as NaN instead of as stale memory that happens to be right.
FILL_NAN = False
MAX_BLOCK_D = 128


def empty(shape, like: Tensor) -> Tensor:
    """An uninitialised output (NaN-filled when FILL_NAN) with `like`'s dtype and device."""
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    return out.fill_(float("nan")) if FILL_NAN else out


def acc_type(dtype: torch.dtype):
    """Accumulate in fp32, or fp64 for fp64 inputs."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_d(d: int) -> int:
    """Columns per program: a power of two in [16, MAX_BLOCK_D]."""
    return max(16, min(triton.next_power_of_2(d), MAX_BLOCK_D))


def tables(base: Tensor, pool: Tensor) -> tuple[Tensor, Tensor]:
    """Contiguous (base, pool); an empty pool has no usable pointer, so base stands in (never read: every
    index is then < N)."""
    base = base.contiguous()
    return base, (pool.contiguous() if pool.shape[0] else base)


@triton.jit
def table_row(base, pool, i, N, d, cols, cmask):
    """Row i of the virtual table [base; pool] (masked, so only one of the two loads touches memory)."""
    iv = cols * 0 + i  # the row index as a vector, so the masks are plain vector bools
    rb = tl.load(base + iv * d + cols, mask=cmask & (iv < N), other=0.0)
    rp = tl.load(pool + (iv - N) * d + cols, mask=cmask & (iv >= N), other=0.0)
    return rb + rp
