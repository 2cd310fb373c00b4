"""Hypothesis properties of the text splitters (issue 8).

Two splitters exist and both are checked on arbitrary Unicode (emoji and ZWJ sequences, NUL, control
characters, lone whitespace, combining marks, literal special-token names):

* `pipelines.chunking.chunk_spans` -- the one ingestion uses (`FwPKMStore.add_texts`): core token spans of
  `chunk_tokens` tokens, the returned text widened on the left by `chunk_overlap` tokens, cuts moved *back* to
  a character boundary. The store rebuilds a document as the concatenation of its chunks' cores.
* `data.needles.chunk_text` -- the benchmarks' splitter (the vector-database baselines and `chunk_item`):
  consecutive chunks of `size` tokens, cuts moved *forward* to a character boundary, empty chunks dropped.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwpkm_rag.data.needles import chunk_text
from fwpkm_rag.pipelines import FwPKMStore
from fwpkm_rag.pipelines.chunking import chunk_spans, encode_document
from fwpkm_rag.tokenizer import get_tokenizer

TOK = get_tokenizer()

# Pieces that stress byte/character boundaries: multi-byte scripts, 4-byte emoji, ZWJ and flag sequences,
# combining marks, NUL and other controls, whitespace of every kind, and literal special-token names.
FRAGMENTS = [
    "a", "word", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", "\x00", "\x00\x00", "\x07", "\x1b[0m", "\u00a0",
    "\u2028", "\u3000", "\ufeff", "é", "e\u0301", "naïve", "東京", "漢字", "Ελληνικά", "עברית", "العربية",
    "हिन्दी", "🎉", "👩\u200d👩\u200d👧\u200d👦", "🇫🇷", "👍🏽", "𝔘𝔫𝔦", "\U0010fffd", "\ufffd",
    "<|endoftext|>", "<|pad|>", "<|user|>", "<|endoftext", "|>", "<|fim_prefix|>", "1234567", "'s", "...",
]
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join)
texts = st.one_of(any_text, fragment_text, st.sampled_from(["", " ", "\n", "\x00", "\t \n", "🎉"]))


def _byte_offsets(ids: list[int]) -> np.ndarray:
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    if ids:
        np.cumsum(TOK.token_byte_lengths()[np.asarray(ids)], out=offsets[1:])
    return offsets


@settings(max_examples=300, deadline=None)
@given(text=texts, chunk_tokens=st.integers(1, 40), overlap_frac=st.floats(0, 0.99))
def test_chunk_spans_tile_the_document(text, chunk_tokens, overlap_frac):
    chunk_overlap = int(overlap_frac * chunk_tokens)  # always < chunk_tokens, as the store requires
    ids = TOK.encode(text)
    spans = chunk_spans(text, ids, TOK, chunk_tokens, chunk_overlap)
    n = len(ids)
    if n == 0:
        assert text == "" and spans == [(0, "", 0, 0, 0)]
        return
    # token spans: consecutive, in order, chunk_tokens each but the last, covering [0, n) exactly
    assert [idx for idx, *_ in spans] == list(range(math.ceil(n / chunk_tokens)))
    assert [(s, e) for *_, s, e in spans] == [(s, min(s + chunk_tokens, n)) for s in range(0, n, chunk_tokens)]
    # the cores concatenate to the document without loss or duplication (how the store rebuilds it)
    cores = [t[off:] for _, t, off, _, _ in spans]
    assert "".join(cores) == text
    offsets = _byte_offsets(ids)
    assert offsets[-1] == len(text.encode("utf-8"))  # token bytes account for every byte of the text
    pos = 0
    for (idx, widened, off, s, e), core in zip(spans, cores):
        # the returned text is an exact substring: the core plus `off` characters of left context
        assert widened == text[pos - off: pos + len(core)]
        if chunk_overlap == 0 or idx == 0:
            assert off == 0
        # cuts are token byte offsets moved back to a character boundary: at most 3 bytes from them
        core_bytes = len(core.encode("utf-8"))
        assert abs(core_bytes - int(offsets[e] - offsets[s])) <= 3
        left = max(0, s - chunk_overlap)
        assert abs(len(widened.encode("utf-8")) - int(offsets[e] - offsets[left])) <= 3
        if chunk_tokens >= 4:  # >= 4 token bytes always include a character boundary: no empty chunk
            assert core
        if text.isascii():  # one byte per character: cuts are exactly at token boundaries
            assert core == TOK.decode(ids[s:e])
        pos += len(core)
    assert pos == len(text)


@settings(max_examples=300, deadline=None)
@given(text=texts, size=st.integers(1, 40))
def test_chunk_text_partitions_the_text(text, size):
    chunks = chunk_text(text, size, TOK)
    ids = TOK.encode(text)
    if not text:
        assert chunks == []
        return
    # characters: contiguous, non-empty, exact slices, concatenating to the text
    assert "".join(c.text for c in chunks) == text
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert a.end == b.start
    for c in chunks:
        assert c.text and text[c.start:c.end] == c.text
    # tokens: the chunks' token spans tile [0, n) in order; a chunk starts every `size` tokens (a span longer
    # than `size` only when it absorbed the tokens of a character cut by the next boundary)
    assert chunks[0].token_start == 0 and chunks[-1].token_end == len(ids)
    for a, b in zip(chunks, chunks[1:]):
        assert a.token_end == b.token_start
    for c in chunks:
        assert c.token_start % size == 0 and c.token_end > c.token_start
        assert c.token_end - c.token_start <= size + 3  # a character is at most 4 bytes
    assert all(c.token_end - c.token_start >= size for c in chunks[:-1])
    if text.isascii():  # no character is cut: every chunk is exactly `size` tokens but the last
        assert [(c.token_start, c.token_end) for c in chunks] == [
            (s, min(s + size, len(ids))) for s in range(0, len(ids), size)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(texts, min_size=1, max_size=3), chunk_tokens=st.integers(4, 24))
def test_store_returns_every_document_exactly(small_model, docs, chunk_tokens):
    """Through the whole ingestion path: stored chunks are `chunk_spans`' and documents come back intact."""
    store = FwPKMStore(model=small_model, chunk_tokens=chunk_tokens, chunk_overlap=chunk_tokens // 3)
    try:
        ids = [f"d{i}" for i in range(len(docs))]
        store.add_texts(docs, ids=ids)
        got = store.get_by_ids(ids)
        assert [d.id for d in got] == ids and [d.page_content for d in got] == docs
        n_chunks = sum(max(1, math.ceil(len(TOK.encode(d)) / chunk_tokens)) for d in docs)
        (segment,) = store.index.segments  # one segment (far below segment_tokens)
        assert segment.index.next_chunk == n_chunks and store.index.n_live_chunks == n_chunks
        rows = segment.index.docs.get_chunks(range(n_chunks))
        for doc_id, text in zip(ids, docs):
            mine = sorted((r for r in rows.values() if r.doc_id == doc_id), key=lambda r: r.index)
            expected = chunk_spans(text, TOK.encode(text), TOK, chunk_tokens, chunk_tokens // 3)
            assert [(r.index, r.text, r.core_offset, r.tok_start, r.tok_end) for r in mine] == expected
        # tokens streamed: every document's tokens + one eos after each + the leading eos
        assert store.index.tokens_ingested == sum(len(TOK.encode(d)) + 1 for d in docs) + 1
        assert len(store.similarity_search("word 🎉", k=2)) == min(2, n_chunks)
    finally:
        store.close()


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(texts, st.lists(st.sampled_from(FRAGMENTS + ["para.\n", "x" * 30]), max_size=80).map("".join)),
       segment_chars=st.integers(1, 64))
def test_long_documents_tokenize_in_segments_without_loss(text, segment_chars):
    """`encode_document` (how ingestion tokenizes, in segments for long documents) decodes to the text exactly;
    one segment gives exactly the plain encoding."""
    ids = encode_document(TOK, text, segment_chars)
    assert ids.dtype == np.int32 and TOK.decode(ids) == text
    assert all(0 <= i < TOK.k_ranks for i in ids.tolist())
    if len(text) <= segment_chars:
        assert ids.tolist() == TOK.encode(text)
    # and the chunks cut from segmented ids still tile the document
    spans = chunk_spans(text, ids, TOK, 5, 2)
    assert "".join(t[off:] for _, t, off, _, _ in spans) == text
