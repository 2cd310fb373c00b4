"""Retrieval by memory: question -> reads -> idf -> scores against the provenance -> ranked `Hit`s.

Reads. The question (eos + its tokens) runs through the model with `read_only=True` on a *query cache*: a fresh
cache (empty KV window) whose memories are the store's published memory states. States are immutable and a
read-only call never writes them, so a question never changes the store. Its reads are the slots and weights
at every token of every FwPKM layer.

idf. Each question token is weighted by its idf over the ingested chunks, log(1 + (N + 1) / (df + 1)) with df
the number of chunks that contain the token (the index's `chunk_df`); the leading eos weighs 0.

Scores. A read (slot, weight) meets the slot's writers in the provenance table; a writer scores

    token_weight x read_weight x idf(slot)^2 x s / (s + 0.5)

summed over tokens, reads and layers, with idf(slot) = log(1 + writes to all slots / writes to this slot)
(slots written by very many chunks say little) and the saturation s/(s+0.5) (a chunk that hammered a slot
is not worth many chunks that touched it once). No embedding model, no vector index.

Ranking: chunks with a positive score, best first (ties by insertion order), then — so that exactly k results
come back whenever k live chunks exist, as LangChain's vector store contract expects — the remaining live
chunks in insertion order with score 0.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from fwpkm_rag.errors import InputError, InputTypeError, QueryTooLongError, check_int
from fwpkm_rag.modeling.protocol import Tokenizer
from fwpkm_rag.pipelines.index import IndexView, MemoryIndex
from fwpkm_rag.pipelines.provenance import ProvenanceTable

SATURATION = 0.5
"""s / (s + SATURATION): how fast a writer's strength on a slot stops adding to its score."""


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
    segment: int = 0  # id of the segment holding the chunk (chunk ids are local to their segment)

    def provenance(self) -> dict:
        """The "fwpkm" metadata entry of retriever Documents."""
        out = {"chunk_id": self.chunk_id, "chunk_index": self.chunk_index, "score": self.score, "rank": self.rank,
               "segment": self.segment}
        source = self.metadata.get("source")
        if source is not None:
            out["source"] = source
        if self.matched_slots:
            out["matched_slots"] = [list(m) for m in self.matched_slots]
        return out


@dataclass
class SlotMatch:
    layer: int
    slot: int
    contribution: float


@dataclass
class QueryReads:
    ids: list  # question token ids (eos first)
    reads: list  # per FwPKM layer: (slots (T, J), weights (T, J))
    token_weight: Tensor  # (T,)
    seconds: float


# ---- checks -----------------------------------------------------------------------------------------------------
def check_query(tok: Tokenizer, query, limit: int) -> list[int]:
    """The question's token ids (eos first); clear errors for a non-str, invalid or too long question."""
    if isinstance(query, (bytes, bytearray, memoryview)):
        raise InputTypeError(f"the query must be a str, got {type(query).__name__}; decode it first")
    if not isinstance(query, str):
        raise InputTypeError(f"the query must be a str, got {type(query).__name__}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the query is not valid Unicode: {query[exc.start]!r} at index {exc.start}") from None
    if len(query) > 8 * limit:  # more characters than any text of `limit` tokens has bytes: skip tokenizing
        raise QueryTooLongError(f"the query has {len(query):,} characters, over the limit of {limit:,} tokens "
                                "(max_query_tokens); shorten it or raise the store's max_query_tokens")
    ids = [tok.eos_id] + tok.encode(query)
    if len(ids) - 1 > limit:
        raise QueryTooLongError(f"the query is {len(ids) - 1:,} tokens, over the limit of {limit:,} "
                                "(max_query_tokens); shorten it or raise the store's max_query_tokens")
    return ids


def check_k(k) -> int:
    """k: an int (InputTypeError otherwise) >= 0 (InputError otherwise)."""
    check_int("k", k, error=InputTypeError)
    return check_int("k", k, 0, error=InputError)


