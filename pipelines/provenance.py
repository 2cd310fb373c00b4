"""Provenance: which document chunks wrote each memory slot, and how strongly — storage only.

Per FwPKM layer and slot, the table keeps the strongest `per_slot` writers (chunk id, strength), where a
chunk's strength on a slot is the sum over its tokens of gate x read weight of that slot. When a slot is full
the weakest entry is evicted, never the oldest: a prototype showed decaying or age-based eviction halving
recall (retrieval notes). The table's size is fixed by the memory, not by the corpus. It also counts the
(slot, chunk) write events of every slot (`writes`, for the slot idf) and which chunk ids are still alive.

How a question is scored against the table (slot idf, saturation, contributions) is retrieval's job:
`retrieval.score_chunks`; it reads a table only through `entries`, `writes`, `alive` and `n_chunks`.

A sealed segment's table never takes another write, so it is packed (`CompactProvenance`, docs/segments.md):
only the layers retrieval scores, each slot's writers back to back (no empty entries), chunk ids in 16 bits
where the segment has fewer than 65,536 chunks. The full table goes to the segment's database on disk first.
"""
from __future__ import annotations

import copy
from typing import Optional

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
        slots, chunk_ids, strength = positive_entries(slots, chunk_ids, strength)
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

    # ---- reading (retrieval) --------------------------------------------------------------------------------
    def entries(self, layer: int, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Every writer entry of the slots `slots` (R,) of one layer: (which read (E,) int64 index into slots,
        chunk id (E,) int64, strength (E,) float32), slot by slot, strongest first within a slot. Entries of
        deleted chunks are included (the caller filters by `alive`)."""
        chunk = self.chunk[layer, slots]  # (R, m)
        valid = chunk >= 0
        which = torch.arange(slots.numel())[:, None].expand_as(valid)[valid]
        return which, chunk[valid].long(), self.strength[layer, slots][valid].float()

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


class CompactProvenance:
    """A sealed segment's provenance, as retrieval reads it: the first `n_layers` layers of a `ProvenanceTable`,
    each slot's writers packed back to back (CSR). Per kept layer: `offsets` (N+1,) int32 (slot s's entries are
    offsets[s]:offsets[s+1]), `chunk` (E,) uint16 (int32 when the segment has 65,536 chunks or more) and
    `strength` (E,) float16, in the table's order (strongest first within a slot); `writes` (n_layers, N)
    float32 and `alive` as in the table. Read-only but for deletes (`alive`)."""

    def __init__(self, offsets: list, chunk: list, strength: list, writes: Tensor, alive: Tensor, n_slots: int):
        self.offsets, self.chunk, self.strength = offsets, chunk, strength
        self.writes, self.alive = writes, alive
        self.n_layers, self.n_slots = len(offsets), n_slots

    @classmethod
    def from_table(cls, table: ProvenanceTable, n_layers: int) -> "CompactProvenance":
        n_layers = min(check_int("n_layers", n_layers, 1), table.n_layers)
        narrow = torch.uint16 if table.n_chunks <= 65535 else torch.int32  # 65535 itself stays below 2**16
        offsets, chunks, strengths = [], [], []
        for layer in range(n_layers):
            chunk = table.chunk[layer]  # (N, m), the valid entries of a slot first (record keeps them so)
            valid = chunk >= 0
            counts = valid.sum(1)  # (N,)
            offsets.append(torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32))
            chunks.append(chunk[valid].to(narrow))  # row-major: slot by slot, in the table's order
            strengths.append(table.strength[layer][valid].clone())
        return cls(offsets, chunks, strengths, table.writes[:n_layers].clone(), table.alive.clone(), table.n_slots)

    @property
    def n_chunks(self) -> int:
        return self.alive.numel()

    @property
    def n_entries(self) -> int:
        return sum(c.numel() for c in self.chunk)

    def delete(self, chunk_ids) -> None:
        ids = torch.as_tensor(list(chunk_ids), dtype=torch.long)
        if ids.numel():
            self.alive[ids] = False

    def with_own_alive(self) -> "CompactProvenance":
        """A copy that shares the packed entries and owns its alive flags: all a delete call changes."""
        table = copy.copy(self)
        table.alive = self.alive.clone()
        return table

    def tensors(self) -> dict:
        """Every array, by name (for comparisons; a sealed segment saves its full table, not these)."""
        out = {"writes": self.writes, "alive": self.alive}
        for layer in range(self.n_layers):
            out.update({f"offsets.{layer}": self.offsets[layer], f"chunk.{layer}": self.chunk[layer],
                        f"strength.{layer}": self.strength[layer]})
        return out

    def nbytes(self) -> int:
        packed = sum(t.numel() * t.element_size() for ts in (self.offsets, self.chunk, self.strength) for t in ts)
        return packed + self.writes.numel() * 4 + self.alive.numel()

    def entries(self, layer: int, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As `ProvenanceTable.entries`, in the same order (so scores sum in the same order, to the bit)."""
        off = self.offsets[layer]
        start = off[slots].long()  # (R,)
        count = off[slots + 1].long() - start  # (R,)
        which = torch.repeat_interleave(torch.arange(slots.numel()), count)  # (E,)
        first = torch.repeat_interleave(count.cumsum(0) - count, count)  # (E,) where each read's run begins
        pos = start[which] + torch.arange(which.numel()) - first  # (E,) into the packed arrays
        return which, self.chunk[layer][pos].long(), self.strength[layer][pos].float()


def positive_entries(slots: Tensor, chunk_ids: Tensor, strength: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Write entries as a table records them: flattened, slots and chunk ids int64, strength float32, and only
    the entries of positive strength (a zero write changes nothing). Shared by the provenance tables."""
    slots, chunk_ids = slots.reshape(-1).long(), chunk_ids.reshape(-1).long()
    strength = strength.reshape(-1).float()
    keep = strength > 0
    return slots[keep], chunk_ids[keep], strength[keep]


def chunk_totals(contrib: Tensor, ids: Tensor, *alive: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Each chunk's summed contribution over its entries (`contrib` (E,), chunk `ids` (E,) int64), entries of a
    chunk that any of the `alive` flag tensors (None: skipped) marks deleted dropped: (chunk ids (M,) ascending,
    totals (M,)), positive totals only. The addressing layers' last step (word_layer, chunk_semantic)."""
    valid = torch.ones_like(ids, dtype=torch.bool)
    for flags in alive:
        if flags is not None:
            valid &= flags[ids]
    contrib, ids = contrib[valid], ids[valid]
    if not ids.numel():
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    uniq, inv = torch.unique(ids, return_inverse=True)
    total = torch.zeros(uniq.numel()).index_add_(0, inv, contrib)  # (M,)
    keep = total > 0
    return uniq[keep], total[keep]
