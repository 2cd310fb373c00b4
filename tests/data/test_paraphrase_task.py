"""The paraphrase retrieval task (issue 9): generator determinism, the zero-lexical-overlap property that makes it
honest, and placement guarantees. Its benchmark (BM25 against the traps, the suite part end to end) is tested in
tests/benchmarks/test_paraphrase.py."""
from __future__ import annotations

import pytest

from fwpkm_rag.data import paraphrase as P
from fwpkm_rag.errors import ConfigError


@pytest.fixture(scope="module")
def items():
    return [P.make_item(2048, seed=s) for s in (0, 1, 2)]


def test_overlap_measure():
    assert P.stem("bridges") == P.stem("bridge") and P.stem("painted") == P.stem("paint")
    assert P.content_words("What is the colour of the bridge?") == {"colour", "bridg"}
    assert P.content_overlap("The capital's oldest bridge", "the most ancient river crossing") == 0
    assert P.content_overlap("the old bridges", "an older bridge was painted") == 2  # old + bridg


def test_bank_questions_share_no_content_word_with_facts():
    """Every (concept, relation, fact wording, question wording, question form) combination: no shared stem and
    no shared 5-letter prefix (stricter: catches "north"/"northern"); traps share words with their question."""
    combos = 0
    for c in P.CONCEPTS:
        assert c.type in ("thing", "person") and c.kind in ("synonym", "definition")
        assert len(c.trap) == len(c.question) and len(c.near) >= 1
        for r in P.RELATIONS:
            if c.type not in r.types:
                continue
            for fs in c.fact:
                fact = P.fact_text(r, fs, "VALUE")
                for j, qs in enumerate(c.question):
                    for reordered in (False, True):
                        q = P.question_text(r, qs, reordered)
                        combos += 1
                        shared = P.content_words(fact) & P.content_words(q)
                        assert not shared - {"valu"}, (fact, q, shared)
                        pre = {w[:5] for w in P.content_words(fact)} & {w[:5] for w in P.content_words(q)}
                        assert not pre - {"valu"}, (fact, q, pre)
                        # the trap written for this wording shares at least 2 content words with the question
                        assert P.content_overlap(q, P.trap_text(r, c.trap[j], "1999")) >= 2, (q, c.trap[j])
                        assert all(P.content_overlap(q, P.trap_text(r, t, "1999")) >= 1 for t in c.trap)
                for n in c.near:  # a near-duplicate is the fact's wording with another subject
                    assert P.content_overlap(P.fact_text(r, n, "V"), fact) >= 2, (n, fact)
    assert combos >= 200 and len(P.CONCEPTS) >= 20
    assert {c.kind for c in P.CONCEPTS} == {"synonym", "definition"}


def test_generated_items_are_honest(items):
    kinds = set()
    for it in items:
        ch = P.chunk_paraphrase_item(it)
        assert 1900 <= it.length <= 2100 and len(ch.chunks) == 16
        assert len(set(ch.gold_chunks)) == len(it.facts) == 6  # one asked fact per chunk
        for i, (f, gold) in enumerate(zip(it.facts, ch.gold_chunks)):
            kinds.add(f.kind)
            assert it.text[f.span[0]:f.span[1]] == f.fact and f.answer in f.fact and f.answer not in f.question
            assert P.content_overlap(f.question, f.fact) == 0
            trap_ov = [P.content_overlap(f.question, t) for t in f.traps]
            assert len(trap_ov) == 2 and min(trap_ov) >= 1 and trap_ov[0] >= 2, (f.question, f.traps)
            assert all(P.content_overlap(n, f.fact) >= 2 for n in f.near)
            # the gold chunk holds no sentence of its own concept and no inserted sentence sharing a question word
            assert gold not in ch.trap_chunks[i] and gold not in ch.near_chunks[i]
            others = [s for g in it.facts if g is not f for s in [g.fact, *g.near, *g.traps]]
            in_gold = [s for s in others if s in ch.chunks[gold]]
            assert all(P.content_overlap(f.question, s) == 0 for s in in_gold)
        assert len({f.concept for f in it.facts}) == len(it.facts)
    assert kinds == {"synonym", "definition", "reordered"}


def test_generator_is_deterministic_per_seed(items):
    again = P.make_item(2048, seed=1)
    assert again.text == items[1].text
    assert [(f.fact, f.question, f.near, f.traps) for f in again.facts] == \
        [(f.fact, f.question, f.near, f.traps) for f in items[1].facts]
    assert items[0].text != items[1].text
    assert [f.question for f in items[0].facts] != [f.question for f in items[1].facts]
    with pytest.raises(ConfigError):
        P.make_item(2048, seed=0, n_facts=len(P.CONCEPTS) + 1)
    with pytest.raises(ConfigError):
        P.make_item(2048, seed=0, traps=9)
