"""Streaming ingestion: documents -> retrieval chunks -> the model's memory, with per-write provenance.

`MemoryIndex` is the core of `FwPKMStore` (no LangChain here). It owns one isolated memory stream (a
`FwPKMCache` of batch size 1), the provenance table, the documents (SQLite, on disk) and running counts of
how many chunks contain each token (question-token idf).

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
provenance table of its FwPKM layer. Chunks are `chunk_tokens` tokens of the document; `chunk_overlap` only
widens the returned text to the left, attribution uses the non-overlapping core spans.

Nothing but the current piece, the provenance table (fixed size) and a map of the still-unwritten positions
is held in RAM: an iterable/generator of any length streams through at flat memory. One document is held
whole while it is ingested (its UTF-8 bytes, int32 token ids and chunk texts: about 6 bytes per character on top
of the text itself); it is tokenized in segments (`encode_document`) and documents over `max_document_chars` (default 10M
characters) are refused before tokenizing unless the caller opts in (`max_document_chars=None`).

Transactions and readers. An add (or delete) call is one transaction: it works on private copies of the
memory states, the provenance table and the token counts, and on an open SQLite transaction; at the end it
commits the documents and publishes the new state (an `IndexView`) in one step, or, when anything fails
midway (bad input, a crash of the model, KeyboardInterrupt), rolls the documents back and drops the copies, so
the store is exactly as it was. Readers (searches, chat) take the current view and a read transaction of the
documents under a short lock and never wait for a writer: they see the store before or after a write, never
half of one. One writer at a time (`index.lock`).
"""
from __future__ import annotations

import bisect
import copy
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from fwpkm_rag.errors import ConfigError, DocumentTooLargeError, DuplicateIdError, InputError, InputTypeError
from fwpkm_rag.pipelines.docstore import DocStore, dump_metadata
from fwpkm_rag.pipelines.provenance import ProvenanceTable


def token_byte_lengths(tok) -> np.ndarray:
    """(vocab,) int32 UTF-8 byte length of every token of `tok` (special tokens: their names' bytes)."""
    cached = getattr(tok, "_fwpkm_byte_lengths", None)
    if cached is None:
        enc = tok._enc
        lengths = [len(enc.decode_single_token_bytes(i)) for i in range(tok.vocab_size)]
        cached = np.asarray(lengths, dtype=np.int32)
        try:
            tok._fwpkm_byte_lengths = cached
        except AttributeError:  # pragma: no cover - slotted tokenizer
            pass
    return cached


def memory_only_kwargs(model) -> dict:
    """Ingestion and retrieval use only the memory: models that can stop after their last FwPKM layer
    (AttachedFwPKMModel, a truncated backbone forward) are asked to."""
    return {"memory_only": True} if getattr(model, "supports_memory_only", False) else {}


