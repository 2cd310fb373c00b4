"""`MemoryIndex`: the model's memory, the provenance table and the chunk counts of one store, and the
transaction that changes them (add, delete, rebuild) and publishes them to readers (`IndexView`).

No LangChain here (`FwPKMStore` is a thin adapter over this class). Checking and chunking documents is
chunking.py's job, scoring a question retrieval.py's; the index runs the stream and owns the state.

The stream. Documents are separated by the tokenizer's eos token: the stream reads

    eos d1 eos d2 eos d3 eos | (next add call) d4 eos ...

i.e. each document is followed by an eos (and the very first one preceded by one). The trailing eos gives a
document's last token a lookahead target, so every token of the document writes the memory under its own
key. Tokens go through the model in pieces of about `piece_tokens` (documents are packed into a piece until it
is full: one model call serves many small documents); the memory's queued partial chunk is flushed at the
end of every add call, so a question asked afterwards sees everything.

Attribution. Every write record names the stream position of its first token ("start"); the token at
position p belongs to the retrieval chunk whose core token span contains it (a document's leading/trailing
eos to its first/last chunk). Each (slot, strength = gate x read weight) is recorded for that chunk in the
provenance table of its FwPKM layer. `chunk_overlap` only widens the returned text to the left; attribution
uses the non-overlapping core spans.

Nothing but the current piece, the provenance table (fixed size) and a map of the still-unwritten positions
is held in RAM: an iterable/generator of any length streams through at flat memory.

Sealing. A segment that the segmented store seals never takes another write but deletes, so `seal()` keeps in
RAM only what retrieval reads: the sub-keys of each memory (the fast path's top-k), the scored layers'
provenance packed (`CompactProvenance`), the chunk counts (int32) and the alive flags. The memory states (values,
the KV window) go to a private folder on disk (`SpilledMemory`, the files `cache.save` writes), read back only
for answers from memory, the slow reference path and saving; the full provenance table goes to the segment's
database (on disk), where a save copies it from.

Transactions and readers. An add (or delete) call is one transaction: it works on private copies of the
memory states, the provenance table and the token counts, and on an open SQLite transaction; at the end it
commits the documents and publishes the new state (an `IndexView`) in one step, or, when anything fails
midway (bad input, a crash of the model, KeyboardInterrupt), rolls the documents back and drops the copies, so
the store is exactly as it was. Readers (searches, chat) take the current view and a read transaction of the
documents under a short lock and never wait for a writer: they see the store before or after a write, never
half of one. One writer at a time (`index.lock`).

The word layer (`settings.word_layer`, docs/addressing.md "In the store"). The index then also owns a
`WordLayer`: the core text of every chunk it registers is queued with the chunk's id and written in
`prepare_write` (one write per call, so the layer's length normalisation sees the call's chunks together), on
the transaction's private copy (`WordLayer.clone`, dropped on abort) published in the view (`IndexView.words`).
Deletes change nothing in it: retrieval filters its scores by the index's alive flags. Sealing keeps it packed
(`WordLayer.compacted`), its full table going to the database as the provenance's does; a rebuild re-adds the
live chunks.

The chunk semantic layer (`settings.semantic_layer`, docs/addressing.md "A chunk-level semantic layer") is kept
the same way (`ChunkSemanticLayer`, `IndexView.semantic`): chunks' core texts queued and embedded in
`prepare_write` on the transaction's clone, a frozen copy once sealed, `semantic.*` arrays and meta in the
database, rebuilt from the stored chunks with a warning when a snapshot lacks it.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from fwpkm_rag.errors import ConfigError, StateFormatError
from fwpkm_rag.modeling.cache import KV_FILE, MEMORY_FILE
from fwpkm_rag.modeling.protocol import MemoryLM
from fwpkm_rag.pipelines import chunking
from fwpkm_rag.pipelines.docstore import DocStore, dump_metadata
from fwpkm_rag.pipelines.provenance import CompactProvenance, ProvenanceTable
from fwpkm_rag.pipelines.settings import StoreSettings, check_max_document_chars
from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticLayer
from fwpkm_rag.pipelines.word_layer import WordLayer, chunk_word_texts

_KEEP = object()  # add(max_document_chars=...) not given: the index's own limit


@dataclass(frozen=True)
class IndexView:
    """A published, immutable state of an index: what readers see. Nothing ever writes these objects."""

    memory: tuple  # one MemoryState per FwPKM layer (a sealed segment: a SpilledMemory, read from disk)
    provenance: ProvenanceTable  # (a sealed segment: CompactProvenance)
    chunk_df: torch.Tensor  # (vocab,) chunks containing each token (int64; int32 once sealed)
    next_chunk: int  # chunk ids handed out so far (the N of the question-token idf)
    docs: DocStore
    version: int
    keys: tuple = ()  # (1, 2Hn, k_dim/2) sub-keys per FwPKM layer (sealed: the scored layers' only): all the
    # fast path reads of the memories
    words: Optional[WordLayer] = None  # the word layer (settings.word_layer), or None
    semantic: Optional[ChunkSemanticLayer] = None  # the chunk semantic layer (settings.semantic_layer), or None


SPILL_PREFIX = "fwpkm-sealed-"
"""Spill folders are named SPILL_PREFIX + the owning process id + "-" + a random part, in the temp dir."""

_swept = False  # this process has removed dead processes' spill folders already


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_spills() -> list:
    """Remove the spill folders of processes that are gone (killed with -9, a Ray actor killed, a crash: their
    finalizers never ran); returns the paths removed. Folders of live processes, this one included, stay."""
    root, removed = tempfile.gettempdir(), []
    for name in os.listdir(root):
        if not name.startswith(SPILL_PREFIX):
            continue
        pid = name[len(SPILL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(os.path.join(root, name))
    return removed


def link_or_copy(src: str, dst: str) -> None:
    """A hard link of `src` at `dst`, or a copy when the file system refuses the link (another device)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class SpilledMemory:
    """A sealed segment's memory states (and KV window) on disk, in a private folder in the format `cache.save`
    writes: a read-only sequence of MemoryStates, one per FwPKM layer, read back from the folder on each use
    (answers from memory, the reference path, saving) and never held. The folder goes with the last reference."""

    def __init__(self, model: MemoryLM, cache, keys: tuple, source: Optional[str] = None):
        """`source`: a saved segment folder holding these very states (a store being loaded): its files are
        hard-linked into the private folder (copied where the two are on different file systems) instead of
        written again. A link shares the disk blocks, and the saved files are written once and never changed,
        so a later save that removes the saved folder leaves this one whole."""
        global _swept
        if not _swept:  # once per process: what killed processes left behind
            _swept = True
            sweep_stale_spills()
        self.model, self.keys = model, keys
        self.folder = tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        try:
            if source is None:
                cache.save(self.folder)
            else:
                for name in [MEMORY_FILE.format(i) for i in range(len(cache.memory))] + [KV_FILE]:
                    link_or_copy(os.path.join(source, name), os.path.join(self.folder, name))
        except BaseException:
            self._finalizer()
            raise
        self.n_memories, self.position = len(cache.memory), cache.position

    def load(self):
        """The whole cache (memories and KV window) as it was when sealed."""
        return self.model.load_cache(self.folder)

    def save(self, folder: str) -> None:
        """Copy the files into `folder` (what `cache.save(folder)` would write)."""
        for name in sorted(os.listdir(self.folder)):
            shutil.copyfile(os.path.join(self.folder, name), os.path.join(folder, name))

    def remove(self) -> None:
        """Delete the folder now (a closed store), rather than when the last reference goes."""
        self._finalizer()

    def nbytes(self) -> int:
        """Bytes held in RAM: the sub-keys (the rest is on disk)."""
        return sum(k.numel() * k.element_size() for k in self.keys)

    def __len__(self) -> int:
        return self.n_memories

    def __iter__(self):
        return iter(self.load().memory)

    def __getitem__(self, i):
        return tuple(self.load().memory)[i]


