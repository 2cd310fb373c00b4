"""From a document to chunks and stream tokens: text checks, tokenizing in segments, chunk spans, the token queue.

Nothing here touches the model or the index: `chunk_document` turns one checked text into its token ids and
retrieval chunks, `chunk_token_counts` says which tokens each chunk holds (for question-token idf), and
`TokenQueue` cuts the stream into model calls. `MemoryIndex` (index.py) drives them.

Memory. One document is held whole while it is ingested (its UTF-8 bytes, int32 token ids and chunk texts: about
6 bytes per character on top of the text itself); it is tokenized in segments (`encode_document`) and a
document over the store's `max_document_chars` is refused before it is tokenized (`check_text`).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from fwpkm_rag.errors import DocumentTooLargeError, DuplicateIdError, InputError, InputTypeError
from fwpkm_rag.modeling.protocol import Tokenizer

SEGMENT_CHARS = 1 << 20
"""Documents longer than this many characters are tokenized segment by segment (see `encode_document`)."""


# ---- checks on what a caller hands in ------------------------------------------------------------------------
def check_limit(text: str, n: int, limit: Optional[int]) -> None:
    """Refuse a document longer than `limit` characters (None: no limit), before any work is done on it."""
    if limit is not None and len(text) > limit:
        raise DocumentTooLargeError(
            f"document #{n} has {len(text):,} characters, over the limit of {limit:,} (max_document_chars): about "
            f"{len(text) // 4:,} tokens, which stream into the memory at roughly 3-10K tokens/s on a CPU. Split it "
            "into several documents, or opt in: FwPKMStore(max_document_chars=None) or add_texts(..., "
            "max_document_chars=None) (CLI: --max-document-chars 0)")


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


def check_doc_id(doc_id, n: int) -> str:
    """A document id: a non-empty str of valid Unicode; None gets a new uuid4."""
    if doc_id is None:
        return str(uuid.uuid4())
    if not isinstance(doc_id, str):
        raise InputTypeError(f"document #{n}: id must be a str, got {type(doc_id).__name__} {doc_id!r}")
    if not doc_id:
        raise InputError(f"document #{n}: id must be a non-empty str")
    try:
        doc_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"document #{n}: id {doc_id!r} is not valid Unicode (a lone surrogate)") from None
    return doc_id


def checked_items(items: Iterable, limit: Optional[int]) -> Iterator[tuple[int, str, str, Optional[dict]]]:
    """(n, id, text, metadata) of each (id or None, text, metadata) item as it streams in, once its text and
    id pass (`check_text`, `check_doc_id`) and its id has not come before in the same call."""
    seen: dict = {}  # id -> its number in this call
    for n, (doc_id, text, metadata) in enumerate(items):
        check_text(text, n, limit)
        doc_id = check_doc_id(doc_id, n)
        if doc_id in seen:
            raise DuplicateIdError(f"id {doc_id!r} appears twice in one add call (#{seen[doc_id]} and #{n}): ids "
                                   "within one batch must be unique")
        seen[doc_id] = n
        yield n, doc_id, text, metadata


# ---- tokens ---------------------------------------------------------------------------------------------------
def encode_document(tok: Tokenizer, text: str, segment_chars: Optional[int] = None) -> np.ndarray:
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


# ---- chunks ---------------------------------------------------------------------------------------------------
def chunk_spans(text: str, ids, tok: Tokenizer, chunk_tokens: int, chunk_overlap: int) -> list[tuple]:
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
    offsets = _cut_offsets(raw, ids, tok, chunk_tokens, chunk_overlap)

    def cut(tok_pos: int) -> int:  # byte offset of a token boundary, moved back to a character boundary
        b = int(offsets[tok_pos])
        while 0 < b < len(raw) and (raw[b] & 0xC0) == 0x80:
            b -= 1
        return b

    out = []
    for idx, start in enumerate(range(0, n, chunk_tokens)):
        end = min(start + chunk_tokens, n)
        left = max(0, start - chunk_overlap)
        if offsets is None:  # the tokenizer did not round-trip: decoded slices instead of cuts
            core = tok.decode(ids[start:end])
            widened = tok.decode(ids[left:start]) + core
        else:
            b_left, b_start, b_end = cut(left), cut(start), cut(end) if end < n else len(raw)
            widened = raw[b_left:b_end].decode("utf-8")
            core = raw[b_start:b_end].decode("utf-8")
        out.append((idx, widened, len(widened) - len(core), start, end))
    return out


def _cut_offsets(raw: bytes, ids, tok: Tokenizer, chunk_tokens: int, chunk_overlap: int) -> Optional[dict]:
    """{token position: byte offset} for every position a cut can land on (core starts, overlap starts, the
    end), or None when the tokens' bytes do not add up to the text (a tokenizer that does not round-trip).

    Only the cut points, not every token: O(chunks) memory on top of the (n,) int32 byte lengths, for documents
    of millions of tokens."""
    n = len(ids)
    starts = np.arange(0, n, chunk_tokens, dtype=np.int64)
    points = np.unique(np.concatenate([starts, np.maximum(starts - chunk_overlap, 0), [n]]))
    lengths = tok.token_byte_lengths().astype(np.int32, copy=False)[np.asarray(ids)]  # (n,)
    point_bytes = np.zeros(len(points), dtype=np.int64)
    np.cumsum(np.add.reduceat(lengths, points[:-1], dtype=np.int64), out=point_bytes[1:])
    offsets = dict(zip(points.tolist(), point_bytes.tolist()))
    return offsets if offsets[n] == len(raw) else None


@dataclass
class ChunkedDocument:
    """One document ready to stream: its token ids and its chunks (`chunk_spans` tuples)."""

    ids: np.ndarray  # (n,) int32
    spans: list  # (idx, text, core_offset, tok_start, tok_end) per chunk

    @property
    def core_starts(self) -> list[int]:
        """Token offset of each chunk's first core token in `ids`."""
        return [start for _, _, _, start, _ in self.spans]


def chunk_document(tok: Tokenizer, text: str, chunk_tokens: int, chunk_overlap: int) -> ChunkedDocument:
    """Tokenize a checked text (in segments) and split it into retrieval chunks."""
    ids = encode_document(tok, text)
    return ChunkedDocument(ids, chunk_spans(text, ids, tok, chunk_tokens, chunk_overlap))


def chunk_token_counts(ids: np.ndarray, chunk_tokens: int, vocab: int) -> torch.Tensor:
    """(vocab,) int64: for each token, how many of the document's chunks contain it (+1 per chunk, however
    often the token occurs in it). Summed over documents this is the chunk document frequency behind the
    question-token idf."""
    counts = torch.zeros(vocab, dtype=torch.int64)
    block = chunk_tokens * max(1, (1 << 20) // chunk_tokens)  # whole chunks, ~1M tokens at a time
    for b in range(0, len(ids), block):
        part = torch.from_numpy(ids[b:b + block]).long()  # (B,)
        chunk_of = torch.arange(b, b + len(part)) // chunk_tokens  # (B,) chunk index of each token
        pairs = torch.unique(chunk_of * vocab + part)  # distinct (chunk, token) pairs
        counts += torch.bincount(pairs % vocab, minlength=vocab)
    return counts


# ---- the stream -----------------------------------------------------------------------------------------------
class TokenQueue:
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
        """Everything still queued (possibly empty), as one array; the queue is empty afterwards."""
        buf = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int32)
        self.parts, self.n = [], 0
        return buf
