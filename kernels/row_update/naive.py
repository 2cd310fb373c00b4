"""Python-loop reference of the read-count-normalised row update (tests only).

A dict of per-row sums filled one entry at a time, made of differentiable torch ops, so autograd gives the
reference gradients too. Named `reference_row_update`, not `naive_row_update`: the ops benchmark's
"naive" row update is a different thing (the unfused torch baseline its speed-up is measured against).
"""
from __future__ import annotations

import torch
from torch import Tensor

from fwpkm_rag.kernels.gather.naive import table_row


def reference_row_update(base: Tensor, pool: Tensor, index: Tensor, keys: Tensor, weights: Tensor, err: Tensor, *,
                         scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(keys (U,), rows (U, d), counts (U,)): rows[u] = T[row of u] - scale * sum(w * err) / n_u.

    index, keys, weights (M, J); err (M, d); T = [base; pool]; u runs over the distinct keys, sorted.
    """
    M, J = index.shape
    grads, counts, row_of = {}, {}, {}
    for m in range(M):
        for j in range(J):
            key = int(keys[m, j])
            contrib = weights[m, j] * err[m]  # (d,)
            grads[key] = grads[key] + contrib if key in grads else contrib
            counts[key] = counts.get(key, 0) + 1
            row_of[key] = int(index[m, j])
    order = sorted(grads)
    new = [table_row(base, pool, row_of[u]) - scale * grads[u] / counts[u] for u in order]
    return (torch.tensor(order, dtype=torch.long), torch.stack(new) if new else base.new_zeros(0, base.shape[1]),
            torch.tensor([counts[u] for u in order], dtype=torch.long))
