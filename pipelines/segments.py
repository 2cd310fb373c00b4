"""Segments: a store as an ordered list of bounded FwPKM memories, queried together (docs/segments.md).

One FwPKM memory holds a bounded number of associations cleanly (issue 14: needle recall 100% at 128K tokens,
0% at 1M). `SegmentedIndex` keeps an ordered list of `Segment`s, each a `MemoryIndex` (a memory, its provenance
table and its own document database of the text parts it holds) with an id and a sealed flag:

- New text goes to the open segment (the last one, unsealed). When its stream holds `segment_tokens` tokens it
  is sealed (never written again) and a new one opens. A document that does not fit is split at chunk
  boundaries: its parts are exact substrings whose concatenation is the document, each stored (with the whole
  document's id and metadata) in the segment that ingests it.
- The catalog maps each document id to the ids of the segments holding its parts, in order, and keeps the
  documents' order: `get` concatenates the parts, delete / replace reach every part, `len` counts documents.
- One add (or delete) call is one transaction over every segment it touches: each touched segment's
  MemoryIndex opens its two-phase write (`begin_write` ... `prepare_write`, then `commit_write` or
  `abort_write`), segments created by the call are dropped on failure, and the new list of segment views is
  published in one step (`StoreView`), so readers see all of a call or nothing of it.
- A question fans out: its first-FwPKM-layer queries are computed once, then every segment ranks its top k on
  its own published view (its sub-keys' top-k, its provenance: `rank_segments`), the question's tokens
  weighted by their idf over the whole store, and `merge.merge_order` merges the lists by the store's `merge`
  strategy; only the winners' documents are read (`merged_hits`). `search_reference` is the slow, obvious
  path (a forward per segment). With `word_layer=True` each segment also scores the question by its word layer,
  and the two sources are fused over the whole store before the merge (`fuse_words`, docs/addressing.md "In
  the store"); with `semantic_layer=True` its chunk semantic layer is a third source of the same fusion
  (docs/addressing.md, "A chunk-level semantic layer").
- A sealed segment keeps in RAM only what that ranking reads (`MemoryIndex.seal`): sub-keys, packed provenance
  of the scored layer, token counts; its memory states live on disk and are read back only for answers from
  memory and saving.
- Delete tombstones chunks in their segments (a sealed segment also remembers the ids, for persistence);
  `compact` rebuilds only the segments whose live fraction fell below a threshold, from their stored parts.

No LangChain here; `FwPKMStore` is the adapter. Persistence (one folder per segment, a catalog, a manifest):
persistence.py.
"""
from __future__ import annotations

import bisect
import dataclasses
import numbers
import secrets
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from fwpkm_rag.errors import InputError, InputTypeError
from fwpkm_rag.modeling.protocol import MemoryLM
from fwpkm_rag.pipelines import chunking
from fwpkm_rag.pipelines.docstore import dump_metadata
from fwpkm_rag.pipelines.index import IndexView, MemoryIndex, progress_bar
from fwpkm_rag.pipelines.merge import merge_hits, merge_order
from fwpkm_rag.pipelines.retrieval import (SCORED_LAYERS, Hit, Ranked, add_matches, check_k, check_query,
                                           first_layer_queries, hits_of, idf_weight, rank_view, rank_views,
                                           store_idf)
from fwpkm_rag.pipelines.settings import StoreSettings, check_max_document_chars
from fwpkm_rag.pipelines.word_layer import CANDIDATES, flat_top, fuse_sources, question_idf

SEARCH_THREADS = 1
"""Threads that rank one question's segments. One: a second thread never helped on the 2-core target machine
(160 segments, p50 on 1 / 2 threads: 68 / 82 ms idle, 77-109 / 78-126 ms loaded; docs/benchmarks.md): the work
per segment is dozens of small torch ops, bound by Python and the GIL. `rank_segments(threads=...)` keeps the
split for machines where it pays."""

MIN_SEGMENTS_PER_THREAD = 8
"""Fewer segments than this per thread are ranked on the caller's thread (a thread hand-off costs more)."""

_KEEP = object()  # add(max_document_chars=...) not given: the store's own limit


