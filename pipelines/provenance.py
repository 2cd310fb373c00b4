"""Provenance: which document chunks wrote each memory slot, and how strongly — storage only.

Per FwPKM layer and slot, the table keeps the strongest `per_slot` writers (chunk id, strength), where a
chunk's strength on a slot is the sum over its tokens of gate x read weight of that slot. When a slot is full
the weakest entry is evicted, never the oldest: a prototype showed decaying or age-based eviction halving
recall (retrieval notes). The table's size is fixed by the memory, not by the corpus. It also counts the
(slot, chunk) write events of every slot (`writes`, for the slot idf) and which chunk ids are still alive.

How a question is scored against the table (slot idf, saturation, contributions) is retrieval's job:
`retrieval.score_chunks`.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor

from fwpkm_rag.errors import check_int


class ProvenanceTable:
    """Per layer and slot the strongest `per_slot` writers: `chunk` (L, N, m) int32 ids (-1: empty) and
    `strength` (L, N, m) float16; `writes` (L, N) float32 write events; `alive` (n_chunks,) bool."""

    def __init__(self, n_layers: int, n_slots: int, per_slot: int = 32):
        check_int("per_slot", per_slot, 1)
        self.n_layers, self.n_slots, self.per_slot = n_layers, n_slots, per_slot
        self.chunk = torch.full((n_layers, n_slots, per_slot), -1, dtype=torch.int32)  # writer chunk ids
        self.strength = torch.zeros((n_layers, n_slots, per_slot), dtype=torch.float16)  # their strengths
        self.writes = torch.zeros((n_layers, n_slots), dtype=torch.float32)  # (slot, chunk) write events ever
        self.alive = torch.zeros(0, dtype=torch.bool)  # per chunk id: False once deleted

    # ---- bookkeeping ----------------------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return self.alive.numel()

    def reserve(self, n_chunks: int) -> None:
        """Make chunk ids < n_chunks valid (new ids start alive)."""
        if n_chunks > self.alive.numel():
            extra = torch.ones(n_chunks - self.alive.numel(), dtype=torch.bool)
            self.alive = torch.cat([self.alive, extra])

    def delete(self, chunk_ids) -> None:
        """Deleted chunks never score again; their entries are dropped at the next merge of their slots."""
        ids = torch.as_tensor(list(chunk_ids), dtype=torch.long)
        if ids.numel():
            self.alive[ids] = False

    def clone(self) -> "ProvenanceTable":
        """An independent copy (a write call works on one and publishes it, or drops it on failure)."""
        return ProvenanceTable.from_tensors({name: t.clone() for name, t in self.tensors().items()})

    def with_own_alive(self) -> "ProvenanceTable":
        """A copy that shares the writer tensors and owns its alive flags: all a delete call changes."""
        table = copy.copy(self)
        table.alive = self.alive.clone()
        return table

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.chunk, self.strength, self.writes, self.alive))

    # ---- writes ---------------------------------------------------------------------------------------------
    def record(self, layer: int, slots: Tensor, chunk_ids: Tensor, strength: Tensor) -> None:
        """Add write entries: slots, chunk_ids, strength all (E,). Entries of one (slot, chunk) are summed."""
        slots, chunk_ids = slots.reshape(-1).long(), chunk_ids.reshape(-1).long()
        strength = strength.reshape(-1).float()
        keep = strength > 0
        slots, chunk_ids, strength = slots[keep], chunk_ids[keep], strength[keep]
        if not slots.numel():
            return
        self.reserve(int(chunk_ids.max()) + 1)
        # Sum the new entries per (slot, chunk) and count one write event per pair.
        span = self.alive.numel()
        pair, inverse = torch.unique(slots * span + chunk_ids, return_inverse=True)
        pair_strength = torch.zeros(pair.numel()).index_add_(0, inverse, strength)
        new_slot, new_chunk = pair // span, pair % span
        self.writes[layer].index_add_(0, new_slot, torch.ones_like(pair_strength))
        # Merge with the slots' existing writers (alive ones), then keep the strongest per slot.
        touched = torch.unique(new_slot)
        old_chunk = self.chunk[layer, touched].long()  # (U, m)
        old_strength = self.strength[layer, touched].float()
        valid = old_chunk >= 0
        valid &= self.alive[old_chunk.clamp_min(0)]
        old_slot = touched[:, None].expand_as(old_chunk)
        all_slot = torch.cat([old_slot[valid], new_slot])
        all_chunk = torch.cat([old_chunk[valid], new_chunk])
        all_strength = torch.cat([old_strength[valid], pair_strength])
        pair, inverse = torch.unique(all_slot * span + all_chunk, return_inverse=True)
        merged = torch.zeros(pair.numel()).index_add_(0, inverse, all_strength)
        m_slot, m_chunk = pair // span, pair % span
        # Order by slot, strongest first; rank within the slot; keep the first per_slot.
        order = torch.argsort(-merged, stable=True)
        order = order[torch.argsort(m_slot[order], stable=True)]
        m_slot, m_chunk, merged = m_slot[order], m_chunk[order], merged[order]
        first = torch.searchsorted(m_slot, m_slot, right=False)
        rank = torch.arange(m_slot.numel()) - first
        keep = rank < self.per_slot
        row = torch.searchsorted(touched, m_slot[keep])
        chunk_rows = torch.full((touched.numel(), self.per_slot), -1, dtype=torch.int32)
        strength_rows = torch.zeros((touched.numel(), self.per_slot), dtype=torch.float16)
        chunk_rows[row, rank[keep]] = m_chunk[keep].int()
        strength_rows[row, rank[keep]] = merged[keep].half()
        self.chunk[layer, touched] = chunk_rows
        self.strength[layer, touched] = strength_rows

    # ---- persistence ----------------------------------------------------------------------------------------
    def tensors(self) -> dict:
        return {"chunk": self.chunk, "strength": self.strength, "writes": self.writes, "alive": self.alive}

    @classmethod
    def from_tensors(cls, tensors: dict) -> "ProvenanceTable":
        n_layers, n_slots, per_slot = tensors["chunk"].shape
        table = cls(n_layers, n_slots, per_slot)
        table.chunk, table.strength = tensors["chunk"].to(torch.int32), tensors["strength"].to(torch.float16)
        table.writes, table.alive = tensors["writes"].float(), tensors["alive"].bool()
        return table
