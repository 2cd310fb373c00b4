"""The chunk semantic layer inside the store (issue 17 B; docs/addressing.md "A chunk-level semantic layer"):
`FwPKMStore(semantic_layer=True)` with the tiny random model and small segments. A stand-in sentence encoder
(hashed bags of words, deterministic) keeps most tests fast; one test uses all-MiniLM-L6-v2 itself. References: the
fusion rule by hand over each segment's lexical ranking, word layer and a semantic layer rebuilt from the segment's
stored chunks; the store's own state before a failed call; a store saved and loaded back; a store saved without
the layer."""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fwpkm_rag.errors import ConfigError
from fwpkm_rag.pipelines import FwPKMStore, MemoryIndex
from fwpkm_rag.pipelines.chunk_semantic import DIM, ChunkSemanticLayer, SentenceEncoder
from fwpkm_rag.pipelines.segments import (exact_maximum, fuse_words, fuse_words_reference, fusion_sources,
                                          rank_segments)
from fwpkm_rag.pipelines.settings import (DEFAULT_SEMANTIC_EXACT_FIRST, DEFAULT_SEMANTIC_POWER,
                                          DEFAULT_SEMANTIC_WEIGHT, DEFAULT_WORD_WEIGHT, SEMANTIC_POWER_BEFORE,
                                          StoreSettings)
from fwpkm_rag.pipelines.word_layer import CANDIDATES, flat_top, question_idf, source_maxima
from test_reliability import assert_same, fingerprint
from test_segments import prose, segment_ranking
from test_store_word_layer import entry, shuffled

torch.set_num_threads(1)
CHUNK = 32
SEG = 120


class BagEncoder:
    """A deterministic stand-in for MiniLM: the normalised sum of a fixed random vector per lowercased word (sha256
    seeded), so texts sharing words are close."""

    def encode(self, texts):
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()) or [""]:
                seed = int.from_bytes(hashlib.sha256(w.encode()).digest()[:8], "little")
                out[i] += np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


@pytest.fixture
def bag(monkeypatch):
    enc = BagEncoder()
    monkeypatch.setattr(SentenceEncoder, "shared", classmethod(lambda cls: enc))
    return enc


def sem_store(model, **over) -> FwPKMStore:
    return FwPKMStore(model=model, **{"chunk_tokens": CHUNK, "segment_tokens": SEG, "semantic_layer": True, **over})


def sem_tensors(store: FwPKMStore) -> list:
    out = []
    for sv in store.index.view.segments:
        s = sv.view.semantic
        out.append(({k: v.clone() for k, v in s.table.tensors().items()}, s.n_chunks, s.compact))
    return out


def assert_same_semantic(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ta, *ca), (tb, *cb) in zip(a, b):
        assert ca == cb and ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def rebuilt_semantic(segment_index, encoder) -> ChunkSemanticLayer:
    """A fresh layer written from the segment's stored chunks (core texts, chunk ids): the reference layer."""
    rows = segment_index.docs.db.execute("SELECT chunk_id, text, core_offset FROM chunks ORDER BY chunk_id").fetchall()
    layer = ChunkSemanticLayer(encoder=encoder)
    layer.add([t[off:] for _, t, off in rows], [c for c, _, _ in rows])
    return layer


