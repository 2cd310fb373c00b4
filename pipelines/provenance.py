"""Provenance: which document chunks wrote each memory slot, and how strongly — the retrieval index.

Per FwPKM layer and slot, the table keeps the strongest `per_slot` writers (chunk id, strength), where a
chunk's strength on a slot is the sum over its tokens of gate x read weight of that slot. When a slot is full
the weakest entry is evicted, never the oldest: a prototype showed decaying or age-based eviction halving
recall (retrieval notes). The table's size is fixed by the memory, not by the corpus.

Scoring a question: each question token's reads (slot, weight) meet the slot's writers; a writer scores

    token_weight x read_weight x idf(slot)^2 x s / (s + 0.5)

summed over tokens, reads and layers, with idf(slot) = log(1 + writes to all slots / writes to this slot)
(slots written by very many chunks say little) and the saturation s/(s+0.5) (a chunk that hammered a slot
is not worth many chunks that touched it once).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SATURATION = 0.5


@dataclass
class SlotMatch:
    layer: int
    slot: int
    contribution: float


class ProvenanceTable:
    def __init__(self, n_layers: int, n_slots: int, per_slot: int = 32):
        if per_slot < 1:
            raise ValueError(f"per_slot must be >= 1, got {per_slot}")
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

    # ---- reads ----------------------------------------------------------------------------------------------
    def slot_idf(self, layer: int) -> Tensor:
        """(N,) log(1 + all write events / this slot's write events)."""
        w = self.writes[layer]
        return torch.log1p(w.sum() / w.clamp_min(1.0))

    def score(self, reads: list, token_weight: Tensor | None = None) -> Tensor:
        """Chunk scores (n_chunks,) for a question.

        reads: one (slots (T, J), weights (T, J)) per layer — the question's reads, flattened over heads.
        token_weight: (T,) weight of each question token (e.g. its idf), default 1.
        """
        scores = torch.zeros(self.n_chunks)
        for layer, (slots, weights) in enumerate(reads):
            contrib, chunk = self._contributions(layer, slots, weights, token_weight)
            scores.index_add_(0, chunk, contrib)
        return scores.masked_fill(~self.alive, float("-inf")) if self.n_chunks else scores

    def matches(self, reads: list, chunk_id: int, token_weight: Tensor | None = None, top: int = 8) -> list:
        """The slots through which a chunk scored for this question, strongest first."""
        found = []
        for layer, (slots, weights) in enumerate(reads):
            contrib, chunk = self._contributions(layer, slots, weights, token_weight, keep_slots=True)
            contrib, slot = contrib
            hit = chunk == chunk_id
            for s in torch.unique(slot[hit]).tolist():
                found.append(SlotMatch(layer, int(s), float(contrib[hit & (slot == s)].sum())))
        return sorted(found, key=lambda m: -m.contribution)[:top]

    def _contributions(self, layer, slots, weights, token_weight, keep_slots=False):
        slots = slots.long()
        T, J = slots.shape
        tw = torch.ones(T) if token_weight is None else token_weight.float()
        idf = self.slot_idf(layer)[slots]  # (T, J)
        read = weights.float() * idf.pow(2) * tw[:, None]  # (T, J)
        chunk = self.chunk[layer, slots].long()  # (T, J, m)
        strength = self.strength[layer, slots].float()
        valid = chunk >= 0
        sat = strength / (strength + SATURATION)
        contrib = (read[..., None] * sat)[valid]
        chunk = chunk[valid]
        alive = self.alive[chunk]
        if keep_slots:
            slot = slots[..., None].expand_as(valid)[valid]
            return (contrib[alive], slot[alive]), chunk[alive]
        return contrib[alive], chunk[alive]

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
