"""RULER-style needle tasks: placement, chunk bookkeeping, distractors, split hygiene, paraphrases."""
from __future__ import annotations

import re

import pytest

from fwpkm_rag.data import corpora as C
from fwpkm_rag.data import needles as N
from fwpkm_rag.errors import ConfigError

STOP = set(
    "a an the of for is are was were in on at to by with from be will has have had do does did what which where "
    "when who how many much one it its this that".split()
)


@pytest.fixture(scope="module")
def tok():
    from fwpkm_rag import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="module")
def hay():
    return C.haystack(6000, seed=11, split="bench")


def _words(s: str) -> set[str]:
    return set(re.findall(r"[a-z]+", s.lower()))


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_depth_and_gold_chunk(tok, hay, depth):
    size = 128
    item = N.make_item(4000, depth, n_distractors=4, haystack=hay, chunk_size=size, seed=7)
    assert item.text[item.gold_span[0]:item.gold_span[1]] == item.needle
    assert abs(item.length - 4000) < 200
    ci = N.chunk_item(item)
    assert len(ci.gold_chunks) == 1, "the gold needle lies inside one chunk"
    assert item.needle in ci.chunks[ci.gold_chunk]
    n_chunks = len(ci.chunks)
    assert abs(ci.gold_chunk - depth * (n_chunks - 1)) <= 1.5, (ci.gold_chunk, depth, n_chunks)
    assert abs(item.actual_depth - depth) <= size / item.length
    assert "".join(ci.chunks) == item.text


def test_chunk_text_offsets_and_sizes(tok):
    text = ("Plain words, then é, 漢字 and 🙂 emoji. " * 60) + "end"
    chunks = N.chunk_text(text, 16, tok)
    assert "".join(c.text for c in chunks) == text
    assert all(text[c.start:c.end] == c.text for c in chunks)
    assert all(c.token_end - c.token_start == 16 for c in chunks[:-1])
    assert "\ufffd" not in "".join(c.text for c in chunks)
    assert N.chunks_touching(chunks, chunks[3].start, chunks[4].start + 1) == [3, 4]
    with pytest.raises(ConfigError):
        N.chunk_text(text, 0)


def test_needle_straddling_chunks_is_reported(tok, hay):
    item = N.make_item(2000, 0.5, haystack=hay, seed=3)  # placed without regard to chunks
    touched = [len(N.chunk_item(item, s).gold_chunks) for s in (5, 7, 64)]
    assert touched[0] >= 2 and touched[1] >= 2  # a needle is longer than 7 tokens
    ci = N.chunk_item(item, 5)
    assert item.needle in "".join(ci.chunks[i] for i in ci.gold_chunks)


@pytest.mark.parametrize("values", ["random", "same"])
def test_distractors_differ_only_in_key(hay, values):
    item = N.make_item(3000, 0.3, n_distractors=16, haystack=hay, seed=5, distractor_values=values)
    assert len(item.distractors) == len(item.distractor_spans) == 16
    keys = [item.key, *item.distractor_keys]
    assert len(set(keys)) == len(keys)
    shape = item.needle.replace(item.key, "<K>").replace(item.answer, "<V>")
    for d, (s, e), k, v in zip(item.distractors, item.distractor_spans, item.distractor_keys, item.distractor_answers):
        assert item.text[s:e] == d
        assert d.replace(k, "<K>").replace(v, "<V>") == shape
        if values == "same":
            assert v == item.answer and d.replace(k, item.key) == item.needle
    if values == "random":
        assert item.answer not in item.distractor_answers
    assert item.text.count(item.needle) == 1


def test_train_and_bench_are_disjoint():
    train, bench = N.templates_for("train"), N.templates_for("bench")
    assert {t.name for t in train}.isdisjoint({t.name for t in bench})
    for field in ("fact", "question", "paraphrase"):
        assert {getattr(t, field) for t in train}.isdisjoint({getattr(t, field) for t in bench})
    keys = {}
    for split, pool in (("train", train), ("bench", bench)):
        keys[split] = set()
        for i, t in enumerate(pool):
            facts = N.make_facts(40, split, seed=i, template=t.name)
            keys[split] |= {f.key for f in facts}
            assert all(N.key_split(f.key) == split for f in facts)
    assert keys["train"].isdisjoint(keys["bench"])
    # seed streams are namespaced: the same seed gives other facts in the other split
    assert N.make_fact("train", 0).text != N.make_fact("bench", 0).text
    with pytest.raises(ConfigError, match="not one of"):
        N.make_facts(1, "bench", template=train[0])


def test_paraphrase_shares_no_content_word_with_fact():
    for split in ("train", "bench"):
        for t in N.templates_for(split):
            f = N.make_fact(split, seed=1, template=t.name)
            key_words = _words(f.key)
            fact_words = _words(f.text) - STOP - key_words - _words(f.value)
            para_words = _words(f.paraphrase) - STOP - key_words
            assert f.paraphrase != f.question
            assert f.key in f.question and f.key in f.paraphrase and f.value in f.text
            stems = {w[:5] for w in fact_words}
            assert not {w[:5] for w in para_words} & stems, (t.name, para_words, fact_words)
            # the exact question reuses the fact's words (up to inflection: "lives" / "live")
            q_words = _words(f.question) - STOP - key_words
            assert {w[:4] for w in q_words} <= {w[:4] for w in fact_words}, (t.name, q_words, fact_words)


def test_items_deterministic_and_split_aware(hay):
    a = N.make_item(1500, 0.5, 2, split="bench", seed=9)
    b = N.make_item(1500, 0.5, 2, split="bench", seed=9)
    c = N.make_item(1500, 0.5, 2, split="train", seed=9)
    assert a == b
    assert a.template in {t.name for t in N.BENCH_TEMPLATES}
    assert c.template in {t.name for t in N.TRAIN_TEMPLATES}
    assert a.text != c.text
    items = list(N.make_items([800], [0.0, 1.0], [0, 2], haystack=hay))
    assert len(items) == 4 and len({i.seed for i in items}) == 4
    assert [i.n_distractors for i in items] == [0, 2, 0, 2]


def test_bad_arguments(hay):
    with pytest.raises(ConfigError, match="depth"):
        N.make_item(1000, 1.5, haystack=hay)
    with pytest.raises(ConfigError, match="split"):
        N.make_item(1000, 0.5, split="test", haystack=hay)
    with pytest.raises(ConfigError, match="too small"):
        N.make_item(1000, 0.5, haystack=hay, chunk_size=4)
    with pytest.raises(ConfigError, match="unknown"):
        N.make_item(1000, 0.5, haystack=hay, template="nope")