def fused_by_hand(store: FwPKMStore, query: str, k: int, encoder) -> list[tuple]:
    """docs/addressing.md's rule with three sources, by hand: lexical top max(k, 50) per segment, word layer
    scores (store-wide word idf), semantic scores of a layer rebuilt from each segment's chunks; each divided by
    its maximum over the store, the semantic one then taken to 1 - (1 - x)^semantic_power, weighted 1,
    word_weight, semantic_weight, summed; with semantic_exact_first the chunk whose lexical + word sum is the
    store's best gets 1 + word_weight + semantic_weight more; best first (ties: segment, chunk id), then the live
    chunks that scored for none."""
    settings = store.settings
    segments = store.index.segments
    layers = [s.index.view.words for s in segments]
    idf = question_idf(layers, query)
    lexical, words, semantic = [], [], []
    for s in segments:
        alive = s.index.view.provenance.alive
        hits = segment_ranking(store, s, query, max(k, CANDIDATES))
        lexical.append({h.chunk_id: h.score for h in hits if h.score > 0})
        words.append(s.index.view.words.scores(query, alive=alive, idf=idf))
        ref = rebuilt_semantic(s.index, encoder).scores(query)
        semantic.append({c: v for c, v in ref.items() if bool(alive[c])})
    tops = [max((v for d in src for v in d.values()), default=0.0) for src in (lexical, words, semantic)]
    weights = [1.0, settings.word_weight, settings.semantic_weight]
    fused_all, exact_all = [], []
    for pos in range(len(segments)):
        fused, exact = {}, {}
        for i, (src, w, top, p) in enumerate(zip((lexical, words, semantic), weights, tops,
                                                  (1, 1, settings.semantic_power))):
            for c, v in src[pos].items() if top > 0 else ():
                shaped = v / top if p == 1 else 1 - (1 - v / top) ** p
                fused[c] = fused.get(c, 0.0) + w * shaped
                if i < 2:
                    exact[c] = exact.get(c, 0.0) + w * shaped
        fused_all.append(fused)
        exact_all.append(exact)
    best = max((v for e in exact_all for v in e.values()), default=0.0)
    entries = []
    for pos, s in enumerate(segments):
        fused = fused_all[pos]
        if settings.semantic_exact_first:  # the exact-words best over the store gets the largest fused score
            for c, v in exact_all[pos].items():
                if best > 0 and v == pytest.approx(best, rel=1e-12):
                    fused[c] += sum(weights)
        alive = s.index.view.provenance.alive
        for c in range(alive.numel()):
            if bool(alive[c]):
                entries.append((not fused.get(c, 0.0) > 0, -fused.get(c, 0.0), pos, c, s.id))
    entries.sort()
    return [(e[4], e[3], -e[1]) for e in entries[:k]]


# ---- 1. the property, with MiniLM itself ------------------------------------------------------------------------
FACTS = ["The capital's oldest bridge was painted teal last spring.",
         "Our town's cardiologist moved her practice to the harbour.",
         "The lighthouse on the northern cape was switched off in 1998.",
         "A violin maker in the old quarter sold his workshop to a bakery.",
         "The university library closed its rare manuscripts room for repairs.",
         "The city orchestra hired a new conductor from Vienna."]
QUESTIONS = ["What colour did the decorators apply to the most ancient river crossing in the seat of government?",
             "Where did the heart doctor of the municipality relocate?",
             "When was the beacon guiding sailors around the polar-side promontory turned off?",
             "Who bought the premises of the string instrument craftsman?",
             "Which part of the campus book collection is shut for maintenance?",
             "Whom did the symphony ensemble appoint as its musical director?"]


def test_questions_in_other_words_find_their_chunk_with_minilm(small_model):
    filler = [prose(40, 30 + i) for i in range(6)]
    docs, ids = FACTS + filler, [f"f{i}" for i in range(len(FACTS))] + [f"p{i}" for i in range(len(filler))]
    plain = FwPKMStore(model=small_model, chunk_tokens=CHUNK, segment_tokens=SEG)  # lexical + word layer
    sem = sem_store(small_model)
    for s in (plain, sem):
        s.add_texts(docs, ids=ids)
    assert len(sem.index.segments) >= 2
    found = {"plain": 0, "semantic": 0, "semantic top 2": 0}
    for i, q in enumerate(QUESTIONS):
        plain_top = [d.id for d in plain.similarity_search(q, k=1)]
        found["plain"] += f"f{i}" in plain_top
        top2 = [d.id for d in sem.similarity_search(q, k=2)]
        assert top2[0] == plain_top[0], q  # exact first: rank 1 is the exact-words best, the plain store's
        found["semantic top 2"] += f"f{i}" in top2
    sem.index.settings = sem.settings.replace(semantic_exact_first=False)  # one ranking over the three sources
    for i, q in enumerate(QUESTIONS):
        found["semantic"] += f"f{i}" in [d.id for d in sem.similarity_search(q, k=1)]
    # the layer is a quantiser: a question whose reads share no slot with its fact's writes scores it 0; it may
    # miss one, the lexical store and word layer miss most (no word is shared)
    assert found["semantic"] >= len(QUESTIONS) - 1 and found["semantic"] >= found["plain"] + 2, found
    assert found["semantic top 2"] >= len(QUESTIONS) - 1, found
    assert sem.index.nbytes() > plain.index.nbytes()
    plain.close()
    sem.close()


