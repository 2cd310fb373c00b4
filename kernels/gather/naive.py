"""Python-loop references of the weighted gather and of its weight gradient (tests only).

One entry at a time, made of differentiable torch ops on single rows, so autograd gives the reference gradients
and second derivatives too. T is the virtual table [base; pool] (see torch_impl.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


def table_row(base: Tensor, pool: Tensor, i: int) -> Tensor:
    """Row i of [base; pool]: (d,)."""
    return base[i] if i < base.shape[0] else pool[i - base.shape[0]]


def reference_weighted_gather(base: Tensor, pool: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """out[m] = sum_j weights[m, j] * T[index[m, j]]: (M, J) -> (M, d)."""
    M, J = index.shape
    outs = []
    for m in range(M):
        acc = base.new_zeros(base.shape[1])
        for j in range(J):
            acc = acc + weights[m, j] * table_row(base, pool, int(index[m, j]))
        outs.append(acc)
    return torch.stack(outs) if outs else base.new_zeros(0, base.shape[1])


def reference_gather_dot(x: Tensor, base: Tensor, pool: Tensor, index: Tensor) -> Tensor:
    """out[m, j] = <x[m], T[index[m, j]]>: (M, d), (M, J) -> (M, J)."""
    M, J = index.shape
    out = x.new_zeros(M, J)
    for m in range(M):
        for j in range(J):
            out[m, j] = (x[m] * table_row(base, pool, int(index[m, j]))).sum()
    return out
