"""Entries grouped by a key: the one sort that the row update and the gather's backward to the table share.

An "entry" is one (token m, selection j) read of a (M, J) index; entries with the same key touch the same row.
Grouping them once gives every per-row sum a fixed order (deterministic, no float atomics).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class Segments:
    """Entries (M, J) grouped by a key: keys (U,) sorted distinct keys, inverse (M, J) segment of each entry,
    counts (U,) entries per segment, offsets (U+1,) segment starts in sorted order, and `order` (E,) the
    stable sort permutation (computed on first use: the torch CPU path sums in entry order and never needs
    it; the triton kernels walk each segment through it)."""

    def __init__(self, keys: Tensor, inverse: Tensor, counts: Tensor):
        self.keys, self.inverse, self.counts = keys, inverse, counts
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (U+1,)
        self._order: Optional[Tensor] = None

    @property
    def order(self) -> Tensor:
        if self._order is None:
            self._order = torch.sort(self.inverse.reshape(-1), stable=True)[1]  # (E,)
        return self._order


def segments(keys: Tensor) -> Segments:
    """Group the entries (M, J) by key (one sort; host sync: U is data-dependent)."""
    uniq, inverse, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    return Segments(uniq, inverse.view(keys.shape), counts)