# ---- 2. the fused ranking against the rule by hand ---------------------------------------------------------------
def test_fused_ranking_equals_the_rule_by_hand_across_segments(small_model, bag):
    store = sem_store(small_model)
    docs = [entry(i) for i in range(14)] + [prose(150, 3)]
    store.add_texts(docs, ids=[f"e{i}" for i in range(len(docs))])
    store.delete(["e2"])
    assert len(store.index.segments) >= 3 and any(s.sealed for s in store.index.segments)
    for q in (shuffled(entry(5), 1), shuffled(entry(2), 2), "lantern quarry golf hotel", "zulu", entry(9)):
        for k in (1, 4, 12):
            got = store.search_with_provenance(q, k=k, matched_slots=0)
            ref = fused_by_hand(store, q, k, bag)
            assert [(h.segment, h.chunk_id) for h in got] == [(s, c) for s, c, _ in ref], q
            assert [h.score for h in got] == pytest.approx([v for _, _, v in ref], rel=1e-4, abs=1e-6)
            assert all(h.doc_id != "e2" for h in got)
        assert [(h.segment, h.chunk_id, h.doc_id) for h in store.index.search_reference(q, 6)] == \
            [(h.segment, h.chunk_id, h.doc_id) for h in store.search_with_provenance(q, k=6, matched_slots=0)]
    # the weight and the power are applied as given
    for weight, power, first in ((0.5, 1, False), (0.5, 3, True), (40.0, 8, True), (40.0, 1, False)):
        store.index.settings = store.settings.replace(semantic_weight=weight, semantic_power=power,
                                                      semantic_exact_first=first)
        for q in (shuffled(entry(7), 3), "lantern quarry golf hotel"):
            got = store.search_with_provenance(q, k=5, matched_slots=0)
            ref = fused_by_hand(store, q, 5, bag)
            assert [(h.segment, h.chunk_id) for h in got] == [(s, c) for s, c, _ in ref], (weight, power, q)
            assert [h.score for h in got] == pytest.approx([v for _, _, v in ref], rel=1e-4, abs=1e-6)
    store.close()


def test_the_tensor_fusion_equals_the_dict_reference_to_the_bit(small_model, bag):
    store = sem_store(small_model)
    store.add_texts([entry(i) for i in range(18)] + [prose(150, 5)], ids=[f"e{i}" for i in range(19)])
    store.delete(["e3", "e11"])
    segments = store.index.view.segments
    assert len(segments) >= 4
    layers = [sv.view.words for sv in segments]
    for q in (shuffled(entry(4), 1), "zulu", "lantern lantern quarry", entry(9), "."):
        ranked = rank_segments(segments, q, CANDIDATES)
        assert len(fusion_sources(segments, q, ranked)) == 3
        for k in (1, 3, 9, 40):
            for power, first in ((1, False), (2, True), (8, False), (1, True)):
                fast = fuse_words(segments, q, ranked, k, 8.0, semantic_weight=32.0, semantic_power=power,
                                  exact_first=first)
                ref = fuse_words_reference(segments, q, ranked, k, 8.0, semantic_weight=32.0, semantic_power=power,
                                           exact_first=first)
                assert [(r.chosen, r.scores) for r in fast] == [(r.chosen, r.scores) for r in ref], (q, k, power)
        idf = question_idf(layers, q)
        tops = [2 * t for t in source_maxima(fusion_sources(segments, q, ranked, idf))]
        fast = fuse_words(segments, q, ranked, 5, 0.5, word_idf=idf, tops=tops, semantic_weight=3.0, semantic_power=5)
        ref = fuse_words_reference(segments, q, ranked, 5, 0.5, word_idf=idf, tops=tops, semantic_weight=3.0,
                                   semantic_power=5)
        assert [(r.chosen, r.scores) for r in fast] == [(r.chosen, r.scores) for r in ref], q
        # a Ray actor's share: the exact-words best of some segments, given the store's maxima, is the value that
        # the full fusion's bonus goes to (to the bit), and passing the store's best as exact_top changes nothing
        best = exact_maximum(segments, q, ranked, 0.5, word_idf=idf, tops=tops)
        assert best == max(exact_maximum(segments[:2], q, ranked[:2], 0.5, word_idf=idf, tops=tops),
                           exact_maximum(segments[2:], q, ranked[2:], 0.5, word_idf=idf, tops=tops))
        kw = dict(word_idf=idf, tops=tops, semantic_weight=3.0, exact_first=True)
        whole = fuse_words(segments, q, ranked, 5, 0.5, **kw)
        assert [(r.chosen, r.scores) for r in whole] == \
            [(r.chosen, r.scores) for r in fuse_words(segments, q, ranked, 5, 0.5, exact_top=best, **kw)] == \
            [(r.chosen, r.scores) for r in fuse_words_reference(segments, q, ranked, 5, 0.5, exact_top=best, **kw)]
        if best > 0:  # the bonus holder is first in its segment and outranks every other segment's first
            firsts = [r.scores[0] for r in whole if r.scores]
            assert max(firsts) >= 1.0 + 0.5 + 3.0
    store.close()