def chunk_spans(text: str, ids: list[int], tok, chunk_tokens: int, chunk_overlap: int) -> list[tuple]:
    """Split a document's tokens into retrieval chunks.

    Returns (idx, chunk text, core_offset, tok_start, tok_end) per chunk: core token spans
    [i*chunk_tokens, (i+1)*chunk_tokens); the text covers [tok_start - chunk_overlap, tok_end) and is an exact
    substring of `text` (cuts are moved back to a character boundary when a token splits a character).

    langchain-text-splitters' `split_text_on_tokens` returns decoded strings without their token spans, and
    decoding a slice that cuts a multi-byte character garbles it; attribution needs the spans, so we slice the
    token ids and cut the original text at the tokens' byte offsets instead.
    """
    n = len(ids)
    if n == 0:
        return [(0, text, 0, 0, 0)]
    raw = text.encode("utf-8")
    # byte offset of every token position a cut can land on (core starts and overlap starts), not of every
    # token: O(chunks) memory on top of the (n,) int32 byte lengths, for documents of millions of tokens
    starts = np.arange(0, n, chunk_tokens, dtype=np.int64)
    points = np.unique(np.concatenate([starts, np.maximum(starts - chunk_overlap, 0), [n]]))
    lengths = token_byte_lengths(tok).astype(np.int32, copy=False)[np.asarray(ids)]
    point_bytes = np.zeros(len(points), dtype=np.int64)
    np.cumsum(np.add.reduceat(lengths, points[:-1], dtype=np.int64), out=point_bytes[1:])
    del lengths
    offsets = dict(zip(points.tolist(), point_bytes.tolist()))
    if offsets[n] != len(raw):  # the tokenizer should round-trip exactly; fall back to decoded slices
        offsets = None

    def cut(tok_pos: int) -> int:  # byte offset of a token boundary, moved back to a character boundary
        b = int(offsets[tok_pos])
        while 0 < b < len(raw) and (raw[b] & 0xC0) == 0x80:
            b -= 1
        return b

    out = []
    for idx, start in enumerate(range(0, n, chunk_tokens)):
        end = min(start + chunk_tokens, n)
        left = max(0, start - chunk_overlap)
        if offsets is None:
            core = tok.decode(ids[start:end])
            widened = tok.decode(ids[left:start]) + core
        else:
            b_left, b_start, b_end = cut(left), cut(start), cut(end) if end < n else len(raw)
            widened = raw[b_left:b_end].decode("utf-8")
            core = raw[b_start:b_end].decode("utf-8")
        out.append((idx, widened, len(widened) - len(core), start, end))
    return out


SEGMENT_CHARS = 1 << 20
"""Documents longer than this many characters are tokenized segment by segment (see `encode_document`)."""

DEFAULT_MAX_DOCUMENT_CHARS = 10_000_000
"""Default `max_document_chars`: about 2.5M tokens, 5-15 minutes of ingestion on a 2-core CPU."""


def encode_document(tok, text: str, segment_chars: Optional[int] = None) -> np.ndarray:
    """A document's token ids as an int32 array, tokenized in segments of about `segment_chars` characters.

    Tokenizing a 50 MB string at once builds a list of ~12M Python ints (~450 MB); segments keep that to a few
    MB at a time, and the ids are kept as int32 (4 bytes per token). A long text is cut after a newline (else
    before a space, else anywhere) near each segment end; each segment round-trips exactly, so the ids still
    decode to `text` exactly (they can differ from a whole-text encoding at a cut, where a word could have
    merged across it)."""
    segment_chars = SEGMENT_CHARS if segment_chars is None else segment_chars
    if len(text) <= segment_chars:
        return np.asarray(tok.encode(text), dtype=np.int32)
    parts, pos = [], 0
    while pos < len(text):
        hi = min(pos + segment_chars, len(text))
        if hi < len(text):
            lo = hi - segment_chars // 8
            nl = text.rfind("\n", lo, hi)
            sp = text.rfind(" ", lo, hi)
            hi = nl + 1 if nl > pos else (sp if sp > pos else hi)
        parts.append(np.asarray(tok.encode(text[pos:hi]), dtype=np.int32))
        pos = hi
    return np.concatenate(parts)


def check_limit(text: str, n: int, limit: Optional[int]) -> None:
    """Refuse a document longer than `limit` characters (None: no limit), before any work is done on it."""
    if limit is not None and len(text) > limit:
        raise DocumentTooLargeError(
            f"document #{n} has {len(text):,} characters, over the limit of {limit:,} (max_document_chars): about "
            f"{len(text) // 4:,} tokens, which stream into the memory at roughly 3-10K tokens/s on a CPU. Split it "
            "into several documents, or opt in: FwPKMStore(max_document_chars=None) or add_texts(..., "
            "max_document_chars=None) (CLI: --max-document-chars 0)")


@dataclass(frozen=True)
class IndexView:
    """A published, immutable state of an index: what readers see. Nothing ever writes these objects."""

    memory: tuple  # one MemoryState per FwPKM layer
    provenance: ProvenanceTable
    chunk_df: torch.Tensor
    next_chunk: int
    docs: DocStore
    version: int


def _clone_table(table: ProvenanceTable) -> ProvenanceTable:
    return ProvenanceTable.from_tensors({k: v.clone() for k, v in table.tensors().items()})