# ---- reads and idf ----------------------------------------------------------------------------------------------
def token_idf(view: IndexView, ids: list[int]) -> Tensor:
    """(T,) idf of each question token over the ingested chunks: log(1 + (N + 1) / (df + 1))."""
    n = float(view.next_chunk)
    df = view.chunk_df[torch.as_tensor(ids, dtype=torch.long)].float()  # (T,)
    return torch.log1p((n + 1.0) / (df + 1.0))


@torch.no_grad()
def read_question(index: MemoryIndex, query: str, view: Optional[IndexView] = None) -> QueryReads:
    """The question's reads of `view`'s memories (default: the published view) and its tokens' idf."""
    start = time.perf_counter()
    ids = check_query(index.tok, query, index.settings.max_query_tokens)
    view = index.view if view is None else view
    x = torch.tensor([ids], dtype=torch.long, device=index.device)  # (1, T)
    query_cache = index.model.init_cache(1, memories=view.memory)  # empty KV over the store's memories
    out = index.model(x, cache=query_cache, read_only=True, return_memory=True, logits_to_keep=1, memory_only=True)
    reads = []
    for slots, weights, _gate in out.memory_reads:  # (1, T, H, k) each
        T = slots.shape[1]
        reads.append((slots[0].reshape(T, -1).cpu(), weights[0].reshape(T, -1).float().cpu()))  # (T, J)
    token_weight = token_idf(view, ids)
    token_weight[0] = 0.0  # the leading eos is not part of the question
    return QueryReads(ids, reads, token_weight, time.perf_counter() - start)


# ---- scores -----------------------------------------------------------------------------------------------------
def slot_idf(table: ProvenanceTable, layer: int) -> Tensor:
    """(N,) log(1 + all write events / this slot's write events)."""
    w = table.writes[layer]
    return torch.log1p(w.sum() / w.clamp_min(1.0))