# ---- 3. transactions, deletes, sealing --------------------------------------------------------------------------
def test_a_failed_call_leaves_every_semantic_layer_as_it_was(small_model, bag, monkeypatch):
    store = sem_store(small_model)
    store.add_texts([entry(i) for i in range(8)], ids=[f"e{i}" for i in range(8)])
    before, sem_before = fingerprint(store), sem_tensors(store)
    q = shuffled(entry(3), 0)
    hits_before = [(h.segment, h.chunk_id, h.score) for h in store.search_with_provenance(q, k=5)]

    def failing():
        yield entry(40)
        yield from (entry(i) for i in range(41, 47))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_texts(failing(), ids=["e3"] + [f"x{i}" for i in range(6)] + ["y"])
    assert_same(before, fingerprint(store))
    assert_same_semantic(sem_before, sem_tensors(store))
    real = MemoryIndex.prepare_write

    def prepare(self, bar=None):  # fails after the open segment's layers were written
        real(self, bar)
        raise RuntimeError("disk full")

    monkeypatch.setattr(MemoryIndex, "prepare_write", prepare)
    with pytest.raises(RuntimeError, match="disk full"):
        store.add_texts([entry(50)], ids=["z"])
    monkeypatch.setattr(MemoryIndex, "prepare_write", real)
    assert_same(before, fingerprint(store))
    assert_same_semantic(sem_before, sem_tensors(store))
    assert [(h.segment, h.chunk_id, h.score) for h in store.search_with_provenance(q, k=5)] == hits_before
    store.close()


def test_deleted_chunks_never_score_and_sealed_layers_are_packed(small_model, bag):
    store = sem_store(small_model)
    docs = [entry(i) for i in range(12)]
    store.add_texts(docs, ids=[f"e{i}" for i in range(12)])
    gone = [f"e{i}" for i in range(0, 12, 2)]
    store.delete(gone)
    for d in gone:
        q = docs[int(d[1:])]
        assert d not in {doc.id for doc in store.similarity_search(q, k=20)}
        for sv in store.index.view.segments:
            scores = sv.view.semantic.scores(q, alive=sv.view.provenance.alive)
            assert all(bool(sv.view.provenance.alive[c]) for c in scores)
    sealed = [s for s in store.index.segments if s.sealed]
    assert sealed
    for s in sealed:
        packed = s.index.view.semantic
        meta = s.index.docs.get_meta("semantic")
        full = ChunkSemanticLayer.from_state({n: s.index.docs.get_array(f"semantic.{n}") for n in meta["names"]},
                                             meta, encoder=bag)
        assert packed.compact and not full.compact and packed.nbytes() < full.nbytes()
        for q in (entry(1), "lantern quarry zulu"):
            assert packed.scores(q) == full.scores(q)
        with pytest.raises(RuntimeError, match="read-only"):
            packed.add(["more"], [99])
    kept = [f"e{i}" for i in range(1, 12, 2)]
    store.compact(0.75)
    for s in store.index.segments:
        assert s.index.view.semantic.n_chunks == s.index.n_live_chunks
    assert all(store.similarity_search(docs[int(d[1:])], k=1)[0].id == d for d in kept)
    store.close()


# ---- 4. persistence and settings ---------------------------------------------------------------------------------
QUERIES = [shuffled(entry(i), i) for i in range(0, 16, 3)] + ["lantern quarry golf", "zulu"]


def results(store: FwPKMStore) -> list:
    return [[(h.segment, h.chunk_id, h.doc_id, round(h.score, 5)) for h in store.search_with_provenance(q, k=5)]
            for q in QUERIES]


def test_save_and_load_give_the_same_layers_and_rankings(small_model, bag, tmp_path):
    store = sem_store(small_model)
    store.add_texts([entry(i) for i in range(10)], ids=[f"e{i}" for i in range(10)])
    store.add_texts([entry(i) for i in range(10, 16)], ids=[f"e{i}" for i in range(10, 16)])
    store.delete(["e4"])
    manifest = json.loads(Path(store.save(tmp_path / "s")).read_text())
    assert manifest["settings"]["semantic_layer"] is True
    assert manifest["settings"]["semantic_weight"] == DEFAULT_SEMANTIC_WEIGHT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved layers are read back: nothing rebuilt
        loaded = FwPKMStore.load(tmp_path / "s", model=small_model)
    assert loaded.settings == store.settings
    assert_same_semantic(sem_tensors(store), sem_tensors(loaded))
    assert results(loaded) == results(store)
    for s in (store, loaded):
        s.add_texts([entry(30), entry(31)], ids=["n30", "n31"])
    assert_same_semantic(sem_tensors(store), sem_tensors(loaded))
    assert results(loaded) == results(store)
    # loaded with the layer off: no layer, and the ranking of the lexical store and the word layer
    off = FwPKMStore.load(tmp_path / "s", model=small_model, semantic_layer=False)
    assert all(sv.view.semantic is None for sv in off.index.view.segments)
    for s in (store, loaded, off):
        s.close()


