"""Retrieval by memory: a question's reads of the memory, traced back to the chunks that wrote those slots.

The question (eos + its tokens) runs through the model with `read_only=True` on a *query cache*: a fresh
cache (empty KV window) whose memories are the store's memory states. States are immutable and a read-only
call never writes them, so a question never changes the store. Its reads (slots and weights at every token of
every FwPKM layer) are scored against the provenance table (`ProvenanceTable.score`), each question token
weighted by its idf over the ingested chunks (the leading eos weighs 0). No embedding model, no vector index.

Ranking: chunks with a positive score, best first (ties by insertion order), then — so that exactly k results
come back whenever k live chunks exist, as LangChain's vector store contract expects — the remaining live
chunks in insertion order with score 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from fwpkm_rag.errors import InputError


@dataclass
class Hit:
    """One retrieved chunk."""

    chunk_id: int
    doc_id: str
    chunk_index: int  # position of the chunk in its document
    text: str
    metadata: dict  # the parent document's metadata, unchanged
    score: float
    rank: int
    matched_slots: list = field(default_factory=list)  # [(layer, slot, contribution)], strongest first

    def provenance(self) -> dict:
        """The "fwpkm" metadata entry of retriever Documents."""
        out = {"chunk_id": self.chunk_id, "chunk_index": self.chunk_index, "score": self.score, "rank": self.rank}
        source = self.metadata.get("source")
        if source is not None:
            out["source"] = source
        if self.matched_slots:
            out["matched_slots"] = [list(m) for m in self.matched_slots]
        return out


@dataclass
class QueryReads:
    ids: list  # question token ids (eos first)
    reads: list  # per FwPKM layer: (slots (T, J), weights (T, J))
    token_weight: torch.Tensor  # (T,)
    seconds: float


def query_cache(model, store_cache):
    """A cache for questions: empty KV, the store's memories (never written: use with read_only=True)."""
    qc = model.init_cache(1)
    qc.memory = list(store_cache.memory)
    return qc


@torch.no_grad()
def read_question(index, query: str) -> QueryReads:
    if not isinstance(query, str):
        raise InputError(f"the query must be a str, got {type(query).__name__}")
    start = time.perf_counter()
    ids = [index.eos] + index.tok.encode(query)
    qc = query_cache(index.model, index.cache)
    x = torch.tensor([ids], dtype=torch.long, device=index.device)
    out = index.model(x, cache=qc, read_only=True, return_memory=True, logits_to_keep=1)
    reads = []
    for slots, weights, _gate in out.memory_reads:
        T = slots.shape[1]
        reads.append((slots[0].reshape(T, -1).cpu(), weights[0].reshape(T, -1).float().cpu()))
    tw = index.token_weights(ids)
    tw[0] = 0.0
    return QueryReads(ids, reads, tw, time.perf_counter() - start)


def rank_chunks(index, query: str, k: int, *, with_matches: bool = False, match_top: int = 8) -> list[Hit]:
    """The k best live chunks for `query` (fewer only when the store holds fewer)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InputError(f"k must be an int >= 0, got {k!r}")
    with index.lock:
        table = index.provenance
        if k == 0 or table.n_chunks == 0 or not bool(table.alive.any()):
            return []
        q = read_question(index, query)
        scores = table.score(q.reads, q.token_weight)
        alive = table.alive
        positive = torch.nonzero(alive & (scores > 0)).flatten()
        order = torch.sort(-scores[positive], stable=True).indices
        chosen = positive[order][:k].tolist()
        if len(chosen) < k:
            rest = torch.nonzero(alive & ~(scores > 0)).flatten()[: k - len(chosen)].tolist()
            chosen += rest
        records = index.docs.get_chunks(chosen)
        hits = []
        for rank, cid in enumerate(chosen):
            rec = records.get(cid)
            if rec is None:  # pragma: no cover - alive chunks always have a record
                continue
            score = float(scores[cid]) if torch.isfinite(scores[cid]) else 0.0
            matches = []
            if with_matches and score > 0:
                matches = [(m.layer, m.slot, m.contribution)
                           for m in table.matches(q.reads, cid, q.token_weight, top=match_top)]
            hits.append(Hit(cid, rec.doc_id, rec.index, rec.text, rec.metadata, score, rank, matches))
        return hits