def _check_max_chars(value) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"max_document_chars must be None (no limit) or an int >= 1, got {value!r}")
    return value


_KEEP = object()  # add(max_document_chars=...) not given: the index's own limit


def check_text(text, n: int, limit: Optional[int] = None) -> str:
    """A document's text must be a str of valid Unicode (encodable as UTF-8) of at most `limit` characters
    (checked first: a huge text is refused without being read)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise InputTypeError(f"document #{n}: text must be a str, got {type(text).__name__}; decode it first "
                             "(e.g. data.decode('utf-8'))")
    if not isinstance(text, str):
        raise InputTypeError(f"document #{n}: text must be a str, got {type(text).__name__}")
    check_limit(text, n, limit)
    try:
        if not text.isascii():  # (an ASCII str is valid; no 50 MB copy for a 50 MB document)
            text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"document #{n}: text is not valid Unicode: {text[exc.start]!r} at index {exc.start} "
                         "(a lone surrogate, e.g. from decoding non-UTF-8 bytes with errors='surrogateescape')") from None
    return text


class _Piece:
    """Token ids queued for the model, cut into calls of `size` tokens in linear time (no re-slicing of the
    whole queue per call: a 12M-token document would make that quadratic)."""

    def __init__(self, size: int):
        self.size, self.parts, self.n = size, [], 0

    def __len__(self) -> int:
        return self.n

    def push(self, ids: np.ndarray) -> None:
        if len(ids):
            self.parts.append(ids)
            self.n += len(ids)

    def full(self) -> Iterator[np.ndarray]:
        """Yield every full call's ids (views); keep the remainder queued."""
        if self.n < self.size:
            return
        buf = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        self.parts, self.n = [], 0
        off = 0
        while len(buf) - off >= self.size:
            yield buf[off:off + self.size]
            off += self.size
        self.push(buf[off:])

    def rest(self) -> np.ndarray:
        buf = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int32)
        self.parts, self.n = [], 0
        return buf


