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

from fwpkm_rag.errors import InputError, InputTypeError, QueryTooLongError
from fwpkm_rag.pipelines.ingest import memory_only_kwargs


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
    """A cache for questions: empty KV, the store's memories (never written: use with read_only=True).

    `store_cache` is a FwPKMCache or an IndexView (anything with a `memory` sequence)."""
    qc = model.init_cache(1)
    qc.memory = list(store_cache.memory)
    return qc


def check_query(index, query) -> list[int]:
    """The question's token ids (eos first); clear errors for a non-str, invalid or too long question."""
    if isinstance(query, (bytes, bytearray, memoryview)):
        raise InputTypeError(f"the query must be a str, got {type(query).__name__}; decode it first")
    if not isinstance(query, str):
        raise InputTypeError(f"the query must be a str, got {type(query).__name__}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the query is not valid Unicode: {query[exc.start]!r} at index {exc.start}") from None
    limit = index.max_query_tokens
    if len(query) > 8 * limit:  # more characters than any text of `limit` tokens has bytes: skip tokenizing
        raise QueryTooLongError(f"the query has {len(query):,} characters, over the limit of {limit:,} tokens "
                                "(max_query_tokens); shorten it or raise the store's max_query_tokens")
    ids = [index.eos] + index.tok.encode(query)
    if len(ids) - 1 > limit:
        raise QueryTooLongError(f"the query is {len(ids) - 1:,} tokens, over the limit of {limit:,} "
                                "(max_query_tokens); shorten it or raise the store's max_query_tokens")
    return ids


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputTypeError(f"k must be an int >= 0, got {type(k).__name__} {k!r}")
    if k < 0:
        raise InputError(f"k must be an int >= 0, got {k!r}")
    return k


@torch.no_grad()
def read_question(index, query: str, view=None) -> QueryReads:
    start = time.perf_counter()
    ids = check_query(index, query)
    view = index.view if view is None else view
    qc = query_cache(index.model, view)
    x = torch.tensor([ids], dtype=torch.long, device=index.device)
    out = index.model(x, cache=qc, read_only=True, return_memory=True, logits_to_keep=1,
                      **memory_only_kwargs(index.model))
    reads = []
    for slots, weights, _gate in out.memory_reads:
        T = slots.shape[1]
        reads.append((slots[0].reshape(T, -1).cpu(), weights[0].reshape(T, -1).float().cpu()))
    tw = index.token_weights(ids, view)
    tw[0] = 0.0
    return QueryReads(ids, reads, tw, time.perf_counter() - start)


def rank_chunks(index, query: str, k: int, *, with_matches: bool = False, match_top: int = 8) -> list[Hit]:
    """The k best live chunks for `query` (fewer only when the store holds fewer).

    Runs on one published view of the store (memory, provenance, documents consistent with each other): a
    concurrent add or delete is seen entirely or not at all, and never blocks this call."""
    k = check_k(k)
    check_query(index, query)  # errors before anything else, even on an empty store
    with index.snapshot() as (view, db):
        table = view.provenance
        if k == 0 or table.n_chunks == 0 or not bool(table.alive.any()):
            return []
        q = read_question(index, query, view)
        scores = table.score(q.reads, q.token_weight)
        alive = table.alive
        positive = torch.nonzero(alive & (scores > 0)).flatten()
        order = torch.sort(-scores[positive], stable=True).indices
        chosen = positive[order][:k].tolist()
        if len(chosen) < k:
            rest = torch.nonzero(alive & ~(scores > 0)).flatten()[: k - len(chosen)].tolist()
            chosen += rest
        records = view.docs.get_chunks(chosen, db)
        hits = []
        for rank, cid in enumerate(chosen):
            rec = records.get(cid)
            if rec is None:  # pragma: no cover - alive chunks always have a record in the same snapshot
                raise RuntimeError(f"chunk {cid} is live in the memory view but missing from the documents")
            score = float(scores[cid]) if torch.isfinite(scores[cid]) else 0.0
            matches = []
            if with_matches and score > 0:
                matches = [(m.layer, m.slot, m.contribution)
                           for m in table.matches(q.reads, cid, q.token_weight, top=match_top)]
            hits.append(Hit(cid, rec.doc_id, rec.index, rec.text, rec.metadata, score, rank, matches))
        return hits
