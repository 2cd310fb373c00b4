"""What one chunk's read and one inner step produce, passed between core.memory_chunk's steps.

In a module of their own so that both step implementations (core.analytic_step, inner_autograd.autograd_step)
can use them without importing each other.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ChunkRead(NamedTuple):
    """A chunk's reads of one memory snapshot, per memory group: G groups of R tokens (G*R = B*L)."""

    queries: Tensor  # (G, R, H, k_dim)
    slots: Tensor  # (G, R, H, k) slots read
    sub: Tensor  # (G, R, H, 2, n) every sub-key score (the addressing loss needs them all)
    weights: Tensor  # (G, R, H, k) read weights, one softmax over each token's H*k selections
    row_keys: Tensor  # (G, R, H, k) flat group*N + slot: which group's copy of a row a write updates
    index: Tensor  # (G, R, H, k) rows of the virtual table [base; pool] read
    vhat: Tensor  # (G, R, v_dim) the reads


class ChunkStep(NamedTuple):
    """The memory after one inner SGD step, before the divergence guard."""

    touched: Tensor  # (U,) flat keys of the value rows the write changes, sorted
    rows: Tensor  # (U, v_dim) those rows after the step
    keys: Tensor  # (G, 2Hn, k_dim/2) sub-keys after the step (the input object when addr_weight is 0)
