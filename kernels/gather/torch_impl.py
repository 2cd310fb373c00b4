"""Torch primitives of the weighted gather (CPU, any GPU, and the reference the triton kernels are tested against).

Plain tensor functions, no autograd: `kernels/autograd.py` composes them (or the triton versions, which have
the same signatures) into differentiable ops whose backward is itself differentiable.

Value tables are passed as a pair (base (N, d), pool (P, d)) read as one virtual table [base; pool]: index i < N
is base row i, index i >= N is pool row i - N. That is how `SparseValues` stores a memory (a shared base plus
each group's rewritten rows) without ever concatenating the (possibly 512 MiB) base.
Shapes: M tokens (the entries' owners), J entries per token, d width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lookup_rows(base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """Rows of the virtual table [base; pool] at `index` (any shape) -> (*index.shape, d)."""
    return copy_rows(base, pool, index.reshape(-1)).reshape(*index.shape, base.shape[1])


def copy_rows(base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """A fresh (U, d) copy of the rows of [base; pool] at a 1-D index (U,): all from base, then the few pool
    rows copied over (two passes instead of two full gathers and a where)."""
    N = base.shape[0]
    out = base.index_select(0, index.clamp_max(N - 1))  # (U, d); pool entries hold a placeholder base row
    if pool.shape[0]:
        sel = (index >= N).nonzero().squeeze(1)
        out.index_copy_(0, sel, pool.index_select(0, index[sel] - N))
    return out


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
    in_pool = index >= N  # (M, J)
    zero = w.new_zeros(())
    out = F.embedding_bag(torch.where(in_pool, 0, index), base, per_sample_weights=torch.where(in_pool, zero, w),
                          mode="sum")  # (M, d) the base rows' part
    return out + F.embedding_bag(torch.where(in_pool, index - N, 0), pool,
                                 per_sample_weights=torch.where(in_pool, w, zero), mode="sum")


def gather_dot_fwd(g: Tensor, base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """out[m, j] = <g[m], T[index[m, j]]>: (M, d), (M, J) -> (M, J), no autograd (dL/dw of the gather)."""
    rows = lookup_rows(base, pool, index)  # (M, J, d)
    return torch.bmm(rows, g.to(rows.dtype).unsqueeze(-1)).squeeze(-1)  # (M, J, 1) -> (M, J)
