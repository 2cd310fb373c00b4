"""Merge the rankings of several segments into one global top k.

A segmented store asks every segment for its top k (`retrieval.rank_chunks`), then merges here. Scores of
different segments are not comparable as they stand (slot idf and token idf are per memory), so the merge is a
choice, measured in `fwpkm-rag bench segments` (docs/benchmarks.md, "Segments"):

    "raw"   the scores as they are
    "max"   each segment's scores divided by that segment's top score (its best hit scores 1)
    "rrf"   reciprocal rank fusion: 1 / (RRF_K + rank + 1), rank = the hit's position in its segment's list

Scores are >= 0; a score of 0 marks a padding hit (a segment fills its k with live chunks that did not score),
and every padding hit ranks after every positive hit of any segment, whatever the strategy. Ties (same merge
key) go to the earlier segment, then to the better rank within it, so the merge is deterministic.

The merged hits are copies of the segments' hits with `rank` renumbered 0..k-1; `score` stays the hit's own
segment score (its provenance), so under "max" and "rrf" scores need not decrease down the merged list.
"""
from __future__ import annotations

import dataclasses
import math

from fwpkm_rag.errors import InputError, InputTypeError, check_int
from fwpkm_rag.pipelines.retrieval import Hit

RRF_K = 60
"""Reciprocal rank fusion's constant: a hit at rank r (0 = best) weighs 1 / (RRF_K + r + 1)."""

STRATEGIES = ("raw", "max", "rrf")
"""The merge strategies, in the order docs and errors list them."""


def merge_keys(scores: list[float], strategy: str) -> list[float]:
    """One segment's merge keys (higher ranks first; 0 for padding hits) from its scores, best first."""
    if strategy == "raw":
        return [float(s) for s in scores]
    if strategy == "max":
        top = max(scores, default=0.0)
        return [float(s) / top if s > 0 else 0.0 for s in scores]
    if strategy == "rrf":
        return [1.0 / (RRF_K + r + 1) if s > 0 else 0.0 for r, s in enumerate(scores)]
    raise InputError(f"unknown merge strategy {strategy!r}; choose one of {', '.join(map(repr, STRATEGIES))}")


def check_strategy(strategy) -> str:
    """`strategy` if it is one of STRATEGIES; InputTypeError / InputError naming the choices otherwise."""
    if not isinstance(strategy, str):
        raise InputTypeError(f"the merge strategy must be a str (one of {', '.join(map(repr, STRATEGIES))}), "
                             f"got {type(strategy).__name__}")
    if strategy not in STRATEGIES:
        raise InputError(f"unknown merge strategy {strategy!r}; choose one of {', '.join(map(repr, STRATEGIES))}")
    return strategy


def merge_order(per_segment: list[list[float]], k: int, strategy: str = "raw") -> list[tuple[int, int]]:
    """The global top k as (segment position, position in that segment's list), from each segment's scores
    (best first): merge key descending (see the module doc), then segment order, then position. A segmented
    store merges its rankings by this before it reads any document, so only the k winners' texts are read."""
    check_int("k", k, error=InputTypeError)
    k = check_int("k", k, 0, error=InputError)
    strategy = check_strategy(strategy)
    entries = []  # (padding?, -key, segment, position)
    for seg, scores in enumerate(per_segment):
        for pos, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s) or s < 0 or math.isinf(s):
                raise InputError(f"hit scores must be finite numbers >= 0, got {s!r} (segment {seg}, position {pos})")
        for pos, (key, s) in enumerate(zip(merge_keys([float(s) for s in scores], strategy), scores)):
            entries.append((not s > 0, -key, seg, pos))
    entries.sort()
    return [(seg, pos) for _, _, seg, pos in entries[:k]]


def merge_hits(per_segment: list[list[Hit]], k: int, strategy: str = "raw") -> list[Hit]:
    """The global top k of the segments' rankings (each best first), `rank` renumbered 0..k-1 (`merge_order`
    on the hits' scores). Fewer than k hits come back only when the segments hold fewer in all."""
    order = merge_order([[hit.score for hit in hits] for hits in per_segment], k, strategy)
    return [dataclasses.replace(per_segment[seg][pos], rank=rank) for rank, (seg, pos) in enumerate(order)]