def test_a_store_saved_without_the_layer_rebuilds_it_with_a_warning(small_model, bag, tmp_path):
    docs, ids = [entry(i) for i in range(12)], [f"e{i}" for i in range(12)]
    plain = FwPKMStore(model=small_model, chunk_tokens=CHUNK, segment_tokens=SEG)
    plain.add_texts(docs, ids=ids)
    manifest = json.loads(Path(plain.save(tmp_path / "old")).read_text())
    assert "semantic_layer" not in manifest["settings"]  # the manifest of earlier versions
    with pytest.warns(UserWarning, match="saved without a semantic layer: rebuilding it"):
        upgraded = FwPKMStore.load(tmp_path / "old", model=small_model, semantic_layer=True)
    built = sem_store(small_model)
    built.add_texts(docs, ids=ids)
    assert_same_semantic(sem_tensors(built), sem_tensors(upgraded))
    assert results(upgraded) == results(built)
    upgraded.save(tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = FwPKMStore.load(tmp_path / "old", model=small_model)
    assert again.settings.semantic_layer and results(again) == results(built)
    for s in (plain, upgraded, built, again):
        s.close()


def test_semantic_settings_are_validated():
    assert StoreSettings().semantic_layer is False and StoreSettings().semantic_weight == DEFAULT_SEMANTIC_WEIGHT
    assert "semantic_layer" not in StoreSettings().store_dict()
    on = StoreSettings(semantic_layer=True)
    assert on.store_dict()["semantic_layer"] is True and StoreSettings.from_dict(on.store_dict()) == on
    assert StoreSettings.from_dict(StoreSettings().store_dict()).semantic_layer is False
    for bad in (0, -1.0, float("nan"), float("inf"), "8", True):
        with pytest.raises(ConfigError, match="semantic_weight"):
            StoreSettings(semantic_weight=bad)
    assert StoreSettings().semantic_power == DEFAULT_SEMANTIC_POWER and on.store_dict()["semantic_power"] == \
        DEFAULT_SEMANTIC_POWER
    for bad in (0, -2, 2.0, "3", True, None):
        with pytest.raises(ConfigError, match="semantic_power"):
            StoreSettings(semantic_power=bad)
    # a manifest written before the settings ranked by the semantic scores as they are: power 1, no exact first
    older = {name: v for name, v in on.store_dict().items() if name not in ("semantic_power", "semantic_exact_first")}
    assert StoreSettings.from_dict(older).semantic_power == SEMANTIC_POWER_BEFORE == 1
    assert StoreSettings.from_dict(older).semantic_exact_first is False
    assert on.semantic_exact_first is DEFAULT_SEMANTIC_EXACT_FIRST and StoreSettings.from_dict(on.store_dict()) == on
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match="semantic_exact_first"):
            StoreSettings(semantic_exact_first=bad)
    with pytest.raises(ConfigError, match="semantic_layer"):
        StoreSettings(semantic_layer=1)
    with pytest.raises(ConfigError, match="merge must be 'raw'"):
        StoreSettings(semantic_layer=True, word_layer=False, merge="rrf")
    assert DEFAULT_WORD_WEIGHT == StoreSettings().word_weight


# The Ray store with the layer: tests/pipelines/test_ray_store.py (the actors load the real encoder).


def test_flat_top_is_one_minus_the_power_of_the_distance_from_the_best():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    for p in (1, 2, 3, 8):
        got = flat_top(x, p)
        assert torch.allclose(got, 1 - (1 - x) ** p, rtol=0, atol=1e-12)
        assert got[0] == 0 and got[-1] == 1 and bool((got[1:] >= got[:-1]).all())  # 0 -> 0, best -> 1, monotone
        # a Python float gives the same bits as the tensor (the dict reference and the tensor fusion agree)
        assert [flat_top(float(v), p) for v in x] == got.tolist()
    assert flat_top(0.9, 8) > 0.999999 and flat_top(0.1, 8) < 0.57  # flat near the best, steep far from it
