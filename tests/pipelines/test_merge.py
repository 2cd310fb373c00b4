"""pipelines.merge.merge_hits against a brute-force reference (issue 14).

The reference sorts every hit of every segment by the strategy's key computed in exact arithmetic
(fractions), padding hits (score 0) last, ties by segment order then position; merge_hits must return exactly
its first k, ranks renumbered, hits otherwise unchanged.
"""
from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwpkm_rag.errors import InputError, InputTypeError
from fwpkm_rag.pipelines.merge import RRF_K, STRATEGIES, merge_hits
from fwpkm_rag.pipelines.retrieval import Hit


def make_segments(scores_per_segment):
    """Hits with the given scores (sorted best first, as a segment returns them), unique chunk ids."""
    segments, cid = [], 0
    for seg, scores in enumerate(scores_per_segment):
        hits = []
        for rank, s in enumerate(sorted(scores, reverse=True)):
            hits.append(Hit(cid, f"doc{seg}", rank, f"text {cid}", {"segment": seg}, float(s), rank))
            cid += 1
        segments.append(hits)
    return segments


def reference(segments, k, strategy):
    rows = []
    for seg, hits in enumerate(segments):
        top = max((Fraction(h.score) for h in hits), default=Fraction(0))
        for pos, h in enumerate(hits):
            s = Fraction(h.score)
            if s == 0:
                key = Fraction(0)
            elif strategy == "raw":
                key = s
            elif strategy == "max":
                key = s / top
            else:
                key = Fraction(1, RRF_K + pos + 1)
            rows.append((s == 0, -key, seg, pos, h))
    rows.sort(key=lambda r: r[:4])
    return [(r[4].chunk_id, r[4].score) for r in rows[:k]]


def as_pairs(hits):
    return [(h.chunk_id, h.score) for h in hits]


# small integer scores: many exact ties, and exact float division for "max"
segment_scores = st.lists(st.lists(st.integers(0, 6), max_size=6), max_size=5)


@settings(max_examples=300, deadline=None)
@given(segment_scores, st.integers(0, 40), st.sampled_from(STRATEGIES))
def test_matches_brute_force(scores, k, strategy):
    segments = make_segments(scores)
    merged = merge_hits(segments, k, strategy)
    assert as_pairs(merged) == reference(segments, k, strategy)
    assert [h.rank for h in merged] == list(range(len(merged)))
    assert len(merged) == min(k, sum(map(len, segments)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1e6, allow_nan=False, allow_infinity=False), max_size=8), max_size=6),
       st.integers(0, 50), st.sampled_from(STRATEGIES))
def test_padding_always_after_positive_hits(scores, k, strategy):
    merged = merge_hits(make_segments(scores), k, strategy)
    positive = [h.score > 0 for h in merged]
    assert positive == sorted(positive, reverse=True)  # all positives, then all padding
    n_pos = sum(s > 0 for seg in scores for s in seg)
    assert sum(positive) == min(k, n_pos)


def test_strategies_differ_as_documented():
    # segment 0 scores high, segment 1 low: raw keeps segment 0 first; max and rrf interleave the two tops
    segments = make_segments([[100.0, 90.0, 80.0], [2.0, 1.0, 0.0]])
    assert [h.score for h in merge_hits(segments, 4, "raw")] == [100.0, 90.0, 80.0, 2.0]
    assert [h.score for h in merge_hits(segments, 4, "max")] == [100.0, 2.0, 90.0, 80.0]  # 1, 1 (tie: seg 0), .9, .8
    assert [h.score for h in merge_hits(segments, 4, "rrf")] == [100.0, 2.0, 90.0, 1.0]  # 1/61, 1/61, 1/62, 1/62
    # the padding hit (0.0) comes last under every strategy
    for strategy in STRATEGIES:
        assert merge_hits(segments, 6, strategy)[-1].score == 0.0


def test_hits_are_copies_with_new_ranks():
    segments = make_segments([[3.0, 1.0], [2.0]])
    merged = merge_hits(segments, 3)
    assert [h.rank for h in merged] == [0, 1, 2]
    assert [h.rank for h in segments[0]] == [0, 1] and segments[1][0].rank == 0  # inputs untouched
    assert merged[1].text == "text 2" and merged[1].metadata == {"segment": 1}


def test_empty_inputs():
    assert merge_hits([], 5) == []
    assert merge_hits([[], []], 5, "rrf") == []
    assert merge_hits(make_segments([[1.0, 2.0]]), 0) == []


@pytest.mark.parametrize("k,error", [(-1, InputError), (1.5, InputTypeError), (True, InputTypeError),
                                     ("3", InputTypeError)])
def test_bad_k(k, error):
    with pytest.raises(error, match="k must be"):
        merge_hits(make_segments([[1.0]]), k)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(InputError, match="'raw', 'max', 'rrf'"):
        merge_hits(make_segments([[1.0]]), 1, "borda")
    with pytest.raises(InputTypeError, match="'raw', 'max', 'rrf'"):
        merge_hits(make_segments([[1.0]]), 1, None)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_scores(bad):
    segments = make_segments([[1.0]])
    segments[0][0].score = bad
    with pytest.raises(InputError, match="scores must be finite"):
        merge_hits(segments, 1)
