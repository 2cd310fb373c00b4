"""Op (b): the weighted embedding-bag gather over a value table [base; pool], and its weight gradient.

Files: `naive.py` the loop references (tests), `torch_impl.py` and `triton_impl.py` the raw forward primitives
(`gather_fwd`, `gather_dot_fwd`, same signatures); `kernels/autograd.py` makes them differentiable.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fwpkm_rag.kernels.autograd import Gather, GatherDot
from fwpkm_rag.kernels.dispatch import get_backend


def weighted_gather(base: Tensor, pool: Tensor, index: Tensor, weights: Tensor, *,
                    backend: Optional[str] = None) -> Tensor:
    """Weighted embedding-bag gather: out[m] = sum_j weights[m, j] * T[index[m, j]], T = [base; pool].

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