def _contributions(table: ProvenanceTable, layer: int, slots: Tensor, weights: Tensor,
                   token_weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Every live writer met by the reads of one layer: (contribution (E,), chunk id (E,), slot (E,))."""
    slots = slots.long()  # (T, J)
    T, _ = slots.shape
    tw = torch.ones(T) if token_weight is None else token_weight.float()  # (T,)
    read = weights.float() * slot_idf(table, layer)[slots].pow(2) * tw[:, None]  # (T, J)
    chunk = table.chunk[layer, slots].long()  # (T, J, m)
    strength = table.strength[layer, slots].float()  # (T, J, m)
    valid = chunk >= 0
    saturated = strength / (strength + SATURATION)  # (T, J, m)
    contrib = (read[..., None] * saturated)[valid]  # (E,)
    slot = slots[..., None].expand_as(valid)[valid]
    chunk = chunk[valid]
    alive = table.alive[chunk]
    return contrib[alive], chunk[alive], slot[alive]


def score_chunks(table: ProvenanceTable, reads: list, token_weight: Optional[Tensor] = None) -> Tensor:
    """(n_chunks,) score of every chunk for a question; deleted chunks -inf.

    reads: one (slots (T, J), weights (T, J)) per layer — the question's reads, flattened over heads.
    token_weight: (T,) weight of each question token (e.g. its idf), default 1.
    """
    scores = torch.zeros(table.n_chunks)
    for layer, (slots, weights) in enumerate(reads):
        contrib, chunk, _ = _contributions(table, layer, slots, weights, token_weight)
        scores.index_add_(0, chunk, contrib)
    return scores.masked_fill(~table.alive, float("-inf")) if table.n_chunks else scores


def slot_matches(table: ProvenanceTable, reads: list, chunk_id: int, token_weight: Optional[Tensor] = None,
                 top: int = 8) -> list[SlotMatch]:
    """The slots through which a chunk scored for this question, strongest first."""
    found = []
    for layer, (slots, weights) in enumerate(reads):
        contrib, chunk, slot = _contributions(table, layer, slots, weights, token_weight)
        hit = chunk == chunk_id
        for s in torch.unique(slot[hit]).tolist():
            found.append(SlotMatch(layer, int(s), float(contrib[hit & (slot == s)].sum())))
    return sorted(found, key=lambda m: -m.contribution)[:top]


# ---- ranking ----------------------------------------------------------------------------------------------------
def _top_k(scores: Tensor, alive: Tensor, k: int) -> list[int]:
    """Positive scores best first (stable: ties by chunk id), then other live chunks in id order, k in all."""
    positive = torch.nonzero(alive & (scores > 0)).flatten()
    order = torch.sort(-scores[positive], stable=True).indices
    chosen = positive[order][:k].tolist()
    if len(chosen) < k:
        chosen += torch.nonzero(alive & ~(scores > 0)).flatten()[: k - len(chosen)].tolist()
    return chosen


def rank_chunks(index: MemoryIndex, query: str, k: int, *, with_matches: bool = False,
                match_top: int = 8) -> list[Hit]:
    """The k best live chunks for `query` (fewer only when the store holds fewer).

    Runs on one published view of the store (memory, provenance, documents consistent with each other): a
    concurrent add or delete is seen entirely or not at all, and never blocks this call."""
    k = check_k(k)
    check_query(index.tok, query, index.settings.max_query_tokens)  # errors first, even on an empty store
    with index.snapshot() as (view, db):
        ranked = rank_view(index, view, query, k)
        return hits_of(index, view, db, ranked, with_matches=with_matches, match_top=match_top)


@dataclass
class Ranked:
    """One view's top k for a question, before the documents are read: chunk ids best first and their scores."""

    chosen: list  # chunk ids
    scores: list  # float score of each (0 for padding chunks that did not score)
    reads: Optional[QueryReads] = None


def rank_view(index: MemoryIndex, view: IndexView, query: str, k: int) -> Ranked:
    """The k best live chunks of one published view (no documents read: safe on any thread). `index` gives the
    model, tokenizer and limits; the question must have passed `check_query` already."""
    table = view.provenance
    if k == 0 or table.n_chunks == 0 or not bool(table.alive.any()):
        return Ranked([], [])
    q = read_question(index, query, view)
    scores = score_chunks(table, q.reads, q.token_weight)
    chosen = _top_k(scores, table.alive, k)
    values = [float(scores[c]) if torch.isfinite(scores[c]) else 0.0 for c in chosen]
    return Ranked(chosen, values, q)


def hits_of(index: MemoryIndex, view: IndexView, db, ranked: Ranked, *, segment: int = 0,
            with_matches: bool = False, match_top: int = 8) -> list[Hit]:
    """`ranked`'s chunks as Hits: texts and metadata from `view`'s documents through the reader `db` (whose
    read transaction matches `view`), ranks 0.., matched slots when asked."""
    records = view.docs.get_chunks(ranked.chosen, db)
    hits = []
    for rank, (cid, score) in enumerate(zip(ranked.chosen, ranked.scores)):
        rec = records.get(cid)
        if rec is None:  # pragma: no cover - alive chunks always have a record in the same snapshot
            raise RuntimeError(f"chunk {cid} is live in the memory view but missing from the documents")
        hit = Hit(cid, rec.doc_id, rec.index, rec.text, rec.metadata, score, rank, [], segment)
        if with_matches:
            add_matches(view, ranked, hit, match_top)
        hits.append(hit)
    return hits


def add_matches(view: IndexView, ranked: Ranked, hit: Hit, match_top: int = 8) -> None:
    """Fill `hit.matched_slots` (the slots it scored through) from the question's reads of `view`."""
    if hit.score > 0 and ranked.reads is not None:
        q = ranked.reads
        hit.matched_slots = [(m.layer, m.slot, m.contribution)
                             for m in slot_matches(view.provenance, q.reads, hit.chunk_id, q.token_weight, top=match_top)]