def new_uid() -> str:
    """A random name for a segment's content (its folder name once sealed: persistence.py)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Segment:
    """One segment of a store: a MemoryIndex with an id and a sealed flag. Immutable record: a write call makes
    new records for the segments it changes (the MemoryIndex objects keep their own transactions)."""

    id: int
    index: MemoryIndex
    sealed: bool = False
    uid: str = field(default_factory=new_uid)  # names the content; a sealed segment's folder (persistence.py)
    tombstones: tuple = ()  # doc ids deleted from it since it was sealed (its saved folder + these = its state)


@dataclass(frozen=True)
class SegmentView:
    """A segment as one published store state shows it."""

    id: int
    sealed: bool
    index: MemoryIndex  # model, tokenizer, limits (never written through a view)
    view: IndexView  # the segment's published memory, provenance and documents


@dataclass(frozen=True)
class StoreView:
    """A published, immutable state of a segmented store: what readers see."""

    segments: tuple  # SegmentView, in order
    catalog: dict  # doc id -> tuple of segment ids holding its parts, in order; documents in order (never mutated)
    version: int

    @property
    def memory(self) -> tuple:
        """The newest segment's memories (one MemoryState per FwPKM layer); answers route by question instead
        (`SegmentedIndex.memory_for`)."""
        return self.segments[-1].view.memory


class _Transaction:
    """One add or delete call over the segments: private copies of the segment list and the catalog, and the
    MemoryIndex transactions it opened."""

    def __init__(self, store: "SegmentedIndex"):
        self.store = store
        self.segments: list[Segment] = list(store.segments)
        self.catalog: dict = dict(store.catalog)
        self.next_segment = store.next_segment
        self.begun: dict = {}  # segment id -> MemoryIndex with an open write transaction
        self.created: list[MemoryIndex] = []  # indexes of the segments this call made

    def position(self, segment_id: int) -> int:
        for i in range(len(self.segments) - 1, -1, -1):
            if self.segments[i].id == segment_id:
                return i
        raise KeyError(segment_id)  # pragma: no cover - the catalog names only existing segments

    def touch(self, segment: Segment, *, light: bool) -> MemoryIndex:
        """The segment's index inside this transaction (its write transaction opened on first touch)."""
        index = self.begun.get(segment.id)
        if index is None:
            index = segment.index
            index.begin_write(light=light)
            self.begun[segment.id] = index
        return index

    def open_segment(self) -> tuple[int, MemoryIndex]:
        """(position, index) of the open segment, created if the last one is sealed (or there is none)."""
        if self.segments and not self.segments[-1].sealed:
            return len(self.segments) - 1, self.touch(self.segments[-1], light=False)
        index = MemoryIndex(self.store.model, self.store.settings)
        self.created.append(index)
        index.begin_write()
        segment = Segment(self.next_segment, index)
        self.next_segment += 1
        self.segments.append(segment)
        self.begun[segment.id] = index
        return len(self.segments) - 1, index

    def seal(self, position: int) -> None:
        # a new uid: the sealed content gets its own folder name, never one an open copy of it had
        self.segments[position] = dataclasses.replace(self.segments[position], sealed=True, uid=new_uid())

    def delete(self, doc_id: str) -> None:
        """Drop every part of a document (missing ids are ignored)."""
        parts = self.catalog.pop(doc_id, None)
        for segment_id in parts or ():
            i = self.position(segment_id)
            segment = self.segments[i]
            self.touch(segment, light=True).delete([doc_id])
            if segment.sealed:
                self.segments[i] = dataclasses.replace(segment, tombstones=segment.tombstones + (doc_id,))

    def delete_all(self) -> None:
        for segment in self.segments:
            self.touch(segment, light=True).delete(None)
        self.catalog = {}

    def prepare(self, bar=None) -> None:
        for index in self.begun.values():
            index.prepare_write(bar)

    def abort(self) -> None:
        for index in self.begun.values():
            index.abort_write()
        for index in self.created:
            index.docs.close()


