"""benchmarks/semantic_fusion.py: its offline rule (`fused_top` over `store_sources`) ranks as the store itself does
for every (power, weight) it sweeps, and the dev choice follows its stated rule. The store uses the hashed
bag-of-words stand-in for MiniLM of the store's semantic-layer tests (no model download, deterministic)."""
from __future__ import annotations

import pytest
import torch

from fwpkm_rag.benchmarks.semantic_fusion import StoreWithSettings, choose, dev_grid, fused_top, store_sources
from fwpkm_rag.errors import ConfigError
from fwpkm_rag.pipelines.chunk_semantic import SentenceEncoder
from test_store_semantic_layer import BagEncoder
from test_store_word_layer import entry, shuffled

torch.set_num_threads(1)


@pytest.fixture
def bag(monkeypatch):
    enc = BagEncoder()
    monkeypatch.setattr(SentenceEncoder, "shared", classmethod(lambda cls: enc))
    return enc


def test_the_offline_rule_ranks_as_the_store(small_model, bag):
    s = StoreWithSettings(small_model, 32, semantic_layer=True, segment_tokens=150)
    s.add([entry(i) for i in range(24)])
    assert len(s.store.index.segments) >= 3  # the maxima are over every segment
    queries = [shuffled(entry(5), 1), entry(11), "lantern quarry golf hotel", shuffled(entry(20), 4)]
    for power, weight, first in ((1, 32.0, False), (6, 8.0, True), (3, 2.0, False), (16, 128.0, True), (1, 64.0, True)):
        s.store.index.settings = s.store.settings.replace(semantic_power=power, semantic_weight=weight,
                                                          semantic_exact_first=first)
        for q in queries:
            sources = store_sources(s.store, q)
            assert sources[2], "the semantic layer scores something"
            offline = fused_top(sources, weight, power, 8, exact_first=first)
            if first:  # rank 1 is the exact-words fusion's best (the store without the layer ranks it first too)
                assert offline[0] == fused_top(sources, 0.0, 1, 1)[0]
            assert offline, q
            # the store pads with chunks no source scored: the scored ones come first, in the same order
            assert [i for i, _ in s.search(q, 8)][: len(offline)] == offline, (power, weight, q)
    s.close()


def test_the_choice_keeps_the_needles_and_entries_and_then_maximises_the_pairs():
    base = dict(entries_recall1=0.99, needles_hit5=0.98)
    rows = [dict(base, power=1, weight=0.0, pairs_recall5=0.3, needles_hit1=0.95),
            dict(base, power=1, weight=32.0, pairs_recall5=0.75, needles_hit1=0.80),  # loses needles at rank 1
            dict(base, power=1, weight=64.0, pairs_recall5=0.80, needles_hit1=0.95, needles_hit5=0.97),  # at rank 5
            dict(base, power=1, weight=128.0, pairs_recall5=0.85, needles_hit1=0.96, entries_recall1=0.98),  # entries
            dict(base, power=4, weight=16.0, pairs_recall5=0.60, needles_hit1=0.95),
            dict(base, power=8, weight=8.0, pairs_recall5=0.60, needles_hit1=0.97),  # tie with the row above: smaller w
            dict(base, power=2, weight=4.0, pairs_recall5=0.50, needles_hit1=1.00)]
    assert (choose(rows)["power"], choose(rows)["weight"]) == (8, 8.0)
    with pytest.raises(ConfigError, match="widen the grid"):
        choose([rows[0], rows[1]])


def test_the_grid_measures_each_setting_by_the_rule():
    # one pair question whose gold only the semantic source finds; one needle whose key only the words find
    pair = (({1: 5.0}, {1: 1.0}, {0: 1.0, 1: 0.2}), {0})
    needle = (({0: 2.0, 1: 1.9}, {0: 1.0, 1: 0.5}, {1: 1.0, 0: 0.9}), {0}, 32768, 16)
    rows = dev_grid({"pairs": [pair], "needles": [needle]}, powers=(1, 8), weights=(2.0, 64.0))
    by = {(r["power"], r["weight"]): r for r in rows if not r["exact_first"]}
    first = {(r["power"], r["weight"]): r for r in rows if r["exact_first"]}
    assert rows[0]["weight"] == 0.0 and len(rows) == 1 + 2 * 2 * 2
    # exact first: the needle's key chunk (the lexical + word best) is rank 1 whatever the weight
    assert all(r["needles_hit1"] == 1.0 for r in first.values())
    assert first[(1, 64.0)]["pairs_recall5"] == 1.0  # and the semantic source still brings the pair's gold
    assert by[(1, 0.0)]["pairs_recall5"] == 0.0 and by[(1, 2.0)]["pairs_recall5"] == 1.0  # only the layer scores 0
    assert by[(1, 0.0)]["needles_hit1"] == 1.0 and by[(1, 64.0)]["needles_hit1"] == 0.0
    # power 8 makes the key's chunk (0.9 of the semantic best) count almost fully: the words decide
    assert by[(8, 64.0)]["needles_hit1"] == 1.0
    assert fused_top(pair[0], 64.0, 1, 1) == [0] and fused_top(pair[0], 0.0, 1, 1) == [1]