class _ChunkPositions:
    """Which chunk each not-yet-written stream position belongs to: sorted segment starts -> chunk ids.

    A segment starts at a chunk's first core token (a document's first segment at its leading eos, if any),
    so `chunk_at(p)` is the chunk of the last segment starting at or before p. Segments whose positions were
    all written are dropped (`prune`), which keeps this small whatever the stream's length."""

    def __init__(self):
        self.starts: list[int] = []
        self.chunks: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def add_document(self, base: int, shift: int, core_starts: list[int], chunk_ids: list[int]) -> None:
        """A document whose tokens start at stream position `base + shift` (`shift`: a leading eos)."""
        self.starts += [base] + [base + shift + s for s in core_starts[1:]]
        self.chunks += chunk_ids

    def chunk_at(self, positions: torch.Tensor) -> torch.Tensor:
        """(P,) chunk id of each stream position (P,)."""
        starts = torch.tensor(self.starts, dtype=torch.long)
        segment = (torch.searchsorted(starts, positions, right=True) - 1).clamp_min(0)
        return torch.tensor(self.chunks, dtype=torch.long)[segment]

    def prune(self, oldest_unwritten: int) -> None:
        cut = bisect.bisect_right(self.starts, oldest_unwritten) - 1
        if cut > 0:
            del self.starts[:cut], self.chunks[:cut]

    def clear(self) -> None:
        self.starts, self.chunks = [], []


