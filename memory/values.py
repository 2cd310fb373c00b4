"""`SparseValues`: a value table as a shared, never-written base plus the rows each memory group rewrote.

A group is one memory: the whole batch in shared mode, one sequence (session) in isolated mode. A group that
has rewritten r rows costs r * v_dim floats plus one int32 per slot for the row map, instead of a dense copy of
all n*n rows (512 MiB per layer at the paper's size). Every change returns a new object; ``inplace=True``
reuses this object's tensors and is only allowed while autograd is not recording.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from fwpkm_rag.kernels import weighted_gather


@dataclass(frozen=True)
class SparseValues:
    base: Tensor  # (N, d) the layer's initial values, shared by every group, never written
    slot_map: Tensor  # (G, N) int32: row of `rows` holding the group's copy of slot s, or -1 (still the base)
    rows: Tensor  # (P, d) rewritten rows of all groups

    @classmethod
    def fresh(cls, base: Tensor, groups: int) -> "SparseValues":
        slot_map = torch.full((groups, base.shape[0]), -1, dtype=torch.int32, device=base.device)
        return cls(base, slot_map, base.new_zeros((0, base.shape[1])))

    @property
    def groups(self) -> int:
        return self.slot_map.shape[0]

    @property
    def n_slots(self) -> int:
        return self.base.shape[0]

    def flat_keys(self, slots: Tensor) -> Tensor:
        """(G, ...) slot indices -> flat (group * N + slot) keys of the same shape."""
        group = torch.arange(self.groups, device=slots.device).view(-1, *([1] * (slots.dim() - 1)))
        return group * self.n_slots + slots

    def resolve(self, slots: Tensor) -> tuple[Tensor, Tensor]:
        """Slots (G, ...) -> (flat group*N + slot keys, row index into the virtual table [base; rows]).

        The row index is what the kernels read (index i < N: base row i; i >= N: rows[i - N]); the flat key is
        what identifies a row to update (two groups reading the same base row update different copies).
        """
        flat = self.flat_keys(slots)
        return flat, self.row_index(flat)

    def row_index(self, keys: Tensor) -> Tensor:
        """Flat (group * N + slot) keys -> int64 rows of the virtual table [base; rows]."""
        where = self.slot_map.view(-1)[keys].long()
        return torch.where(where >= 0, where + self.n_slots, keys % self.n_slots)

    def lookup(self, keys: Tensor) -> Tensor:
        """Current rows for flat (group * N + slot) keys of any shape -> (*keys.shape, d), differentiable."""
        index = self.row_index(keys).reshape(-1, 1)
        ones = self.base.new_ones(index.shape[0], 1)
        return weighted_gather(self.base, self.rows, index, ones).reshape(*keys.shape, -1)

    def gather(self, slots: Tensor) -> Tensor:
        """Rows read by each group: slots (G, ...) -> (G, ..., d)."""
        return self.lookup(self.flat_keys(slots))

    def assign(self, keys: Tensor, new_rows: Tensor, *, inplace: bool = False) -> "SparseValues":
        """Set the rows of distinct flat keys (U,) to new_rows (U, d)."""
        slot_map, rows = self.slot_map, self.rows
        where = slot_map.view(-1)[keys].long()
        missing = where < 0
        if bool(missing.any()):  # host sync, once per write: the pool grows by the newly touched rows
            fresh_keys = keys[missing]
            start = rows.shape[0]
            slot_map = slot_map if inplace else slot_map.clone()
            slot_map.view(-1)[fresh_keys] = torch.arange(
                start, start + fresh_keys.numel(), dtype=torch.int32, device=keys.device
            )
            rows = torch.cat([rows, self.base[fresh_keys % self.n_slots]])
            where = slot_map.view(-1)[keys].long()
        if inplace:
            rows.index_copy_(0, where, new_rows)
        else:
            rows = rows.index_copy(0, where, new_rows)
        return replace(self, slot_map=slot_map, rows=rows)

    def dense(self, group: int = 0) -> Tensor:
        """The full (N, d) table of one group (for tests, export and the functional API)."""
        where = self.slot_map[group].long()
        own = where >= 0
        idx = own.nonzero().squeeze(-1)
        return self.base.index_copy(0, idx, self.rows[where[idx]]) if idx.numel() else self.base.clone()

    def touched(self) -> Tensor:
        """(G, N) bool: slots each group has rewritten at least once."""
        return self.slot_map >= 0

    def select_groups(self, index: Tensor) -> "SparseValues":
        """The groups listed in `index` (reordered), compacting their rows."""
        slot_map = self.slot_map[index]
        used = slot_map >= 0
        old = slot_map[used].long()
        new_map = torch.full_like(slot_map, -1)
        new_map[used] = torch.arange(old.numel(), dtype=torch.int32, device=old.device)
        return replace(self, slot_map=new_map, rows=self.rows[old])

    def map_tensors(self, fn) -> "SparseValues":
        return SparseValues(fn(self.base), fn(self.slot_map), fn(self.rows))

    def nbytes(self, include_base: bool = False) -> int:
        total = self.slot_map.numel() * self.slot_map.element_size() + self.rows.numel() * self.rows.element_size()
        return total + (self.base.numel() * self.base.element_size() if include_base else 0)