class SegmentedIndex:
    """An ordered list of segments behind one store (see the module docstring)."""

    def __init__(self, model: MemoryLM, settings: Optional[StoreSettings] = None, *,
                 _segments: Optional[list] = None, _catalog: Optional[dict] = None, _next_segment: int = 0,
                 **settings_kwargs):
        settings = StoreSettings() if settings is None else settings
        self.settings = settings.replace(**settings_kwargs) if settings_kwargs else settings
        self.model: MemoryLM = model
        self.lock = threading.RLock()  # one writer at a time (add, delete, compact, save)
        self._publish_lock = threading.Lock()  # swaps the published view; held only for a moment
        self.segments: list[Segment] = list(_segments) if _segments else [Segment(0, MemoryIndex(model, self.settings))]
        self.tok = self.segments[0].index.tok
        self.catalog: dict = dict(_catalog) if _catalog else {}
        self.next_segment = max([_next_segment] + [s.id + 1 for s in self.segments])
        self.view: Optional[StoreView] = None
        self._set_view()
        self._compact_sealed()

    # ---- published state ------------------------------------------------------------------------------------
    def _set_view(self) -> None:
        """Publish the current segments and catalog (call under `_publish_lock`, or before any reader exists)."""
        version = 0 if self.view is None else self.view.version + 1
        self.view = StoreView(tuple(SegmentView(s.id, s.sealed, s.index, s.index.view) for s in self.segments),
                              self.catalog, version)

    def _commit(self, txn: _Transaction) -> None:
        """Phase two of a call: every touched segment publishes, and the new segment list with it, in one step
        for readers (they take the store's view under the same lock)."""
        with self._publish_lock:
            for index in txn.begun.values():
                index.commit_write()
            # a sealed segment left without documents is dropped (its memory answers nothing any more)
            segments = [s for s in txn.segments
                        if not (s.sealed and s.id in txn.begun and s.index.docs.n_documents() == 0)]
            if not segments:
                segments = [Segment(txn.next_segment, MemoryIndex(self.model, self.settings))]
                txn.next_segment += 1
            self.segments, self.catalog, self.next_segment = segments, txn.catalog, txn.next_segment
            self._set_view()

    def _compact_sealed(self) -> None:
        """Sealed segments keep in RAM only what retrieval reads (`MemoryIndex.seal`: memory states to disk,
        provenance packed), then the store view is republished. After a commit, so a failure here (a full disk)
        loses nothing: the segment stays whole in RAM and is compacted by a later call."""
        done = False
        for segment in self.segments:
            if segment.sealed and not segment.index.sealed:
                try:
                    segment.index.seal(SCORED_LAYERS)
                except OSError as exc:
                    warnings.warn(f"segment {segment.id} could not be compacted (it stays in RAM): {exc}")
                    continue
                done = True
        if done:
            with self._publish_lock:
                self._set_view()

    @contextmanager
    def snapshot(self):
        """(StoreView, one reader connection per segment) consistent with each other, for one read; never waits
        for a writer."""
        with self._publish_lock:
            view = self.view
            dbs = []
            try:
                for sv in view.segments:
                    db = sv.view.docs.reader()
                    db.execute("BEGIN")
                    dbs.append(db)
                    db.execute("SELECT count(*) FROM docs").fetchone()  # fixes the read snapshot now
            except BaseException:
                for db in dbs:
                    db.execute("COMMIT")
                raise
        try:
            yield view, dbs
        finally:
            for db in dbs:
                db.execute("COMMIT")

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def device(self):
        return self.model.device

    @property
    def tokens_ingested(self) -> int:
        return sum(s.index.tokens_ingested for s in self.segments)

    @property
    def n_live_chunks(self) -> int:
        return sum(s.index.n_live_chunks for s in self.segments)

    def nbytes(self) -> int:
        """Resident bytes of every segment's index (memory states, KV window, provenance, token counts)."""
        return sum(s.index.nbytes() for s in self.segments)

    def __len__(self) -> int:
        return len(self.view.catalog)

    # ---- writing --------------------------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Optional[str], str, Optional[dict]]], *, passes: Optional[int] = None,
            show_progress: Optional[bool] = None, max_document_chars=_KEEP, bar=None) -> list[str]:
        """Ingest (id or None, text, metadata or None) items from any iterable; returns the ids in order. One
        transaction: a failure anywhere leaves every segment, the catalog and the segment list as they were.
        An id already in the store is replaced (every part of the old document is deleted).

        Progress: a tqdm bar over tokens when `show_progress`, or `bar` — any object with update(n),
        set_postfix_str(s, refresh=...) and close() that the tokens stream into (a Ray actor's counter)."""
        passes = self.settings.passes if passes is None else passes
        limit = (self.settings.max_document_chars if max_document_chars is _KEEP
                 else check_max_document_chars(max_document_chars))
        if bar is None:
            bar = progress_bar(self.settings.show_progress if show_progress is None else show_progress)
        ids_out: list[str] = []
        with self.lock, torch.no_grad():
            txn = _Transaction(self)
            try:
                if txn.segments and not txn.segments[-1].sealed:
                    txn.open_segment()  # the open segment's full transaction first (a replace may delete in it)
                for _, doc_id, text, metadata in chunking.checked_items(items, limit):
                    dump_metadata(metadata)  # bad metadata fails before any part is stored
                    txn.delete(doc_id)  # replacing: the old parts go, wherever they are
                    doc = chunking.chunk_document(self.tok, text, self.settings.chunk_tokens,
                                                  self.settings.chunk_overlap)
                    txn.catalog[doc_id] = tuple(self._place(txn, doc_id, text, metadata, doc, passes, bar))
                    ids_out.append(doc_id)
                txn.prepare(bar)
                self._commit(txn)
            except BaseException:
                txn.abort()  # every segment exactly as before this call; new segments dropped
                raise
            finally:
                if bar is not None:
                    bar.close()
            self._compact_sealed()  # committed already: the segments this call sealed shrink in RAM
        return ids_out

    def _place(self, txn: _Transaction, doc_id: str, text: str, metadata, doc: chunking.ChunkedDocument,
               passes: int, bar) -> list[int]:
        """Stream a document into the open segment(s), split at chunk boundaries where a segment fills up;
        returns the ids of the segments holding its parts, in order."""
        cap = self.settings.segment_tokens
        parts: list[int] = []
        while True:
            pos, index = txn.open_segment()
            segment_id = txn.segments[pos].id
            if cap is None:
                index.write_document(doc_id, text, metadata, passes=passes, bar=bar, doc=doc)
                return parts + [segment_id]
            lead = 0 if index.at_boundary else 1  # the stream's very first document is led by an eos
            room = cap - index.stream_tokens
            ends = [span[4] for span in doc.spans]  # core token end of each chunk
            if passes * (len(doc.ids) + 1) + lead <= room:
                index.write_document(doc_id, text, metadata, passes=passes, bar=bar, doc=doc)
                if index.stream_tokens >= cap:
                    txn.seal(pos)
                return parts + [segment_id]
            fit = bisect.bisect_right(ends, (room - lead) // passes - 1)  # chunks whose tokens + eos fit
            if fit == 0:
                if index.stream_tokens > 0:  # not even one chunk fits: seal, go on in a new segment
                    txn.seal(pos)
                    continue
                fit = 1  # an empty segment takes at least one chunk
            if fit >= len(doc.spans):
                index.write_document(doc_id, text, metadata, passes=passes, bar=bar, doc=doc)
                txn.seal(pos)
                return parts + [segment_id]
            (head, head_text), (doc, text) = split_document(doc, text, fit)
            index.write_document(doc_id, head_text, metadata, passes=passes, bar=bar, doc=head)
            parts.append(segment_id)
            txn.seal(pos)

    def delete(self, doc_ids: Optional[Iterable[str]] = None) -> None:
        """Drop documents (all when None) from every segment holding a part of them; missing ids are ignored.
        One transaction, published at the end."""
        with self.lock:
            txn = _Transaction(self)
            try:
                if doc_ids is None:
                    txn.delete_all()
                else:
                    for doc_id in doc_ids:
                        txn.delete(doc_id)
                txn.prepare()
                self._commit(txn)
            except BaseException:
                txn.abort()
                raise

    # ---- compaction -----------------------------------------------------------------------------------------
    def compact(self, min_live_fraction: float = 0.5, *, passes: Optional[int] = None) -> list[int]:
        """Rebuild every segment whose live chunks are fewer than `min_live_fraction` of its chunks, from its
        stored parts (a sealed segment with nothing live is dropped); the other segments are not touched.
        Returns the ids of the segments rebuilt or dropped. Readers keep the old state until the swap."""
        if isinstance(min_live_fraction, bool) or not isinstance(min_live_fraction, numbers.Real):
            raise InputTypeError(f"min_live_fraction must be a number in [0, 1], got {type(min_live_fraction).__name__}")
        if not 0.0 <= float(min_live_fraction) <= 1.0:
            raise InputError(f"min_live_fraction must be in [0, 1], got {min_live_fraction!r}")
        with self.lock:
            chosen = [s.id for s in self.segments
                      if s.index.provenance.n_chunks
                      and s.index.n_live_chunks < min_live_fraction * s.index.provenance.n_chunks]
            self._rebuild_segments(chosen, passes)
            return chosen

    def rebuild(self, *, passes: Optional[int] = None) -> None:
        """Rebuild every segment from its live parts (deleted or replaced content leaves the fast weights)."""
        with self.lock:
            self._rebuild_segments([s.id for s in self.segments], passes)

    def _rebuild_segments(self, ids: list, passes: Optional[int]) -> None:
        fresh: dict = {}
        try:
            for segment in self.segments:
                if segment.id in ids:
                    empty = segment.sealed and segment.index.n_live_chunks == 0
                    fresh[segment.id] = None if empty else segment.index.rebuilt(passes=passes)
        except BaseException:
            for index in fresh.values():
                if index is not None:
                    index.docs.close()
            raise
        with self._publish_lock:
            segments = []
            for segment in self.segments:
                if segment.id not in fresh:
                    segments.append(segment)
                elif fresh[segment.id] is not None:
                    segments.append(dataclasses.replace(segment, index=fresh[segment.id], uid=new_uid(), tombstones=()))
            if not segments:
                segments = [Segment(self.next_segment, MemoryIndex(self.model, self.settings))]
                self.next_segment += 1
            self.segments = segments
            self._set_view()
        self._compact_sealed()
        # the old databases are removed when the last reader's view of them is gone (DocStore's finalizer)

    # ---- reading --------------------------------------------------------------------------------------------
    def search(self, query: str, k: int, *, with_matches: bool = False, match_top: int = 8,
               strategy: Optional[str] = None, words: Optional[bool] = None) -> list[Hit]:
        """The k best live chunks for `query` over every segment (fewer only when the store holds fewer): each
        segment ranks its own top k on its published view (`rank_segments`), and `merge_order` merges them by
        `strategy` (default: the store's `merge`). Hits name their segment; ranks are global. `words`: fuse the
        word layer's scores (default: when the store has the layer); False ranks by the lexical store alone."""
        k = check_k(k)
        check_query(self.tok, query, self.settings.max_query_tokens)  # errors first, even on an empty store
        fused = self._fused(words)
        strategy = self._strategy(strategy, fused)
        with self.snapshot() as (view, dbs):
            segments = view.segments
            if k == 0:
                return []
            if fused:
                ranked = fuse_words(segments, query, rank_segments(segments, query, max(k, CANDIDATES)), k,
                                    self.settings.word_weight, semantic_weight=self.settings.semantic_weight,
                                    semantic_power=self.settings.semantic_power,
                                    exact_first=self.settings.semantic_exact_first)
            else:
                ranked = rank_segments(segments, query, k)
            return merged_hits(segments, dbs, ranked, k, strategy, with_matches=with_matches, match_top=match_top)

    def _fused(self, words: Optional[bool]) -> bool:
        """Whether a search fuses the store's layers with the lexical ranking: `words`, default whether the store has
        a word or a semantic layer (False: the lexical store alone)."""
        if words is None:
            return self.settings.word_layer or self.settings.semantic_layer
        if not isinstance(words, bool):
            raise InputTypeError(f"words must be True, False or None, got {type(words).__name__}")
        if words and not self.settings.word_layer:
            raise InputError("words=True needs a store built with word_layer=True")
        return words

    def _strategy(self, strategy: Optional[str], fused: bool) -> str:
        """The merge strategy of a search: the store's by default; with the word layer only "raw" (the fusion
        normalises each source over the whole store already)."""
        strategy = self.settings.merge if strategy is None else strategy
        if fused and strategy != "raw":
            raise InputError(f"a store with word_layer=True ranks by the fusion of its sources over the whole store "
                             f"(docs/addressing.md); the merge strategy can only be 'raw', got {strategy!r}")
        return strategy

    def search_reference(self, query: str, k: int, *, strategy: Optional[str] = None) -> list[Hit]:
        """`search` by the slow, obvious path: one full forward of the question per segment over that segment's
        memories (`retrieval.rank_view`; a sealed segment's read back from disk). Tests hold `search` to it."""
        k = check_k(k)
        ids = check_query(self.tok, query, self.settings.max_query_tokens)
        fused = self._fused(None)
        strategy = self._strategy(strategy, fused)
        with self.snapshot() as (view, dbs), torch.no_grad():
            weight = store_idf([sv.view for sv in view.segments], ids)
            depth = max(k, CANDIDATES) if fused and k else k
            ranked = [rank_view(sv.index, sv.view, query, depth, weight) for sv in view.segments]
            if fused and k:
                ranked = fuse_words_reference(view.segments, query, ranked, k, self.settings.word_weight,
                                              semantic_weight=self.settings.semantic_weight,
                                              semantic_power=self.settings.semantic_power,
                                              exact_first=self.settings.semantic_exact_first)
            per_segment = [hits_of(sv.index, sv.view, db, r, segment=sv.id)
                           for sv, r, db in zip(view.segments, ranked, dbs)]
            return merge_hits(per_segment, k, strategy)

    def memory_for(self, question: str) -> tuple:
        """The memories (one MemoryState per FwPKM layer, read only) that an answer from memory to `question`
        reads: a memory holds only its own segment's text, so the question goes to the segment whose chunk
        retrieval ranks first for it. With one segment, that one, without retrieving."""
        view = self.view
        if len(view.segments) == 1:
            return tuple(view.segments[0].view.memory)
        hits = self.search(question, 1)
        if hits:
            for sv in self.view.segments:
                if sv.id == hits[0].segment:
                    return tuple(sv.view.memory)  # a sealed segment's read back from disk
        return self.view.memory  # nothing ranked (an empty store), or the segment went away meanwhile

    def get(self, doc_ids: Iterable[str]) -> list[tuple[str, str, dict]]:
        """(id, full text, metadata) for each id that exists, in the order given: the parts concatenated."""
        with self.snapshot() as (view, dbs):
            where = {sv.id: (sv, db) for sv, db in zip(view.segments, dbs)}
            out = []
            for doc_id in doc_ids:
                parts = view.catalog.get(doc_id)
                if parts is None:
                    continue
                texts, metadata = [], None
                for segment_id in parts:
                    sv, db = where[segment_id]
                    for _, text, meta in sv.view.docs.get_documents([doc_id], db):
                        texts.append(text)
                        metadata = meta if metadata is None else metadata
                out.append((doc_id, "".join(texts), metadata if metadata is not None else {}))
            return out

    def doc_ids(self) -> list[str]:
        """Every document id, in document order."""
        return list(self.view.catalog)

    def iter_documents(self) -> Iterator[tuple[str, str, dict]]:
        for doc_id in self.doc_ids():
            yield from self.get([doc_id])

    def close(self) -> None:
        for segment in self.segments:
            segment.index.close()

    # ---- what `fwpkm-rag info` and the tests read ---------------------------------------------------------------
    def segment_stats(self) -> list[dict]:
        """Per segment: id, sealed, stream tokens, documents (parts), chunks, live chunks, resident bytes."""
        with self.snapshot() as (view, dbs):
            out = []
            for sv, db in zip(view.segments, dbs):
                table = sv.view.provenance
                out.append({"id": sv.id, "sealed": sv.sealed, "tokens": sv.index.tokens_ingested,
                            "parts": sv.view.docs.n_documents(db), "chunks": table.n_chunks,
                            "live_chunks": int(table.alive.sum()) if table.n_chunks else 0,
                            "bytes_in_memory": sv.index.nbytes()})
            return out


def rank_segments(segments, query: str, k: int, threads: int = SEARCH_THREADS,
                  idf: Optional[tuple] = None) -> list[Ranked]:
    """Each segment's own top k for `query` (checked already), by the fast path (`retrieval.rank_views`: the
    question's first-layer queries once, then per segment its sub-keys' top-k and its provenance), the segments
    split into `threads` runs of consecutive segments ranked on threads (torch releases the GIL in its ops).
    The question's tokens weigh their idf over all of `segments` together, or over the counts `idf` = (N, df)
    when given (a Ray actor holds only some of a store's segments: the driver sums every actor's counts).
    The local store and the Ray actors (distributed.py) both rank through here."""
    if not segments:
        return []
    first = segments[0].index
    ids = check_query(first.tok, query, first.settings.max_query_tokens)
    views = [sv.view for sv in segments]
    weight = store_idf(views, ids) if idf is None else idf_weight(*idf)
    with torch.no_grad():
        q = first_layer_queries(first.model, ids) if k else None
    runs = min(threads, len(views) // MIN_SEGMENTS_PER_THREAD)
    if runs < 2:
        return rank_views(first.model, views, ids, k, q, weight)
    bounds = [round(i * len(views) / runs) for i in range(runs + 1)]
    with ThreadPoolExecutor(max_workers=runs) as pool:
        parts = pool.map(lambda ab: rank_views(first.model, views[ab[0]:ab[1]], ids, k, q, weight),
                         zip(bounds, bounds[1:]))
        return [r for part in parts for r in part]


def fusion_sources(segments, query: str, ranked: list[Ranked], word_idf: Optional[torch.Tensor] = None) -> list:
    """[lexical, words] (+ [semantic] when the segments hold chunk semantic layers): per segment, {chunk id: score
    > 0} of its lexical ranking `ranked`, of its chunk semantic layer, and of its word layer
    (deleted chunks filtered; the question's word idf `word_idf`, default counted over these segments' layers)."""
    lexical = [{c: s for c, s in zip(r.chosen, r.scores) if s > 0} for r in ranked]
    layers = [sv.view.words for sv in segments if sv.view.words is not None]
    if word_idf is None and layers:
        word_idf = question_idf(layers, query)  # once per question, over every segment
    # the store's layers share one config, so they address the question's words alike: once per question
    address = layers[0].address(sorted(set(layers[0].units(query)))) if layers else None
    words = [sv.view.words.scores(query, alive=sv.view.provenance.alive, idf=word_idf, address=address)
             if sv.view.words is not None else {} for sv in segments]
    semantic = semantic_scores(segments, query)
    return [lexical, words] if semantic is None else [lexical, words, semantic]


def semantic_scores(segments, query: str, tensors: bool = False) -> Optional[list]:
    """Per segment the chunk semantic layer's scores of `query` ({chunk id: score > 0}, or (ids, scores) tensors
    with `tensors`), deleted chunks filtered; the question is embedded and addressed once for the store (its
    layers share one config). None when no segment has the layer (settings.semantic_layer off)."""
    layers = [sv.view.semantic for sv in segments if getattr(sv.view, "semantic", None) is not None]
    if not layers:
        return None
    address = layers[0].address(layers[0].embed_question(query))
    none = (torch.zeros(0, dtype=torch.long), torch.zeros(0))
    out = []
    for sv in segments:
        layer = getattr(sv.view, "semantic", None)
        if layer is None:
            out.append(none if tensors else {})
        elif tensors:
            out.append(layer.score_tensors(query, alive=sv.view.provenance.alive, address=address))
        else:
            out.append(layer.scores(query, alive=sv.view.provenance.alive, address=address))
    return out


def source_tables(segments, query: str, ranked: list[Ranked], word_idf: Optional[torch.Tensor] = None,
                  semantic: bool = True) -> list[tuple]:
    """`fusion_sources` as tensors: per source (lexical, word layer, and the chunk semantic layer when the segments
    have it and `semantic`) its rows (segment position (S,), chunk id (S,), score (S,) float64 > 0), segments in
    order (Python's floats, as the reference adds them)."""
    G = len(segments)
    layers = [sv.view.words for sv in segments if sv.view.words is not None]
    if word_idf is None and layers:
        word_idf = question_idf(layers, query)  # once per question, over every segment
    address = layers[0].address(sorted(set(layers[0].units(query)))) if layers else None
    no_ids, no_scores = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    word = [sv.view.words.score_tensors(query, alive=sv.view.provenance.alive, idf=word_idf, address=address)
            if sv.view.words is not None else (no_ids, no_scores) for sv in segments]
    lexical = (torch.repeat_interleave(torch.arange(G), torch.as_tensor([len(r.chosen) for r in ranked], dtype=torch.long)),
               torch.as_tensor([c for r in ranked for c in r.chosen], dtype=torch.long),
               torch.as_tensor([x for r in ranked for x in r.scores], dtype=torch.float64))
    words = (torch.repeat_interleave(torch.arange(G), torch.as_tensor([ids.numel() for ids, _ in word], dtype=torch.long)),
             torch.cat([ids for ids, _ in word]), torch.cat([sc for _, sc in word]).double())
    tables = [lexical, words]
    found = semantic_scores(segments, query, tensors=True) if semantic else None  # the chunk semantic layer
    if found is not None:
        tables.append((torch.repeat_interleave(torch.arange(G), torch.as_tensor([ids.numel() for ids, _ in found],
                                                                                  dtype=torch.long)),
                       torch.cat([ids for ids, _ in found]), torch.cat([sc for _, sc in found]).double()))
    out = []
    for seg, ids, score in tables:
        keep = score > 0
        out.append((seg[keep], ids[keep], score[keep]))
    return out


def exact_maximum(segments, query: str, ranked: list[Ranked], word_weight: float, *,
                  word_idf: Optional[torch.Tensor] = None, tops: Optional[list] = None) -> float:
    """The best score of the exact-words fusion (the lexical store and the word layer, each over its maximum
    `tops`, weights 1 and `word_weight`) over these segments, as `fuse_words` computes it (to the bit): a Ray
    actor's share of `exact_top`, whose maximum over the actors the driver passes back (0.0: nothing scored)."""
    if not segments:
        return 0.0
    sources = source_tables(segments, query, ranked, word_idf, semantic=False)
    tops = tops if tops is not None else [float(score.max()) if score.numel() else 0.0 for _, _, score in sources]
    parts = [(seg, ids, score * w / top) for (seg, ids, score), w, top in zip(sources, [1.0, word_weight], tops)
             if top > 0 and w != 0]
    if not parts:
        return 0.0
    keys, inv, value, _ = keyed_rows(parts)
    return float(torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inv, value).max())


def keyed_rows(parts: list[tuple]) -> tuple:
    """The sources' rows [(segment (S,), chunk id (S,), value (S,))] concatenated in order and keyed by (segment,
    chunk): keys (M,) ascending segment * stride + chunk, each row's key index inv (R,), values (R,), stride."""
    seg, ids, value = (torch.cat(x) for x in zip(*parts))
    stride = int(ids.max()) + 1 if ids.numel() else 1
    keys, inv = torch.unique(seg * stride + ids, return_inverse=True)
    return keys, inv, value, stride


def fuse_words(segments, query: str, ranked: list[Ranked], k: int, word_weight: float, *,
               word_idf: Optional[torch.Tensor] = None, tops: Optional[list] = None,
               semantic_weight: float = 0.0, semantic_power: int = 1, exact_first: bool = False,
               exact_top: Optional[float] = None) -> list[Ranked]:
    """`fuse_words_reference` (the same rule, the same lists and scores, to the bit) with the segments' sources
    as tensors: every segment's (segment, chunk) scores of every source are concatenated and fused, sorted and
    cut to k per segment in a handful of ops for the whole store, instead of a dict and a sort per segment."""
    G = len(segments)
    if not G:
        return []
    sources = source_tables(segments, query, ranked, word_idf)
    semantic = sources[2] if len(sources) > 2 else None
    if tops is None:  # each source's maximum over every segment (`word_layer.source_maxima`)
        tops = [float(score.max()) if score.numel() else 0.0 for _, _, score in sources]
    weights, powers = [1.0, word_weight, semantic_weight], [1, 1, semantic_power]
    parts = [(seg, ids, score * w / top if p == 1 else flat_top(score / top, p) * w)
             for (seg, ids, score), w, top, p in zip(sources, weights, tops, powers) if top > 0 and w != 0]
    # rows of the exact-words sources (lexical, word layer) come first in the concatenation below
    n_exact = sum(s[0].numel() for s, w, top in zip(sources[:2], weights, tops) if top > 0 and w != 0)
    chosen: list[list] = [[] for _ in range(G)]
    values: list[list] = [[] for _ in range(G)]
    if parts:
        keys, inv, value, stride = keyed_rows(parts)  # (M,) ascending (segment, chunk); (R,) rows' key index
        fused = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inv, value)  # (M,) a term per source
        if exact_first and semantic is not None:  # the exact-words fusion (lexical + word rows only): its best gets B
            exact = torch.zeros(keys.numel(), dtype=torch.float64).index_add_(0, inv[:n_exact], value[:n_exact])
            best = float(exact.max()) if exact_top is None else exact_top
            if best > 0:
                fused[exact == best] += sum(weights)
        keys, fused = keys[fused > 0], fused[fused > 0]
        by_score = torch.sort(-fused, stable=True).indices  # best first, ties in chunk id order
        order = by_score[torch.sort(keys[by_score] // stride, stable=True).indices]  # grouped by segment
        seg_of = keys[order] // stride
        counts = torch.bincount(seg_of, minlength=G)
        rank = torch.arange(order.numel()) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        top_k = order[rank < k]
        for g, c, v in zip((keys[top_k] // stride).tolist(), (keys[top_k] % stride).tolist(), fused[top_k].tolist()):
            chosen[g].append(c)
            values[g].append(v)
    out = []
    for sv, r, picked, vals in zip(segments, ranked, chosen, values):
        alive = sv.view.provenance.alive
        if len(picked) < k and alive.numel():  # live chunks that scored for neither source, in id order
            taken = torch.zeros_like(alive)
            taken[torch.as_tensor(picked, dtype=torch.long)] = True
            extra = torch.nonzero(alive & ~taken).flatten()[: k - len(picked)].tolist()
            picked, vals = picked + extra, vals + [0.0] * len(extra)
        out.append(Ranked(picked, vals, r.reads))
    return out


def fuse_words_reference(segments, query: str, ranked: list[Ranked], k: int, word_weight: float, *,
               word_idf: Optional[torch.Tensor] = None, tops: Optional[list] = None,
               semantic_weight: float = 0.0, semantic_power: int = 1, exact_first: bool = False,
               exact_top: Optional[float] = None) -> list[Ranked]:
    """Each segment's top k by the fusion of the lexical store and the word layer (docs/addressing.md, "How
    layers are combined" and "In the store"): the lexical source is each segment's ranking `ranked` (its top
    K >= k, positive scores only: chunks below K count 0 for it), the word source each segment's word layer
    scores (deleted chunks filtered by the segment's alive flags; a word's idf counted over every segment's
    layer, `word_layer.question_idf`); each source's scores are divided by its maximum over ALL `segments`, the
    word layer's weighted `word_weight`, the lexical store's 1, and summed (`word_layer.fuse_sources`). Per
    segment: fused scores best first (ties by chunk id), then live chunks that scored for neither source
    (score 0, id order), k in all; the question's lexical reads are kept (matched slots). The fused scores are
    comparable across segments, so a "raw" merge of these lists is the store's global top k. A Ray actor holds
    only some segments: it passes the store-wide word idf `word_idf` and the sources' maxima `tops` (the
    driver's, over every actor). When the segments hold chunk semantic layers (settings.semantic_layer), their
    scores are a third source (`semantic_scores`: the question embedded once; deleted chunks filtered), divided by
    its own maximum over the store, shaped by `word_layer.flat_top` with `semantic_power` and weighted
    `semantic_weight`. With `exact_first` (and the semantic source there) the chunk that the lexical store and
    the word layer alone rank best over the store (their fusion's maximum, `exact_top` when a Ray driver gives
    it) gets B = 1 + word_weight + semantic_weight, the largest fused score a chunk can have, added: it ranks
    first, and the semantic source orders the rest. The slow, obvious path (a dict per segment,
    `word_layer.fuse_sources`): tests hold `fuse_words` to it, and `search_reference` ranks through it."""
    sources = fusion_sources(segments, query, ranked, word_idf)
    out = []
    weights = [1.0, word_weight, semantic_weight][: len(sources)]  # the semantic layer's only when it is there
    powers = [1, 1, semantic_power][: len(sources)]
    all_fused = fuse_sources(sources, weights, tops, powers)
    if exact_first and len(sources) > 2:
        exact = fuse_sources(sources[:2], weights[:2], None if tops is None else tops[:2])
        best = max((v for per in exact for v in per.values()), default=0.0) if exact_top is None else exact_top
        for fused, per in zip(all_fused, exact):
            for c, v in per.items():
                if best > 0 and v == best:
                    fused[c] += sum(weights)
    for sv, r, fused in zip(segments, ranked, all_fused):
        chosen = sorted(fused, key=lambda c: (-fused[c], c))[:k]
        alive = sv.view.provenance.alive
        if len(chosen) < k and alive.numel():
            taken = torch.zeros_like(alive)
            taken[torch.as_tensor(chosen, dtype=torch.long)] = True
            chosen += torch.nonzero(alive & ~taken).flatten()[: k - len(chosen)].tolist()
        out.append(Ranked(chosen, [fused.get(c, 0.0) for c in chosen], r.reads))
    return out


def merged_hits(segments, dbs, ranked: list[Ranked], k: int, strategy: str, *, with_matches: bool = False,
                match_top: int = 8) -> list[Hit]:
    """The global top k of the segments' rankings (`merge.merge_order`), as Hits with global ranks: only the
    winners' documents are read (through each segment's reader in `dbs`)."""
    order = merge_order([r.scores for r in ranked], k, strategy)
    hits = []
    for rank, (seg, pos) in enumerate(order):
        sv, r = segments[seg], ranked[seg]
        one = Ranked([r.chosen[pos]], [r.scores[pos]], r.reads)
        hit = hits_of(sv.index, sv.view, dbs[seg], one, segment=sv.id)[0]
        hit.rank = rank
        if with_matches:
            add_matches(sv.view, r, hit, match_top)
        hits.append(hit)
    return hits


def split_document(doc: chunking.ChunkedDocument, text: str, n_chunks: int):
    """Cut a chunked document after its first `n_chunks` chunks: ((head, head text), (rest, rest text)), two
    ChunkedDocuments whose chunk spans count from their own first token. The head's text ends where the rest's
    begins (the sum of the head chunks' core lengths), so the two texts concatenate to `text`."""
    cut_tok = doc.spans[n_chunks][3]
    cut_char = sum(len(t) - off for _, t, off, _, _ in doc.spans[:n_chunks])
    head = chunking.ChunkedDocument(doc.ids[:cut_tok], doc.spans[:n_chunks])
    rest = chunking.ChunkedDocument(
        np.ascontiguousarray(doc.ids[cut_tok:]),
        [(i - n_chunks, t, off, s - cut_tok, e - cut_tok) for i, t, off, s, e in doc.spans[n_chunks:]])
    return (head, text[:cut_char]), (rest, text[cut_char:])

