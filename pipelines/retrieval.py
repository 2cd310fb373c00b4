"""Retrieval by memory: question -> reads -> idf -> scores against the provenance -> ranked `Hit`s.

Reads. The question (eos + its tokens) runs through the model with `read_only=True` on a *query cache*: a fresh
cache (empty KV window) whose memories are the store's published memory states, with the query convolution's
tail cleared (`question_memories`: the question starts its own stream; it does not see the last tokens a segment
happened to ingest). States are immutable and a read-only call never writes them, so a question never changes
the store. Its reads are the slots and weights at every token of every FwPKM layer.

Scored layers. Only the reads of the model's FIRST FwPKM layer score chunks (`SCORED_LAYERS`). Measured
(docs/benchmarks.md, "Segments: one question, many segments"): with the default model the second layer's reads
follow the question's template words, not its key, and lifted look-alike needles over the real one (128K
tokens, 17 needles: hit@1 9/17 scoring both layers, 16/17 the first alone). The first layer's queries also
depend on the question's tokens only (no memory is read before it), so one computation of them serves every
segment of a store: `rank_views` (the fast path) computes them once and, per segment, only the top-k against
that segment's sub-keys and the provenance lookup; `rank_view` (one full forward per segment) stays the slow
obvious reference, and a test holds them to the same reads and rankings.

idf. Each question token is weighted by its idf over the ingested chunks, log(1 + (N + 1) / (df + 1)) with df
the number of chunks that contain the token (the index's `chunk_df`); the leading eos weighs 0. A segmented
store counts N and df over all its segments (`idf_counts` adds them up, also across Ray actors), so a token
weighs the same in every segment: measured at 128K tokens in 3 segments, 17 needles, hit@5 16/17 with each
segment's own idf and 17/17 with the store's (docs/benchmarks.md, "Segments").

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

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from fwpkm_rag.errors import InputError, InputTypeError, QueryTooLongError, check_int
from fwpkm_rag.kernels import product_key_topk, read_weights
from fwpkm_rag.modeling.protocol import Tokenizer
from fwpkm_rag.pipelines.index import IndexView, MemoryIndex
from fwpkm_rag.pipelines.provenance import ProvenanceTable

SATURATION = 0.5
"""s / (s + SATURATION): how fast a writer's strength on a slot stops adding to its score."""

SCORED_LAYERS = 1
"""How many FwPKM layers, from the first, score chunks: the first one only (see the module docstring; measured in
docs/benchmarks.md, "Segments: one question, many segments")."""


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
def idf_counts(views: Sequence[IndexView], ids: list[int]) -> tuple[int, Tensor]:
    """(N, df (T,) int64): the chunks ingested by `views` together and, per question token, how many of them
    contain it. Counts add over segments (and over Ray actors), so a store's idf is the same however it is
    split."""
    at = torch.as_tensor(ids, dtype=torch.long)
    n, df = 0, torch.zeros(len(ids), dtype=torch.int64)
    for view in views:
        n += int(view.next_chunk)
        df += view.chunk_df[at].long()
    return n, df


def idf_weight(n: int, df: Tensor) -> Tensor:
    """(T,) the question tokens' weights from idf counts: log(1 + (N + 1) / (df + 1)), the leading eos 0."""
    weight = torch.log1p((float(n) + 1.0) / (df.double() + 1.0)).float()
    weight[0] = 0.0  # the leading eos is not part of the question
    return weight


def store_idf(views: Sequence[IndexView], ids: list[int]) -> Tensor:
    """(T,) the question tokens' idf over all of `views` together (a segmented store's segments)."""
    return idf_weight(*idf_counts(views, ids))


def token_idf(view: IndexView, ids: list[int]) -> Tensor:
    """(T,) idf of each question token over one view's chunks (the leading eos weighs 0)."""
    return idf_weight(*idf_counts([view], ids))


