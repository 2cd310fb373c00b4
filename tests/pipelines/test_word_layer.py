"""The word layer (issue 17 A, pipelines/word_layer.py): word-order invariance, a naive reference of its scores,
bounded state, determinism across instances, and bad input that changes nothing."""
from __future__ import annotations

import math
import random

import pytest
import torch

from fwpkm_rag.errors import ConfigError, InputError, InputTypeError
from fwpkm_rag.pipelines.word_layer import WordLayer, WordLayerConfig

TEXTS = [
    "The parser reads a configuration file and returns a dictionary of sections.",
    "A socket server listens on a port and hands each connection to a worker thread.",
    "Return the number of seconds since the epoch as a floating point number.",
    "The garbage collector frees cycles of objects that are no longer reachable.",
    "Decode the bytes with the given codec and return the text as a string.",
    "The logging module writes records to handlers, which format and emit them.",
]


@pytest.fixture(scope="module")
def layer():
    w = WordLayer()
    w.add(TEXTS, list(range(len(TEXTS))))
    return w


def naive_scores(w: WordLayer, question: str) -> dict:
    """Loops over the question's units, their slots and each slot's writers: the formula of the module doc."""
    c, t = w.config, w.table
    out: dict = {}
    for u in sorted(set(w.units(question))):
        slots, weights = w.address([u])
        df = min(float(t.writes[0, int(s)]) for s in slots[0])
        idf = math.log1p(max(w.n_chunks - df + 0.5, 0.0) / (df + 0.5))
        for s, rw in zip(slots[0].tolist(), weights[0].tolist()):
            for cid, st in zip(t.chunk[0, s].tolist(), t.strength[0, s].float().tolist()):
                if cid >= 0 and bool(t.alive[cid]):
                    out[cid] = out.get(cid, 0.0) + idf * rw * st / (st + c.saturation)
    return {k: v for k, v in out.items() if v > 0}


def test_scores_match_the_naive_reference(layer):
    for q in ["seconds since the epoch", "worker thread port", "text codec bytes string", "zebra", TEXTS[3]]:
        fast, slow = layer.scores(q), naive_scores(layer, q)
        assert fast.keys() == slow.keys()
        for k in fast:  # float32 sums in another order: relative 1e-5
            assert fast[k] == pytest.approx(slow[k], rel=1e-5)


def test_word_order_does_not_matter_and_the_entry_ranks_first(layer):
    rng = random.Random(0)
    for i, text in enumerate(TEXTS):
        words = text.rstrip(".").split()
        rng.shuffle(words)
        shuffled = " ".join(words)
        a, b = layer.scores(text), layer.scores(shuffled)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-6) for k in a)
        assert max(b, key=b.get) == i


def test_bounded_state_and_capped_writers():
    w = WordLayer(n_subkeys=8, per_slot=4, topk=2)  # 64 slots x 4 writers: far fewer than the postings below
    size = w.nbytes()
    for start in range(0, 200, 50):
        w.add([f"common word number {i} alpha" for i in range(start, start + 50)], list(range(start, start + 50)))
        assert w.nbytes() - size <= 200  # only the per-chunk alive flags grow (1 byte per chunk)
    filled = (w.table.chunk[0] >= 0).sum(1)
    assert int(filled.max()) <= 4
    assert float(w.table.writes[0].sum()) > 4 * 64  # events are counted in full even where writers were evicted


def test_count_min_df_is_an_upper_bound():
    w = WordLayer()
    w.add(["alpha beta", "alpha gamma", "alpha delta beta"], [0, 1, 2])
    slots, _ = w.address(["alpha", "beta", "gamma"])
    df = w.table.writes[0][slots].min(1).values.tolist()
    assert df[0] >= 3 and df[1] >= 2 and df[2] >= 1


def test_two_instances_address_alike(layer):
    other = WordLayer()
    other.add(TEXTS, list(range(len(TEXTS))))
    s1, w1 = layer.address(["parser", "epoch", "codec"])
    s2, w2 = other.address(["parser", "epoch", "codec"])
    assert torch.equal(s1, s2)  # slots are exact ints
    assert torch.allclose(w1, w2, atol=1e-6)
    q = "garbage cycles objects"
    a, b = layer.scores(q), other.scores(q)
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
    # one layer's addressing of the question serves another of the same config (a store computes it once)
    shared = other.address(sorted(set(other.units(q))))
    assert layer.scores(q, address=shared) == layer.scores(q, address=layer.address(sorted(set(layer.units(q)))))
    assert layer.scores(q, address=shared).keys() == a.keys()


def test_token_units_for_the_diagnosis():
    w = WordLayer(unit="token")
    w.add(TEXTS, list(range(len(TEXTS))))
    sc = w.scores("the logging module handlers")
    assert max(sc, key=sc.get) == 5


def test_bad_input_raises_and_changes_nothing(layer):
    before = {k: v.clone() for k, v in layer.table.tensors().items()}
    n = layer.n_chunks
    with pytest.raises(InputTypeError):
        layer.add("one text", [0])
    with pytest.raises(InputError):
        layer.add(["a", "b"], [7])
    with pytest.raises(InputTypeError):
        layer.add(["a", b"bytes"], [7, 8])
    with pytest.raises(InputError):
        layer.add(["a"], [-1])
    with pytest.raises(InputTypeError):
        layer.scores(b"bytes")
    assert layer.n_chunks == n
    for k, v in layer.table.tensors().items():
        assert torch.equal(v, before[k])
    assert layer.scores("") == {}


def test_config_is_validated():
    for bad in (dict(n_subkeys=1), dict(k_dim=63), dict(topk=0), dict(topk=200), dict(per_slot=0),
                dict(saturation=0.0), dict(length_b=2.0), dict(unit="char")):
        with pytest.raises(ConfigError):
            WordLayerConfig(**bad)
    with pytest.raises(ConfigError):
        WordLayer(WordLayerConfig(), topk=2)
