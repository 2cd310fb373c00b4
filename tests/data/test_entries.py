"""The addressing task of issue 17 (fwpkm_rag.data.entries): deterministic, distinct entries; questions that keep
the words (shuffled) or the content words (reordered) of the entry's own sentence; a dev/test split by hash."""
from __future__ import annotations

from collections import Counter

import pytest

from fwpkm_rag.data import entries as E
from fwpkm_rag.errors import ConfigError


@pytest.fixture(scope="module")
def collection():
    return E.make_entries(120)


def test_entries_are_deterministic_distinct_and_within_bounds(collection):
    again = E.make_entries(120)
    assert [e.text for e in again] == [e.text for e in collection]
    assert [e.index for e in collection] == list(range(120))
    assert len({e.sentence.lower() for e in collection}) == 120  # no two entries asked by the same sentence
    for e in collection:
        assert e.text.startswith(e.sentence)  # the question is a part of its entry
        assert 6 <= len(E.words(e.sentence)) <= 20 and 16 <= len(E.words(e.text)) <= 45
        assert e.source.split(":")[0] in ("stdlib", "pydoc", "essays")


def test_questions_keep_the_words_in_another_order(collection):
    for e in collection:
        verbatim = e.question("verbatim")
        assert verbatim == e.sentence
        sh = e.question("shuffled")
        assert Counter(sh.split()) == Counter(E.words(e.sentence))  # the same words, every one of them
        assert e.question("shuffled") == sh  # seeded
        content = [w for w in E.words(e.sentence) if w.lower() not in E.STOPWORDS]
        re_ = e.question("reordered")
        assert re_.endswith("?")
        assert Counter(w for w in E.words(re_) if w in content) == Counter(content)  # every content word kept
    moved = sum(e.question("shuffled").split() != E.words(e.sentence) for e in collection)
    assert moved == len(collection)  # every sentence of >= 6 words comes out in another order


def test_split_is_a_stable_partition(collection):
    dev, test = E.split_entries(collection, "dev"), E.split_entries(collection, "test")
    assert len(dev) + len(test) == len(collection) and dev and test
    assert {e.index for e in dev}.isdisjoint(e.index for e in test)
    assert 0.1 < len(dev) / len(collection) < 0.5  # dev_fraction 0.3 by a hash


def test_bad_arguments_raise():
    with pytest.raises(ConfigError):
        E.make_entries(0)
    with pytest.raises(ConfigError):
        E.make_entries(10, dev_fraction=1.0)
    with pytest.raises(ConfigError):
        E.make_entries(10**6)  # more than the bench split holds: said, not a short list
    with pytest.raises(ConfigError):
        E.split_entries([], "train")
    with pytest.raises(ConfigError):
        E.make_entries(5)[0].question("paraphrase")