class MemoryIndex:
    """The model's memory as a retrieval index over a stream of documents (see the module docstring)."""

    max_query_tokens = 8192  # questions / prompts longer than this raise QueryTooLongError

    def __init__(self, model, *, chunk_tokens: int = 256, chunk_overlap: int = 0, piece_tokens: int = 2048,
                 per_slot: int = 32, passes: int = 1, show_progress: bool = False, _docstore: Optional[DocStore] = None,
                 max_query_tokens: Optional[int] = None,
                 max_document_chars: Optional[int] = DEFAULT_MAX_DOCUMENT_CHARS):
        self.max_document_chars = _check_max_chars(max_document_chars)
        if max_query_tokens is not None:
            if isinstance(max_query_tokens, bool) or not isinstance(max_query_tokens, int) or max_query_tokens < 1:
                raise ConfigError(f"max_query_tokens must be an int >= 1, got {max_query_tokens!r}")
            self.max_query_tokens = max_query_tokens
        for name, value, low in (("chunk_tokens", chunk_tokens, 1), ("piece_tokens", piece_tokens, 1),
                                 ("per_slot", per_slot, 1), ("passes", passes, 1), ("chunk_overlap", chunk_overlap, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
        if chunk_overlap >= chunk_tokens:
            raise ConfigError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_tokens ({chunk_tokens})")
        if not model.config.fwpkm_layers:
            raise ConfigError("the model has no FwPKM layer: it has no memory to index documents with")
        self.model = model
        self.tok = model.get_tokenizer()
        self.chunk_tokens, self.chunk_overlap, self.piece_tokens = chunk_tokens, chunk_overlap, piece_tokens
        self.passes, self.show_progress = passes, show_progress
        self.device = model.embed_tokens.weight.device
        self.cache = model.init_cache(1)
        n_slots = model.config.fwpkm_config.n_slots
        self.provenance = ProvenanceTable(len(model.config.fwpkm_layers), n_slots, per_slot)
        self.chunk_df = torch.zeros(model.config.vocab_size, dtype=torch.int64)  # chunks containing each token
        self.docs = _docstore if _docstore is not None else DocStore()
        self.next_chunk = 0  # chunk ids are global and never reused
        self.next_seq = 0  # insertion order of documents
        self.tokens_ingested = 0
        self.at_boundary = False  # the stream ends with an eos separator
        self.lock = threading.RLock()  # one writer at a time (add, delete, rebuild, save)
        self._publish_lock = threading.Lock()  # swaps the published view; held only for a moment
        self.view: Optional[IndexView] = None
        self._writing = False  # inside an add call (its private copies are the ones to change)
        # positions of the stream not yet written to memory -> chunk id (sorted segment starts)
        self._seg_start: list[int] = []
        self._seg_chunk: list[int] = []
        self.publish()

    # ---- published state (readers) --------------------------------------------------------------------------
    def publish(self) -> None:
        """Commit the documents and make the current memory, provenance and counts what readers see."""
        with self._publish_lock:
            self.docs.commit()
            version = 0 if self.view is None else self.view.version + 1
            self.view = IndexView(tuple(self.cache.memory), self.provenance, self.chunk_df, self.next_chunk,
                                  self.docs, version)

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
        saved = {"cache": self.cache, "provenance": self.provenance, "chunk_df": self.chunk_df,
                 "next_chunk": self.next_chunk, "next_seq": self.next_seq, "tokens_ingested": self.tokens_ingested,
                 "at_boundary": self.at_boundary}
        self.cache = self.cache.clone()
        self.provenance = _clone_table(self.provenance)
        self.chunk_df = self.chunk_df.clone()
        return saved

    def _abort(self, saved: dict) -> None:
        self.docs.rollback()
        for name, value in saved.items():
            setattr(self, name, value)
        self._seg_start, self._seg_chunk = [], []

    # ---- properties -----------------------------------------------------------------------------------------
    @property
    def eos(self) -> int:
        return self.tok.eos_id

    @property
    def n_live_chunks(self) -> int:
        return int(self.provenance.alive.sum()) if self.provenance.n_chunks else 0

    def nbytes(self) -> int:
        """Resident bytes of the index: memory states + KV window + provenance table + token counts."""
        return self.cache.nbytes() + self.provenance.nbytes() + self.chunk_df.numel() * 8

    # ---- ingestion ------------------------------------------------------------------------------------------
    def add(self, items: Iterable[tuple[Optional[str], str, Optional[dict]]], *, passes: Optional[int] = None,
            show_progress: Optional[bool] = None, max_document_chars=_KEEP) -> list[str]:
        """Ingest (id or None, text, metadata or None) items from any iterable; returns the ids in order.

        An id that is already in the store is replaced (its old chunks are never returned again). A document
        longer than `max_document_chars` (default: the index's; None: no limit) raises DocumentTooLargeError
        before it is tokenized, and the whole call is rolled back.
        """
        passes = self.passes if passes is None else passes
        limit = self.max_document_chars if max_document_chars is _KEEP else _check_max_chars(max_document_chars)
        progress = self.show_progress if show_progress is None else show_progress
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(unit="tok", unit_scale=True, desc="ingest", dynamic_ncols=True)
        ids_out: list[str] = []
        seen: dict = {}
        with self.lock, torch.no_grad():
            saved = self._begin()
            self._writing = True
            piece = _Piece(self.piece_tokens)  # tokens queued for the next model call
            try:
                for n_done, (doc_id, text, metadata) in enumerate(items):
                    doc_id = self._check_item(doc_id, text, metadata, n_done, limit)
                    if doc_id in seen:
                        raise DuplicateIdError(f"id {doc_id!r} appears twice in one add call (#{seen[doc_id]} and "
                                               f"#{n_done}): ids within one batch must be unique")
                    seen[doc_id] = n_done
                    body, starts, chunks = self._register(doc_id, text, metadata)
                    ids_out.append(doc_id)
                    for p in range(passes):
                        base = self.cache.position + len(piece)
                        if not self.at_boundary:  # the stream's very first document: lead with an eos
                            piece.push(np.asarray([self.eos], dtype=np.int32))
                            shift = 1
                        else:
                            shift = 0
                        self._seg_start += [base] + [base + shift + s for s in starts[1:]]
                        self._seg_chunk += chunks
                        piece.push(body)
                        self.at_boundary = True
                        for full in piece.full():
                            self._run(full, bar)
                    del body
                if len(piece):
                    self._run(piece.rest(), bar)
                self._record(self.cache.flush())
                self._seg_start, self._seg_chunk = [], []
                self._sync_meta()
                self.publish()
            except BaseException:
                self._abort(saved)  # the store is exactly as before this call
                raise
            finally:
                self._writing = False
                if bar is not None:
                    bar.close()
        return ids_out

    def _check_item(self, doc_id, text, metadata, n: int, limit: Optional[int] = None) -> str:
        check_text(text, n, limit)
        if doc_id is None:
            doc_id = str(uuid.uuid4())
        if not isinstance(doc_id, str):
            raise InputTypeError(f"document #{n}: id must be a str, got {type(doc_id).__name__} {doc_id!r}")
        if not doc_id:
            raise InputError(f"document #{n}: id must be a non-empty str")
        try:
            doc_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"document #{n}: id {doc_id!r} is not valid Unicode (a lone surrogate)") from None
        return doc_id

    def _register(self, doc_id: str, text: str, metadata: Optional[dict]) -> tuple[np.ndarray, list[int], list[int]]:
        """Tokenize and chunk a document and store it. Returns its stream tokens (ids + eos, int32), and per
        chunk the offset of its first core token in them and its chunk id."""
        meta_json = dump_metadata(metadata)
        ids = encode_document(self.tok, text)
        if self.docs.has(doc_id):
            self.delete([doc_id])
        spans = chunk_spans(text, ids, self.tok, self.chunk_tokens, self.chunk_overlap)
        first = self.next_chunk
        self.next_chunk += len(spans)
        self.provenance.reserve(self.next_chunk)
        rows = [(first + idx, idx, txt, off, s, e) for idx, txt, off, s, e in spans]
        self.docs.add_document(doc_id, self.next_seq, meta_json, rows)
        self.next_seq += 1
        del rows
        vocab = self.chunk_df.numel()
        block = self.chunk_tokens * max(1, (1 << 20) // self.chunk_tokens)  # whole chunks, ~1M tokens at a time
        for b in range(0, len(ids), block):  # +1 per (chunk, distinct token in it)
            part = torch.from_numpy(ids[b:b + block]).long()
            chunk_of = torch.arange(b, b + len(part)) // self.chunk_tokens
            pairs = torch.unique(chunk_of * vocab + part)
            self.chunk_df += torch.bincount(pairs % vocab, minlength=vocab)
        return (np.append(ids, np.int32(self.eos)), [s for _, _, _, s, _ in spans],
                [first + idx for idx, *_ in spans])

    def _run(self, piece: np.ndarray, bar) -> None:
        start = time.perf_counter()
        ids = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.int64))[None].to(self.device)
        out = self.model(ids, cache=self.cache, return_memory=True, logits_to_keep=1, **memory_only_kwargs(self.model))
        self._record(out.memory_writes)
        self.tokens_ingested += len(piece)
        self._prune()
        if bar is not None:
            bar.update(len(piece))
            bar.set_postfix_str(f"{len(piece) / max(time.perf_counter() - start, 1e-9):,.0f} tok/s", refresh=False)

    def _record(self, writes_per_layer: list) -> None:
        """Attribute a call's write records to retrieval chunks; one provenance update per layer per call."""
        if not self._seg_start:
            return
        seg_start = torch.tensor(self._seg_start, dtype=torch.long)
        seg_chunk = torch.tensor(self._seg_chunk, dtype=torch.long)
        for layer, writes in enumerate(writes_per_layer):
            all_slots, all_chunks, all_strength = [], [], []
            for w in writes:
                slots, strength = w["slots"][0].cpu(), w["strength"][0].float().cpu()  # (L, H, k)
                L = slots.shape[0]
                if L == 0:
                    continue
                positions = torch.arange(w["start"], w["start"] + L)
                seg = (torch.searchsorted(seg_start, positions, right=True) - 1).clamp_min(0)
                all_slots.append(slots.reshape(-1))
                all_chunks.append(seg_chunk[seg][:, None].expand(L, slots[0].numel()).reshape(-1))
                all_strength.append(strength.reshape(-1))
            if all_slots:
                self.provenance.record(layer, torch.cat(all_slots), torch.cat(all_chunks), torch.cat(all_strength))

    def _prune(self) -> None:
        """Forget the segments whose positions are all written already."""
        oldest = self.cache.position - max(self.cache.pending, default=0)
        cut = bisect.bisect_right(self._seg_start, oldest) - 1
        if cut > 0:
            del self._seg_start[:cut], self._seg_chunk[:cut]

    # ---- deletion -------------------------------------------------------------------------------------------
    def delete(self, doc_ids: Optional[Iterable[str]] = None) -> None:
        """Drop documents (all when None); their chunks never score again. Missing ids are ignored.

        Inside an add call (replacing an id) this works on the call's private copies; on its own it is one
        transaction, published at the end."""
        with self.lock:
            nested = self._writing
            if not nested:
                saved = {"provenance": self.provenance}
                self.provenance = copy.copy(self.provenance)  # shares the big tensors; alive is replaced below
                self.provenance.alive = self.provenance.alive.clone()
            try:
                if doc_ids is None:
                    self.docs.delete_all()
                    self.provenance.alive[:] = False
                else:
                    dropped = self.docs.delete_documents(doc_ids)
                    self.provenance.delete(dropped)
                if not nested:
                    self.publish()
            except BaseException:
                if not nested:
                    self.docs.rollback()
                    self.provenance = saved["provenance"]
                raise

    # ---- rebuild --------------------------------------------------------------------------------------------
    def rebuild(self, *, passes: Optional[int] = None) -> None:
        """Re-ingest the live documents (same ids, texts, metadata, order) into a fresh memory, provenance
        table and document database, then swap them in: deleted or replaced content is gone from the fast
        weights too. Readers keep using the old state until the swap; a failure leaves the store as it was."""
        with self.lock:
            fresh = MemoryIndex(self.model, chunk_tokens=self.chunk_tokens, chunk_overlap=self.chunk_overlap,
                                piece_tokens=self.piece_tokens, per_slot=self.provenance.per_slot, passes=self.passes,
                                show_progress=self.show_progress, max_query_tokens=self.max_query_tokens,
                                max_document_chars=self.max_document_chars)
            try:
                fresh.add(self.iter_documents(), passes=passes, max_document_chars=None)  # already admitted
            except BaseException:
                fresh.docs.close()
                raise
            with self._publish_lock:
                for name in ("cache", "provenance", "chunk_df", "docs", "next_chunk", "next_seq", "tokens_ingested",
                             "at_boundary"):
                    setattr(self, name, getattr(fresh, name))
                self.view = IndexView(tuple(self.cache.memory), self.provenance, self.chunk_df, self.next_chunk,
                                      self.docs, self.view.version + 1)
            # the old database is removed when the last reader's view of it is gone (DocStore's finalizer)

    # ---- idf ------------------------------------------------------------------------------------------------
    def token_weights(self, ids: list[int], view: Optional[IndexView] = None) -> torch.Tensor:
        """idf of each question token over the ingested chunks: log(1 + (N + 1) / (df + 1))."""
        view = self.view if view is None else view
        n = float(view.next_chunk)
        df = view.chunk_df[torch.as_tensor(ids, dtype=torch.long)].float()
        return torch.log1p((n + 1.0) / (df + 1.0))

    def _sync_meta(self) -> None:
        self.docs.set_meta("counters", {"next_chunk": self.next_chunk, "next_seq": self.next_seq,
                                        "tokens_ingested": self.tokens_ingested, "at_boundary": self.at_boundary})

    def iter_documents(self) -> Iterator[tuple[str, str, dict]]:
        for doc_id in self.docs.doc_ids():
            yield from self.docs.get_documents([doc_id])