class MemoryIndex:
    """The model's memory as a retrieval index over a stream of documents (see the module docstring)."""

    def __init__(self, model: MemoryLM, settings: Optional[StoreSettings] = None, *,
                 _docstore: Optional[DocStore] = None, **settings_kwargs):
        settings = StoreSettings() if settings is None else settings
        self.settings = settings.replace(**settings_kwargs) if settings_kwargs else settings
        if not model.config.fwpkm_layers:
            raise ConfigError("the model has no FwPKM layer: it has no memory to index documents with")
        self.model: MemoryLM = model
        self.tok = model.get_tokenizer()
        self.device = model.device
        self.cache = model.init_cache(1)
        n_slots = model.config.fwpkm_config.n_slots
        self.provenance = ProvenanceTable(len(model.config.fwpkm_layers), n_slots, self.settings.per_slot)
        self.chunk_df = torch.zeros(model.config.vocab_size, dtype=torch.int64)  # chunks containing each token
        self.docs = _docstore if _docstore is not None else DocStore()
        self.next_chunk = 0  # chunk ids are global and never reused
        self.next_seq = 0  # insertion order of documents
        self.tokens_ingested = 0
        self.at_boundary = False  # the stream ends with an eos separator
        self.lock = threading.RLock()  # one writer at a time (add, delete, rebuild, save)
        self._publish_lock = threading.Lock()  # swaps the published view; held only for a moment
        self.view: Optional[IndexView] = None
        self._writing = False  # inside a write transaction (its private copies are the ones to change)
        self._light = False  # the open transaction only deletes
        self._saved: Optional[dict] = None  # what abort_write restores
        self._queue: Optional[chunking.TokenQueue] = None
        self._unwritten = _ChunkPositions()
        self._spill: Optional[SpilledMemory] = None  # the memory states on disk, once sealed
        self.words: Optional[WordLayer] = WordLayer(topk=self.settings.word_topk) if self.settings.word_layer else None
        self._word_queue: list = []  # (core text, chunk id) of the chunks registered in the open transaction
        self.words_rebuilt = False  # restore_state rebuilt the word layer from the stored chunks
        # the chunk semantic layer (settings.semantic_layer), kept like the word layer: written in prepare_write on
        # the transaction's clone, compacted when sealed, saved in the database, rebuilt with a warning if missing
        self.semantic: Optional[ChunkSemanticLayer] = ChunkSemanticLayer() if self.settings.semantic_layer else None
        self._semantic_queue: list = []  # (core text, chunk id) of the chunks registered in the open transaction
        self.semantic_rebuilt = False
        self.publish()

    # ---- published state (readers) --------------------------------------------------------------------------
    def publish(self) -> None:
        """Commit the documents and make the current memory, provenance and counts what readers see."""
        with self._publish_lock:
            self.docs.commit()
            version = 0 if self.view is None else self.view.version + 1
            self.view = self._view(version)

    def _view(self, version: int) -> IndexView:
        if self.sealed:
            memory, keys = self._spill, self._spill.keys
        else:
            memory = tuple(self.cache.memory)
            keys = tuple(m.keys for m in memory)
        return IndexView(memory, self.provenance, self.chunk_df, self.next_chunk, self.docs, version, keys,
                         self.words, self.semantic)

    @property
    def position(self) -> int:
        """The memory stream's position (tokens the model has consumed)."""
        return self._spill.position if self.sealed else self.cache.position

    @property
    def sealed(self) -> bool:
        """Compacted by `seal()`: read-only but for deletes, memory states on disk."""
        return self._spill is not None

    @contextmanager
    def snapshot(self):
        """(view, reader connection) consistent with each other, for one read; never waits for a writer."""
        with self._publish_lock:
            view = self.view
            db = view.docs.reader()
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM docs").fetchone()  # fixes the read snapshot of the documents now
        try:
            yield view, db
        finally:
            db.execute("COMMIT")

    def _begin(self) -> dict:
        """Private copies of the mutable state for one write call; returns what to restore on failure."""
        if self.sealed:
            raise RuntimeError("this segment is sealed: it takes deletes only (begin_write(light=True))")
        saved = {"cache": self.cache, "provenance": self.provenance, "chunk_df": self.chunk_df,
                 "next_chunk": self.next_chunk, "next_seq": self.next_seq, "tokens_ingested": self.tokens_ingested,
                 "at_boundary": self.at_boundary, "words": self.words, "semantic": self.semantic}
        if self.semantic is not None:
            self.semantic = self.semantic.clone()
        self.cache = self.cache.clone()
        if self.words is not None:
            self.words = self.words.clone()
        self.provenance = self.provenance.clone()
        self.chunk_df = self.chunk_df.clone()
        return saved

    def _abort(self, saved: dict) -> None:
        self.docs.rollback()
        for name, value in saved.items():
            setattr(self, name, value)
        self._unwritten.clear()

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def eos(self) -> int:
        return self.tok.eos_id

    @property
    def n_live_chunks(self) -> int:
        return int(self.provenance.alive.sum()) if self.provenance.n_chunks else 0

    def nbytes(self) -> int:
        """Resident bytes of the index: memory states + KV window + provenance table + token counts (sealed:
        sub-keys + packed provenance + token counts; the rest is on disk)."""
        memory = self._spill.nbytes() if self.sealed else self.cache.nbytes()
        words = self.words.nbytes() if self.words is not None else 0
        words += self.semantic.nbytes() if self.semantic is not None else 0
        return memory + self.provenance.nbytes() + self.chunk_df.numel() * self.chunk_df.element_size() + words

    def close(self) -> None:
        """Close the database and delete a sealed index's spilled memory folder (the index is unusable after)."""
        self.docs.close()
        if self._spill is not None:
            self._spill.remove()

    # ---- sealing --------------------------------------------------------------------------------------------
    def seal(self, scored_layers: int, saved_folder: Optional[str] = None) -> None:
        """Keep in RAM only what retrieval reads (module docstring, "Sealing"): the memory states to a private
        folder, the full provenance table and counts to the database, then the first `scored_layers` layers'
        provenance packed. Only between write calls; after it, only deletes. Does nothing when sealed already;
        a failure (e.g. a full disk) leaves the index as it was. `saved_folder`: the snapshot folder this index
        was loaded from, whose memory files are linked rather than written again (`SpilledMemory`)."""
        with self.lock:
            if self.sealed:
                return
            if self._writing:
                raise RuntimeError("seal() inside an open write transaction")
            keys = tuple(m.keys for m in self.cache.memory[:scored_layers])  # the scored layers' sub-keys only
            spill = SpilledMemory(self.model, self.cache, keys, saved_folder)
            self._write_tables()
            self.docs.commit()
            compact = CompactProvenance.from_table(self.provenance, scored_layers)
            words = self.words.compacted() if self.words is not None else None
            semantic = self.semantic.compacted() if self.semantic is not None else None
            with self._publish_lock:
                self._spill, self.cache, self.words, self.semantic = spill, None, words, semantic
                self.provenance, self.chunk_df = compact, self.chunk_df.to(torch.int32)
                self.view = self._view(self.view.version + 1)

    # ---- ingestion ------------------------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Optional[str], str, Optional[dict]]], *, passes: Optional[int] = None,
            show_progress: Optional[bool] = None, max_document_chars=_KEEP) -> list[str]:
        """Ingest (id or None, text, metadata or None) items from any iterable; returns the ids in order.

        An id that is already in the store is replaced (its old chunks are never returned again). A document
        longer than `max_document_chars` (default: the index's; None: no limit) raises DocumentTooLargeError
        before it is tokenized, and the whole call is rolled back.
        """
        passes = self.settings.passes if passes is None else passes
        limit = (self.settings.max_document_chars if max_document_chars is _KEEP
                 else check_max_document_chars(max_document_chars))
        bar = progress_bar(self.settings.show_progress if show_progress is None else show_progress)
        ids_out: list[str] = []
        with self.lock, torch.no_grad():
            self.begin_write()
            try:
                for _, doc_id, text, metadata in chunking.checked_items(items, limit):
                    self.write_document(doc_id, text, metadata, passes=passes, bar=bar)
                    ids_out.append(doc_id)
                self.prepare_write(bar)
                self.commit_write()
            except BaseException:
                self.abort_write()  # the store is exactly as before this call
                raise
            finally:
                if bar is not None:
                    bar.close()
        return ids_out

    # ---- the two-phase write (one add call here; a store-wide call over many segments in segments.py) ----------
    # begin_write -> write_document / delete ... -> prepare_write -> commit_write (publish), or abort_write at
    # any point before commit_write: the index is then exactly as before begin_write. Callers hold `self.lock`.
    def begin_write(self, *, light: bool = False) -> None:
        """Open a write transaction on private copies of the state. `light`: a delete-only transaction, which
        copies only the chunks' alive flags (write_document is then not allowed)."""
        if self._writing:
            raise RuntimeError("a write transaction is already open on this index")
        if light:
            self._saved = {"provenance": self.provenance}
            self.provenance = self.provenance.with_own_alive()
        else:
            self._saved = self._begin()
        self._light = light
        self._queue = chunking.TokenQueue(self.settings.piece_tokens)  # tokens waiting for the next model call
        self._writing = True

    def write_document(self, doc_id: str, text: str, metadata: Optional[dict], *, passes: Optional[int] = None,
                       bar=None, doc: Optional[chunking.ChunkedDocument] = None) -> None:
        """Store and stream one checked document inside the open transaction (`doc`: its chunks, when the caller
        has chunked it already; a part of a longer document cut at chunk boundaries, in segments.py)."""
        if not self._writing or self._light:
            raise RuntimeError("write_document needs an open (non-light) write transaction: begin_write()")
        passes = self.settings.passes if passes is None else passes
        self._stream_document(self._queue, *self._register(doc_id, text, metadata, doc), passes, bar)

    @property
    def stream_tokens(self) -> int:
        """Tokens this index's stream holds, counting those queued in an open write transaction."""
        return self.tokens_ingested + (len(self._queue) if self._writing and not self._light else 0)

    def prepare_write(self, bar=None) -> None:
        """Phase one: run what is queued, flush the memory's partial chunk, record the counters. After this only
        commit_write (which cannot fail for lack of input) or abort_write remain."""
        if not self._light:
            if len(self._queue):
                self._run(self._queue.rest(), bar)
            self._record(self.cache.flush())
            self._unwritten.clear()
            if self._word_queue:
                texts, ids = zip(*self._word_queue)
                self.words.add(list(texts), list(ids))
                self._word_queue = []
            if self._semantic_queue:
                texts, ids = zip(*self._semantic_queue)
                self.semantic.add(list(texts), list(ids))
                self._semantic_queue = []
            self._sync_meta()

    def commit_write(self) -> None:
        """Phase two: publish the transaction's state to readers (documents committed, a new IndexView)."""
        self.publish()
        self._end_write()

    def abort_write(self) -> None:
        """Drop the transaction: documents rolled back, the private copies dropped."""
        if not self._writing:
            return
        self._abort(self._saved)
        self._end_write()

    def _end_write(self) -> None:
        self._writing, self._light, self._saved = False, False, None
        self._queue = None
        self._word_queue = []
        self._semantic_queue = []

    def _register(self, doc_id: str, text: str, metadata: Optional[dict],
                  doc: Optional[chunking.ChunkedDocument] = None) -> tuple[np.ndarray, list[int], list[int]]:
        """Chunk a document (unless `doc` holds its chunks), store it and count its chunks' tokens. Returns its
        stream tokens (ids + eos, int32), and per chunk the offset of its first core token in them and its chunk
        id."""
        meta_json = dump_metadata(metadata)
        if doc is None:
            doc = chunking.chunk_document(self.tok, text, self.settings.chunk_tokens, self.settings.chunk_overlap)
        if self.docs.has(doc_id):
            self.delete([doc_id])
        first = self.next_chunk
        self.next_chunk += len(doc.spans)
        self.provenance.reserve(self.next_chunk)
        self.docs.add_document(doc_id, self.next_seq, meta_json,
                               [(first + idx, idx, txt, off, s, e) for idx, txt, off, s, e in doc.spans])
        if self.words is not None:  # written in prepare_write, on the transaction's copy
            texts = chunk_word_texts([txt[off:] for _, txt, off, _, _ in doc.spans])  # cores + the word context
            self._word_queue += [(t, first + idx) for t, (idx, *_) in zip(texts, doc.spans)]
        if self.semantic is not None:  # written in prepare_write, on the transaction's copy
            self._semantic_queue += [(txt[off:], first + idx) for idx, txt, off, _, _ in doc.spans]
        self.next_seq += 1
        self.chunk_df += chunking.chunk_token_counts(doc.ids, self.settings.chunk_tokens, self.chunk_df.numel())
        return (np.append(doc.ids, np.int32(self.eos)), doc.core_starts,
                [first + idx for idx, *_ in doc.spans])

    def _stream_document(self, queue: chunking.TokenQueue, body: np.ndarray, core_starts: list[int],
                         chunk_ids: list[int], passes: int, bar) -> None:
        """Queue a document's tokens `passes` times, note which chunk each position belongs to, and run every
        full piece through the model."""
        for _ in range(passes):
            base = self.cache.position + len(queue)  # stream position of the next queued token
            shift = 0
            if not self.at_boundary:  # the stream's very first document: lead with an eos
                queue.push(np.asarray([self.eos], dtype=np.int32))
                shift = 1
            self._unwritten.add_document(base, shift, core_starts, chunk_ids)
            queue.push(body)
            self.at_boundary = True
            for piece in queue.full():
                self._run(piece, bar)

    def _run(self, piece: np.ndarray, bar) -> None:
        """One model call over `piece` (n,) token ids: the memory is written and the writes attributed."""
        start = time.perf_counter()
        ids = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.int64))[None].to(self.device)  # (1, n)
        out = self.model(ids, cache=self.cache, return_memory=True, logits_to_keep=1, memory_only=True)
        self._record(out.memory_writes)
        self.tokens_ingested += len(piece)
        self._unwritten.prune(self.cache.position - max(self.cache.pending, default=0))
        if bar is not None:
            bar.update(len(piece))
            bar.set_postfix_str(f"{len(piece) / max(time.perf_counter() - start, 1e-9):,.0f} tok/s", refresh=False)

    def _record(self, writes_per_layer: list) -> None:
        """Attribute a call's write records to retrieval chunks; one provenance update per layer per call."""
        if not self._unwritten:
            return
        for layer, writes in enumerate(writes_per_layer):
            all_slots, all_chunks, all_strength = [], [], []
            for w in writes:
                slots, strength = w["slots"][0].cpu(), w["strength"][0].float().cpu()  # (L, H, k)
                L = slots.shape[0]
                if L == 0:
                    continue
                chunk = self._unwritten.chunk_at(torch.arange(w["start"], w["start"] + L))  # (L,)
                all_slots.append(slots.reshape(-1))
                all_chunks.append(chunk[:, None].expand(L, slots[0].numel()).reshape(-1))  # (L * H * k,)
                all_strength.append(strength.reshape(-1))
            if all_slots:
                self.provenance.record(layer, torch.cat(all_slots), torch.cat(all_chunks), torch.cat(all_strength))

    # ---- deletion -------------------------------------------------------------------------------------------
    def delete(self, doc_ids: Optional[Iterable[str]] = None) -> None:
        """Drop documents (all when None); their chunks never score again. Missing ids are ignored.

        Inside an add call (replacing an id) this works on the call's private copies; on its own it is one
        transaction, published at the end."""
        with self.lock:
            nested = self._writing
            if not nested:
                saved = self.provenance
                self.provenance = self.provenance.with_own_alive()
            try:
                if doc_ids is None:
                    self.docs.delete_all()
                    self.provenance.alive[:] = False
                else:
                    self.provenance.delete(self.docs.delete_documents(doc_ids))
                if not nested:
                    self.publish()
            except BaseException:
                if not nested:
                    self.docs.rollback()
                    self.provenance = saved
                raise

    # ---- rebuild --------------------------------------------------------------------------------------------
    def rebuilt(self, *, passes: Optional[int] = None) -> "MemoryIndex":
        """A fresh index (memory, provenance table, document database) holding this one's live documents (same
        ids, texts, metadata, order), re-ingested; this index is not changed. Raises (and leaves nothing behind)
        when the re-ingestion fails."""
        fresh = MemoryIndex(self.model, self.settings)
        try:
            fresh.add(self.iter_documents(), passes=passes, max_document_chars=None)  # already admitted
        except BaseException:
            fresh.docs.close()
            raise
        return fresh

    def rebuild(self, *, passes: Optional[int] = None) -> None:
        """Re-ingest the live documents (same ids, texts, metadata, order) into a fresh memory, provenance
        table and document database, then swap them in: deleted or replaced content is gone from the fast
        weights too. Readers keep using the old state until the swap; a failure leaves the store as it was."""
        with self.lock:
            fresh = self.rebuilt(passes=passes)
            with self._publish_lock:
                for name in ("cache", "provenance", "chunk_df", "docs", "next_chunk", "next_seq", "tokens_ingested",
                             "at_boundary", "_spill", "words", "semantic"):
                    setattr(self, name, getattr(fresh, name))
                self.view = self._view(self.view.version + 1)
            # the old database is removed when the last reader's view of it is gone (DocStore's finalizer)

    # ---- snapshots (persistence.py writes and reads the files) ---------------------------------------------------
    def save_state(self) -> None:
        """Write the provenance table, the chunk counts and the counters into the document database, which a
        snapshot then copies (with the documents) into its store.sqlite. Call under `self.lock`. A sealed index
        wrote its full table when it sealed: only the alive flags (deletes since) are new."""
        if self.sealed:
            self.docs.put_array("provenance.alive", self.provenance.alive)
        else:
            self._write_tables()
        self._sync_meta()

    def _write_tables(self) -> None:
        for name, tensor in self.provenance.tensors().items():
            self.docs.put_array(f"provenance.{name}", tensor)
        self.docs.put_array("chunk_df", self.chunk_df)
        if self.words is not None and not self.words.compact:  # (a sealed segment's was written when it sealed)
            tensors, meta = self.words.state()
            for name, tensor in tensors.items():
                self.docs.put_array(f"words.{name}", tensor)
            # next_chunk: the chunk ids the saved layer covers (a later save without the layer leaves it stale)
            self.docs.set_meta("words", {**meta, "next_chunk": self.next_chunk})
        if self.semantic is not None and not self.semantic.compact:  # (a sealed segment's: written when it sealed)
            tensors, meta = self.semantic.state()
            for name, tensor in tensors.items():
                self.docs.put_array(f"semantic.{name}", tensor)
            self.docs.set_meta("semantic", {**meta, "names": sorted(tensors), "next_chunk": self.next_chunk})

    def save_memory(self, folder: str) -> None:
        """The memory states and KV window into `folder` (memory-<i>.safetensors, kv.safetensors)."""
        if self.sealed:
            self._spill.save(folder)
        else:
            self.cache.save(folder)

    @property
    def n_memories(self) -> int:
        return len(self._spill) if self.sealed else len(self.cache.memory)

    def restore_state(self, cache, source: str) -> None:
        """Take the state a snapshot holds: provenance, chunk counts and counters from the document database
        (`source` names it in errors), the memories and KV window from `cache` (model.load_cache); publish it."""
        try:
            self.provenance = ProvenanceTable.from_tensors(
                {name: self.docs.get_array(f"provenance.{name}") for name in ("chunk", "strength", "writes", "alive")})
            self.chunk_df = self.docs.get_array("chunk_df")
            counters = self.docs.get_meta("counters")
            self.next_chunk, self.next_seq = counters["next_chunk"], counters["next_seq"]
            self.tokens_ingested, self.at_boundary = counters["tokens_ingested"], counters["at_boundary"]
        except (KeyError, TypeError) as exc:
            raise StateFormatError(f"{source} lacks store counters or arrays: {exc}") from None
        self.words = self._restore_words(source) if self.settings.word_layer else None
        self.semantic = self._restore_semantic(source) if self.settings.semantic_layer else None
        self.cache = cache
        self.publish()  # what readers see: the loaded state

    def _restore_words(self, source: str) -> WordLayer:
        """The saved word layer, or (a snapshot saved without it, or one whose layer is stale) a layer rebuilt
        from the stored chunks' texts, live chunks in id order, with a warning saying so."""
        meta = self.docs.get_meta("words")
        same_topk = meta is not None and meta.get("config", {}).get("topk") == self.settings.word_topk
        if meta is not None and meta.get("next_chunk") == self.next_chunk and same_topk:
            try:
                return WordLayer.from_state({name: self.docs.get_array(f"words.{name}")
                                             for name in ("chunk", "strength", "writes", "alive")}, meta)
            except (KeyError, TypeError, ValueError) as exc:
                raise StateFormatError(f"{source} holds a word layer that cannot be read: {exc}") from None
        rows = self.docs.db.execute("SELECT chunk_id, doc_id, text, core_offset FROM chunks ORDER BY chunk_id").fetchall()
        why = ("was saved without a word layer" if meta is None else
               "holds a word layer older than its chunks" if meta.get("next_chunk") != self.next_chunk else
               f"holds a word layer of word_topk {meta.get('config', {}).get('topk')}, not {self.settings.word_topk}")
        warnings.warn(f"{source} {why}: rebuilding it from the {len(rows)} stored chunks (word_layer=True; "
                      "deleted chunks' words are gone, so scores can differ slightly from the layer at ingest)")
        words = WordLayer(topk=self.settings.word_topk)
        texts: list = []
        for _, group in itertools.groupby(rows, key=lambda row: row[1]):  # a document's chunks, in order
            texts += chunk_word_texts([text[off:] for _, _, text, off in group])
        words.add(texts, [row[0] for row in rows])
        self.words_rebuilt = True
        return words

    def _restore_semantic(self, source: str) -> ChunkSemanticLayer:
        """The saved chunk semantic layer, or (a snapshot saved without it, or one whose layer is stale or of another
        config) a layer rebuilt from the stored chunks' texts, live chunks in id order, with a warning saying so."""
        meta = self.docs.get_meta("semantic")
        default = dataclasses.asdict(ChunkSemanticLayer.default_config())
        if meta is not None and meta.get("next_chunk") == self.next_chunk and meta.get("config") == default:
            try:
                return ChunkSemanticLayer.from_state({name: self.docs.get_array(f"semantic.{name}")
                                                      for name in meta["names"]}, meta)
            except (KeyError, TypeError, ValueError) as exc:
                raise StateFormatError(f"{source} holds a semantic layer that cannot be read: {exc}") from None
        rows = self.docs.db.execute("SELECT chunk_id, text, core_offset FROM chunks ORDER BY chunk_id").fetchall()
        why = ("was saved without a semantic layer" if meta is None else
               "holds a semantic layer older than its chunks" if meta.get("next_chunk") != self.next_chunk else
               "holds a semantic layer of another config")
        warnings.warn(f"{source} {why}: rebuilding it from the {len(rows)} stored chunks (semantic_layer=True; a "
                      "MiniLM forward per sentence)")
        semantic = ChunkSemanticLayer()
        semantic.add([text[off:] for _, text, off in rows], [cid for cid, _, _ in rows])
        self.semantic_rebuilt = True
        return semantic

    # ---- documents ------------------------------------------------------------------------------------------
    def _sync_meta(self) -> None:
        self.docs.set_meta("counters", {"next_chunk": self.next_chunk, "next_seq": self.next_seq,
                                        "tokens_ingested": self.tokens_ingested, "at_boundary": self.at_boundary})

    def iter_documents(self) -> Iterator[tuple[str, str, dict]]:
        for doc_id in self.docs.doc_ids():
            yield from self.docs.get_documents([doc_id])


def progress_bar(show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="tok", unit_scale=True, desc="ingest", dynamic_ncols=True)