def question_memories(memories) -> tuple:
    """The states a question reads: `memories` with the query convolution's tail cleared (not copied otherwise).

    A stored state keeps the query projections of the last tokens its stream ingested; a question is a stream
    of its own, so its first tokens must not mix them in (nor differ from segment to segment)."""
    return tuple(dataclasses.replace(m, conv_cache=torch.zeros_like(m.conv_cache)) for m in memories)


@torch.no_grad()
def read_question(index: MemoryIndex, query: str, view: Optional[IndexView] = None,
                  token_weight: Optional[Tensor] = None) -> QueryReads:
    """The question's reads of `view`'s memories (default: the published view) and its tokens' weights
    (`token_weight`, default their idf over this view): one full forward over this view's memories (the slow,
    obvious path; `rank_views` is the fast one)."""
    start = time.perf_counter()
    ids = check_query(index.tok, query, index.settings.max_query_tokens)
    view = index.view if view is None else view
    x = torch.tensor([ids], dtype=torch.long, device=index.device)  # (1, T)
    # empty KV over the store's memories (a sealed segment's are read back from its spill: slow, but this is
    # the reference path)
    query_cache = index.model.init_cache(1, memories=question_memories(view.memory))
    out = index.model(x, cache=query_cache, read_only=True, return_memory=True, logits_to_keep=1, memory_only=True)
    reads = []
    for slots, weights, _gate in out.memory_reads:  # (1, T, H, k) each
        T = slots.shape[1]
        reads.append((slots[0].reshape(T, -1).cpu(), weights[0].reshape(T, -1).float().cpu()))  # (T, J)
    token_weight = token_idf(view, ids) if token_weight is None else token_weight
    return QueryReads(ids, reads, token_weight, time.perf_counter() - start)


# ---- scores -----------------------------------------------------------------------------------------------------
def slot_idf(table, layer: int) -> Tensor:
    """(N,) log(1 + all write events / this slot's write events)."""
    w = table.writes[layer]
    return torch.log1p(w.sum() / w.clamp_min(1.0))


def _contributions(table, layer: int, slots: Tensor, weights: Tensor,
                   token_weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Every live writer met by the reads of one layer: (contribution (E,), chunk id (E,), slot (E,)).
    `table`: a ProvenanceTable or a sealed segment's CompactProvenance (the same entries, in the same order)."""
    slots = slots.long()  # (T, J)
    T, _ = slots.shape
    tw = torch.ones(T) if token_weight is None else token_weight.float()  # (T,)
    read = (weights.float() * slot_idf(table, layer)[slots].pow(2) * tw[:, None]).reshape(-1)  # (T*J,)
    flat = slots.reshape(-1)  # (T*J,)
    which, chunk, strength = table.entries(layer, flat)  # (E,) each
    contrib = read[which] * (strength / (strength + SATURATION))  # saturated strength
    slot = flat[which]
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


def rank_view(index: MemoryIndex, view: IndexView, query: str, k: int,
              token_weight: Optional[Tensor] = None) -> Ranked:
    """The k best live chunks of one published view (no documents read: safe on any thread). `index` gives the
    model, tokenizer and limits; the question must have passed `check_query` already. `token_weight`: the
    question tokens' weights (a segmented store passes its store-wide idf), default their idf over this view."""
    table = view.provenance
    if k == 0 or table.n_chunks == 0 or not bool(table.alive.any()):
        return Ranked([], [])
    q = read_question(index, query, view, token_weight)
    q = dataclasses.replace(q, reads=q.reads[:SCORED_LAYERS])
    return _ranked(table, q, k)


def _ranked(table, q: QueryReads, k: int) -> Ranked:
    scores = score_chunks(table, q.reads, q.token_weight)
    chosen = _top_k(scores, table.alive, k)
    picked = scores[torch.as_tensor(chosen, dtype=torch.long)]  # one gather, not a tensor op per chunk
    values = torch.where(torch.isfinite(picked), picked, torch.zeros_like(picked)).tolist()
    return Ranked(chosen, values, q)


# ---- the fast path: one question, many segments ---------------------------------------------------------------
class _Captured(Exception):
    """Ends a question's forward once the first FwPKM layer's input is in hand (nothing after it is needed)."""


def first_layer_queries(model, ids: list[int]) -> Tensor:
    """(1, T, H*k_dim) the question's queries at the model's first FwPKM layer, convolution tail cleared.

    No memory is read before that layer, so its input, and these queries, are the same whatever memory the
    question reads: computed once per question, not once per segment. The layer's input is taken by a forward
    pre-hook on this thread's call (another thread's forward on the same model, an ingest, passes untouched),
    and the forward stops there."""
    layer = model.fwpkm_modules[0]
    me, got = threading.get_ident(), []

    def grab(_module, args, kwargs):
        if threading.get_ident() != me or got:
            return None
        got.append((args[0] if args else kwargs["hidden"], args[1] if len(args) > 1 else kwargs["state"]))
        raise _Captured

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        x = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, T)
        model(x, cache=model.init_cache(1), read_only=True, logits_to_keep=1, memory_only=True)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not got:  # pragma: no cover - every MemoryLM runs its FwPKM layers
        raise RuntimeError("the model's forward never reached its first FwPKM layer")
    hidden, state = got[0]
    state = layer.init_state(1) if state is None else state  # a block called without a state makes a fresh one
    q, _, _, _ = layer.project(hidden, torch.zeros_like(state.conv_cache))  # (1, T, H*k_dim)
    return q


