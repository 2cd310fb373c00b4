"""Hypothesis properties of the tokenizer (issue 8): exact round trip of any valid Unicode text, special-token
names in the input treated as plain text, byte accounting that chunking relies on, and clear refusals.

What the code does with special-looking input (checked here): `encode` never emits a special id for text --
"<|endoftext|>" in a document is encoded as ordinary byte-level tokens and decodes back to itself; only
`bos=True` / `eos=True` (or the pipeline's document separators) put the special ids in. Decoding the eos id gives
the literal "<|endoftext|>", so decode() alone cannot tell the two apart; the ids can.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwpkm_rag.errors import InputError
from fwpkm_rag.tokenizer import SPECIAL_TOKENS, get_tokenizer

TOKS = {k: get_tokenizer(k) for k in (256, 1024, 8192)}
DEFAULT = TOKS[8192]

FRAGMENTS = [
    *SPECIAL_TOKENS, "<|endoftext", "endoftext|>", "<|", "|>", "<|im_start|>", "<|fim_prefix|>", "<s>", "</s>",
    "[CLS]", "\x00", "\x00\x00\x00", " ", "   ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u2028", "\u3000",
    "\ufeff", "\ufffd", "\U0010ffff", "🎉", "👩\u200d💻", "🇯🇵", "👍🏽", "e\u0301", "東京", "Ελλάδα", "العربية",
    "word", "Word", "WORD", "'s", "don't", "12345678", "3.14", "...", "—", "\x7f", "\x1b",
]
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
spliced = st.lists(st.one_of(st.sampled_from(FRAGMENTS), any_text.map(lambda s: s[:20])), max_size=40).map("".join)
texts = st.one_of(any_text, spliced)


@settings(max_examples=300, deadline=None)
@given(text=texts, k=st.sampled_from(sorted(TOKS)))
def test_round_trip_is_exact_and_never_special(text, k):
    tok = TOKS[k]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < tok.k_ranks for i in ids)  # text never becomes a special id
    assert tok.token_count(text) == len(ids)
    assert (len(ids) == 0) == (text == "")


@settings(max_examples=200, deadline=None)
@given(text=spliced, cut=st.integers(0, 10_000))
def test_token_bytes_account_for_every_byte(text, cut):
    """Chunking cuts the token ids anywhere and maps cuts to bytes through per-token byte lengths."""
    ids = DEFAULT.encode(text)
    raw = text.encode("utf-8")
    assert int(DEFAULT.token_byte_lengths()[ids].sum()) == len(raw)
    i = cut % (len(ids) + 1)
    head, tail = DEFAULT.decode_bytes(ids[:i]), DEFAULT.decode_bytes(ids[i:])
    assert head + tail == raw and len(head) == int(DEFAULT.token_byte_lengths()[ids[:i]].sum())


@settings(max_examples=150, deadline=None)
@given(parts=st.lists(texts, max_size=5), bos=st.booleans(), eos=st.booleans())
def test_batch_and_separators(parts, bos, eos):
    batch = DEFAULT.encode_batch(parts, bos=bos, eos=eos)
    assert batch == [DEFAULT.encode(p, bos=bos, eos=eos) for p in parts]
    for p, ids in zip(parts, batch):
        body = ids[1 if bos else 0: len(ids) - (1 if eos else 0)]
        assert DEFAULT.decode(body) == p
        assert (ids[0] == DEFAULT.bos_id) if bos else True
        assert (ids[-1] == DEFAULT.eos_id) if eos else True
    # a stream of documents joined by real eos ids: the eos ids are exactly the separators we put in, even
    # when the documents themselves contain the literal text "<|endoftext|>"
    stream = [DEFAULT.eos_id]
    for p in parts:
        stream += DEFAULT.encode(p) + [DEFAULT.eos_id]
    assert stream.count(DEFAULT.eos_id) == len(parts) + 1
    assert DEFAULT.decode(stream) == "<|endoftext|>" + "".join(p + "<|endoftext|>" for p in parts)


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, DEFAULT.vocab_size - 1), max_size=60))
def test_any_ids_decode_and_re_encode_stably(ids):
    """Arbitrary ids (bytes cut mid-character, special ids) decode without error, to valid Unicode."""
    text = DEFAULT.decode(ids)
    assert text == DEFAULT.decode_bytes(ids).decode("utf-8", errors="replace")
    text.encode("utf-8")  # valid Unicode (U+FFFD for cut characters), never a lone surrogate
    assert DEFAULT.decode(DEFAULT.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(text=texts, at=st.integers(0, 10_000), sur=st.integers(0xD800, 0xDFFF))
def test_lone_surrogates_are_refused_by_name(text, at, sur):
    i = at % (len(text) + 1)
    bad = text[:i] + chr(sur) + text[i:]
    with pytest.raises(InputError, match=f"lone surrogate .* at index {i}"):
        DEFAULT.encode(bad)
    with pytest.raises(InputError, match="lone surrogate"):
        DEFAULT.encode_batch(["ok", bad])


@settings(max_examples=50, deadline=None)
@given(bad=st.one_of(st.integers(DEFAULT.vocab_size, 2**40), st.integers(-2**40, -1)), pos=st.integers(0, 3))
def test_out_of_vocabulary_ids_are_refused(bad, pos):
    ids = [1, 2, 3]
    ids.insert(pos, bad)
    with pytest.raises(InputError, match=f"token id {bad} is outside the vocabulary"):
        DEFAULT.decode(ids)