def reads_against(q: Tensor, keys: Tensor, config) -> tuple[Tensor, Tensor]:
    """A question's reads of one memory from its queries: q (1, T, H*k_dim) against keys (1, 2Hn, k_dim/2) ->
    (slots (T, H*k), weights (T, H*k)). The same ops on the same pieces of C tokens as the memory's own read
    (memory.core.read_chunk via stream_memory), so the same ids and weights as a forward over that memory."""
    T = q.shape[1]
    H, C = config.heads, config.chunk_size
    slots, weights = [], []
    for a in range(0, T, C):
        part = q[:, a:a + C].reshape(1, -1, H, config.k_dim)  # (1, L, H, k_dim)
        s, scores, _ = product_key_topk(part, keys, topk=config.topk, score=config.score, eps=config.eps)
        slots.append(s[0].reshape(part.shape[1], -1))  # (L, H*k)
        weights.append(read_weights(scores)[0].reshape(part.shape[1], -1).float())
    return torch.cat(slots), torch.cat(weights)


@torch.no_grad()
def rank_views(model, views: Sequence[IndexView], ids: list[int], k: int, q: Optional[Tensor] = None,
               token_weight: Optional[Tensor] = None) -> list[Ranked]:
    """Every view's own top k for a question (checked token ids `ids`, eos first): the first FwPKM layer's
    queries computed once (`first_layer_queries`, or `q` when the caller has them), then per view only the
    top-k against its sub-keys and the provenance lookup. `token_weight` (T,): the question tokens' weights for
    every view (a store's idf over all its segments), default each view's own idf. Agrees with `rank_view` (one
    forward per view) on reads and rankings (tests). Each view is ranked on its own, so any split of `views`
    over threads gives the same results."""
    if k == 0 or not views:
        return [Ranked([], []) for _ in views]
    start = time.perf_counter()
    q = first_layer_queries(model, ids) if q is None else q
    config = model.fwpkm_modules[0].config
    out = []
    for view in views:
        table = view.provenance
        if table.n_chunks == 0 or not bool(table.alive.any()):
            out.append(Ranked([], []))
            continue
        reads = [reads_against(q, view.keys[0], config)]
        weight = token_idf(view, ids) if token_weight is None else token_weight
        out.append(_ranked(table, QueryReads(ids, reads, weight, time.perf_counter() - start), k))
    return out


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
