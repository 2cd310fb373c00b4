"""The word layer inside the store (issue 17, "one store, both kinds of question"; docs/addressing.md "In the
store"): `FwPKMStore(word_layer=True)` with the tiny random model and small segments. References: the fusion
rule computed by hand from each segment's lexical ranking (`retrieval.rank_view`, one forward per segment) and
its word layer's scores, with the word idf counted by hand over every segment; the store's own state before a
failed call; a store saved and loaded back; a store saved before the word layer existed."""
from __future__ import annotations

import json
import math
import random
import re
import warnings
from pathlib import Path

import pytest
import torch

from fwpkm_rag.errors import ConfigError, InputError, InputTypeError
from fwpkm_rag.pipelines import FwPKMStore, MemoryIndex
from fwpkm_rag.pipelines.settings import DEFAULT_WORD_WEIGHT, StoreSettings
from fwpkm_rag.pipelines.segments import fuse_words, fuse_words_reference, fusion_sources, rank_segments
from fwpkm_rag.pipelines.word_layer import (CANDIDATES, WORD_CONTEXT, WordLayer, chunk_word_texts, question_idf,
                                            source_maxima, word_idf)
from test_reliability import assert_same, fingerprint
from test_segments import prose, segment_ranking

torch.set_num_threads(1)
CHUNK = 32
SEG = 120  # a few one-chunk documents per segment
VOCAB = ("harbour lantern quarry meadow saddle violin thimble orchard beacon cellar pepper walnut glacier "
         "falcon ribbon marble canyon tulip anchor compass feather ginger kettle ladder mirror nectar otter "
         "parrot quill raven spindle timber").split()


def entry(i: int) -> str:
    """A short one-chunk document: seven distinct words drawn for it (the word sets differ between entries)."""
    rng = random.Random(1000 + i)
    return " ".join(rng.sample(VOCAB, 7)) + "."


def shuffled(text: str, seed: int) -> str:
    words = text.rstrip(".").split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def word_store(model, **over) -> FwPKMStore:
    return FwPKMStore(model=model, **{"chunk_tokens": CHUNK, "segment_tokens": SEG, "word_layer": True, **over})


def word_tensors(store: FwPKMStore) -> list:
    """Every segment's word layer state: its table's tensors (packed once sealed) and counters."""
    out = []
    for sv in store.index.view.segments:
        w = sv.view.words
        out.append(({k: v.clone() for k, v in w.table.tensors().items()}, w.n_chunks, w.n_units, w.compact))
    return out


def assert_same_words(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (ta, *ca), (tb, *cb) in zip(a, b):
        assert ca == cb and ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def fused_by_hand(store: FwPKMStore, query: str, k: int, weight: float = DEFAULT_WORD_WEIGHT) -> list[tuple]:
    """docs/addressing.md's rule by hand: lexical scores of each segment's top max(k, 50) (its MemoryIndex alone,
    store-wide question idf) and word scores with the word idf over every segment (counted below by hand), each
    divided by its maximum over the whole store, weighted 1 and `weight`, summed; best first (ties: segment
    order, then chunk id), then the live chunks that scored for neither (segment order, id order)."""
    segments = store.index.segments
    lexical = []
    for s in segments:
        hits = segment_ranking(store, s, query, max(k, CANDIDATES))
        lexical.append({h.chunk_id: h.score for h in hits if h.score > 0})
    layers = [s.index.view.words for s in segments]
    words = []
    for s in segments:
        w = s.index.view.words
        scores = {}
        for unit in sorted(set(w.units(query))):
            slots, read_weights = w.address([unit])
            # count-min df over the store: per slot the write events summed over every segment's layer
            df = min(sum(float(layer.table.writes[0, int(slot)]) for layer in layers) for slot in slots[0])
            n = sum(layer.n_chunks for layer in layers)
            idf = math.log1p(max(n - df + 0.5, 0.0) / (df + 0.5))
            which, chunk, strength = w.table.entries(0, slots[0])
            for j, c, st in zip(which.tolist(), chunk.tolist(), strength.tolist()):
                if bool(s.index.view.provenance.alive[c]):
                    scores[c] = scores.get(c, 0.0) + idf * float(read_weights[0, j]) * st / (st + 0.5)
        words.append({c: v for c, v in scores.items() if v > 0})
    top_l = max((v for d in lexical for v in d.values()), default=0.0)
    top_w = max((v for d in words for v in d.values()), default=0.0)
    entries = []
    for pos, (s, lex, wd) in enumerate(zip(segments, lexical, words)):
        fused = {}
        for c in set(lex) | set(wd):
            lex_part = lex.get(c, 0.0) / top_l if top_l > 0 else 0.0
            fused[c] = lex_part + (weight * wd.get(c, 0.0) / top_w if top_w > 0 else 0.0)
        alive = s.index.view.provenance.alive
        for c in range(alive.numel()):
            if bool(alive[c]):
                entries.append((not fused.get(c, 0.0) > 0, -fused.get(c, 0.0), pos, c, s.id))
    entries.sort()
    return [(e[4], e[3], -e[1]) for e in entries[:k]]


# ---- 1. the property: words in another order --------------------------------------------------------------------
def test_words_in_another_order_find_their_chunk_where_the_plain_store_does_not(small_model):
    docs = [entry(i) for i in range(24)]
    plain = FwPKMStore(model=small_model, chunk_tokens=CHUNK, segment_tokens=SEG, word_layer=False)
    words = word_store(small_model)
    for s in (plain, words):
        s.add_texts(docs, ids=[f"e{i}" for i in range(len(docs))])
    assert len(words.index.segments) >= 3
    assert all(len(p) == 1 for p in words.index.view.catalog.values())  # one chunk, one segment each
    misses = {"plain": 0, "words": 0}
    for i, text in enumerate(docs):
        q = shuffled(text, i)
        misses["plain"] += plain.similarity_search(q, k=1)[0].id != f"e{i}"
        misses["words"] += words.similarity_search(q, k=1)[0].id != f"e{i}"
    assert misses["words"] == 0 and misses["plain"] > 0, misses
    # word_layer=False: no layer at all, nothing held for it
    assert all(sv.view.words is None for sv in plain.index.view.segments)
    assert words.index.nbytes() > plain.index.nbytes()
    plain.close()
    words.close()


# ---- 2. the fused ranking against the rule by hand ---------------------------------------------------------------
def test_fused_ranking_equals_the_rule_by_hand_across_segments(small_model):
    store = word_store(small_model)
    docs = [entry(i) for i in range(14)] + [prose(150, 3)]  # the long one spans segments
    store.add_texts(docs, ids=[f"e{i}" for i in range(len(docs))])
    store.delete(["e2"])  # deleted chunks score for neither source
    assert len(store.index.segments) >= 3 and any(s.sealed for s in store.index.segments)
    for q in (shuffled(entry(5), 1), shuffled(entry(2), 2), "lantern quarry golf hotel", "zulu", entry(9)):
        for k in (1, 4, 12):
            got = store.search_with_provenance(q, k=k, matched_slots=0)
            ref = fused_by_hand(store, q, k)
            assert [(h.segment, h.chunk_id) for h in got] == [(s, c) for s, c, _ in ref], q
            assert [h.score for h in got] == pytest.approx([v for _, _, v in ref], rel=1e-4, abs=1e-6)
            assert [h.rank for h in got] == list(range(len(got)))
            assert all(h.doc_id != "e2" for h in got)
        # the slow path (a forward per segment) gives the same ranking
        assert [(h.segment, h.chunk_id, h.doc_id) for h in store.index.search_reference(q, 6)] == \
            [(h.segment, h.chunk_id, h.doc_id) for h in store.search_with_provenance(q, k=6, matched_slots=0)]
    # the store-wide word idf: every segment's layer counted (word_layer.word_idf against the loop above)
    layers = [s.index.view.words for s in store.index.segments]
    slots, _ = layers[0].address(["lantern", "zulu"])
    n = sum(w.n_chunks for w in layers)
    df = [min(sum(float(w.table.writes[0, int(s)]) for w in layers) for s in row) for row in slots]
    assert word_idf(layers, slots).tolist() == pytest.approx([math.log1p(max(n - d + 0.5, 0) / (d + 0.5)) for d in df])
    assert question_idf(layers, "zulu Lantern lantern").tolist() == word_idf(layers, slots).tolist()  # sorted units
    # a weight of another value is applied as given
    store.index.settings = store.settings.replace(word_weight=0.5)
    q = shuffled(entry(7), 3)
    assert [(h.segment, h.chunk_id) for h in store.search_with_provenance(q, k=5, matched_slots=0)] == \
        [(s, c) for s, c, _ in fused_by_hand(store, q, 5, weight=0.5)]
    store.close()


# ---- 3. transactions: an aborted call, deletes, compaction ---------------------------------------------------------
def test_the_tensor_fusion_equals_the_dict_reference_to_the_bit(small_model):
    """segments.fuse_words (every segment's sources concatenated into tensors) against fuse_words_reference (a
    dict per segment, word_layer.fuse_sources): the same chunks, in the same order, with equal scores, for
    several depths, with padding (k above the scored chunks), deletions, and the driver's idf and maxima given."""
    store = word_store(small_model)
    docs = [entry(i) for i in range(18)] + [prose(150, 5)]
    store.add_texts(docs, ids=[f"e{i}" for i in range(len(docs))])
    store.delete(["e3", "e11"])
    segments = store.index.view.segments
    assert len(segments) >= 4
    layers = [sv.view.words for sv in segments]
    for q in (shuffled(entry(4), 1), shuffled(entry(3), 2), "zulu", "lantern lantern quarry", entry(9), "."):
        ranked = rank_segments(segments, q, CANDIDATES)
        for k in (1, 3, 9, 40):
            fast = fuse_words(segments, q, ranked, k, 8.0)
            ref = fuse_words_reference(segments, q, ranked, k, 8.0)
            assert [(r.chosen, r.scores) for r in fast] == [(r.chosen, r.scores) for r in ref], (q, k)
        # a Ray actor's call: the store-wide idf and maxima come from the driver (here: doubled maxima)
        idf = question_idf(layers, q)
        tops = [2 * t for t in source_maxima(fusion_sources(segments, q, ranked, idf))]
        fast = fuse_words(segments, q, ranked, 5, 0.5, word_idf=idf, tops=tops)
        ref = fuse_words_reference(segments, q, ranked, 5, 0.5, word_idf=idf, tops=tops)
        assert [(r.chosen, r.scores) for r in fast] == [(r.chosen, r.scores) for r in ref], q
    assert fuse_words([], "lantern", [], 5, 8.0) == []
    store.close()


def test_a_failed_call_leaves_every_word_layer_as_it_was(small_model, monkeypatch):
    store = word_store(small_model)
    store.add_texts([entry(i) for i in range(8)], ids=[f"e{i}" for i in range(8)])
    before, words_before = fingerprint(store), word_tensors(store)
    q = shuffled(entry(3), 0)
    hits_before = [(h.segment, h.chunk_id, h.score) for h in store.search_with_provenance(q, k=5)]

    def failing():  # replaces a document, fills the open segment and a new one, then fails
        yield entry(40)
        yield from (entry(i) for i in range(41, 47))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_texts(failing(), ids=["e3"] + [f"x{i}" for i in range(6)] + ["y"])
    assert_same(before, fingerprint(store))
    assert_same_words(words_before, word_tensors(store))
    # a failure in phase one, after the word layer of the open segment was written (prepare_write)
    real = MemoryIndex.prepare_write

    def prepare(self, bar=None):
        real(self, bar)
        raise RuntimeError("disk full")

    monkeypatch.setattr(MemoryIndex, "prepare_write", prepare)
    with pytest.raises(RuntimeError, match="disk full"):
        store.add_texts([entry(50)], ids=["z"])
    monkeypatch.undo()
    assert_same(before, fingerprint(store))
    assert_same_words(words_before, word_tensors(store))
    assert [(h.segment, h.chunk_id, h.score) for h in store.search_with_provenance(q, k=5)] == hits_before
    store.close()


def test_deleted_chunks_never_score_and_compaction_rebuilds_the_layer(small_model):
    store = word_store(small_model)
    docs = [entry(i) for i in range(12)]
    store.add_texts(docs, ids=[f"e{i}" for i in range(12)])
    gone = [f"e{i}" for i in range(0, 12, 2)]
    q = {d: shuffled(docs[int(d[1:])], 4) for d in gone}
    assert all(store.similarity_search(q[d], k=1)[0].id == d for d in gone)
    store.delete(gone)
    for d in gone:
        assert d not in {doc.id for doc in store.similarity_search(q[d], k=20)}
        for sv in store.index.view.segments:  # the word scores themselves: none for a deleted chunk
            scores = sv.view.words.scores(q[d], alive=sv.view.provenance.alive)
            assert all(bool(sv.view.provenance.alive[c]) for c in scores)
    kept = [f"e{i}" for i in range(1, 12, 2)]
    assert all(store.similarity_search(shuffled(docs[int(d[1:])], 5), k=1)[0].id == d for d in kept)
    # compaction rebuilds the sparse segments' layers from their live chunks only
    rebuilt = store.compact(0.75)
    assert rebuilt
    for s in store.index.segments:
        w = s.index.view.words
        assert w.n_chunks == s.index.n_live_chunks == s.index.provenance.n_chunks
        assert w.compact == s.sealed  # sealed segments keep the packed layer
    assert all(store.similarity_search(shuffled(docs[int(d[1:])], 5), k=1)[0].id == d for d in kept)
    store.rebuild()
    assert all(store.similarity_search(shuffled(docs[int(d[1:])], 6), k=1)[0].id == d for d in kept)
    store.close()


def test_a_sealed_segment_keeps_the_layer_packed_with_the_same_scores(small_model):
    store = word_store(small_model)
    store.add_texts([entry(i) for i in range(10)], ids=[f"e{i}" for i in range(10)])
    sealed = [s for s in store.index.segments if s.sealed]
    assert sealed
    for s in sealed:
        packed = s.index.view.words
        saved = {n: s.index.docs.get_array(f"words.{n}") for n in ("chunk", "strength", "writes", "alive")}
        full = WordLayer.from_state(saved, s.index.docs.get_meta("words"))
        assert packed.compact and not full.compact
        assert packed.nbytes() < full.nbytes() / 4  # filled entries only
        for q in (entry(1), "lantern quarry zulu", shuffled(entry(6), 2)):
            assert packed.scores(q) == full.scores(q)  # the same entries in the same order: equal to the bit
        with pytest.raises(RuntimeError, match="read-only"):
            packed.add(["more"], [99])


# ---- 4. persistence --------------------------------------------------------------------------------------------------
def results(store: FwPKMStore, queries) -> list:
    return [[(h.segment, h.chunk_id, h.doc_id, round(h.score, 5)) for h in store.search_with_provenance(q, k=5)]
            for q in queries]


QUERIES = [shuffled(entry(i), i) for i in range(0, 16, 3)] + ["lantern quarry golf", "zulu"]


def test_save_and_load_give_the_same_layers_and_rankings(small_model, tmp_path):
    store = word_store(small_model)
    store.add_texts([entry(i) for i in range(10)], ids=[f"e{i}" for i in range(10)])
    store.add_texts([entry(i) for i in range(10, 16)], ids=[f"e{i}" for i in range(10, 16)])
    store.delete(["e4"])
    manifest = json.loads(Path(store.save(tmp_path / "s")).read_text())
    assert manifest["settings"]["word_layer"] is True and manifest["settings"]["word_weight"] == DEFAULT_WORD_WEIGHT
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved layers are read back: nothing rebuilt
        loaded = FwPKMStore.load(tmp_path / "s", model=small_model)
    assert loaded.settings == store.settings
    assert_same_words(word_tensors(store), word_tensors(loaded))
    assert results(loaded, QUERIES) == results(store, QUERIES)
    # loaded with the layer off: the lexical ranking, exactly that of the same store without the layer
    off = FwPKMStore.load(tmp_path / "s", model=small_model, word_layer=False)
    assert all(sv.view.words is None for sv in off.index.view.segments)
    def ranking(hits):
        return [(h.segment, h.chunk_id, h.doc_id, round(h.score, 5)) for h in hits]

    lexical = [ranking(off.index.search(q, 5)) for q in QUERIES]
    assert lexical == [ranking(store.index.search(q, 5, words=False)) for q in QUERIES]
    assert lexical != results(loaded, QUERIES)
    # a loaded store keeps ingesting exactly like the original
    for s in (store, loaded):
        s.add_texts([entry(30), entry(31)], ids=["n30", "n31"])
    assert_same_words(word_tensors(store), word_tensors(loaded))
    assert results(loaded, QUERIES) == results(store, QUERIES)
    for s in (store, loaded, off):
        s.close()


def test_every_segment_reads_word_topk_slots_and_stores_saved_before_it_keep_4(small_model, tmp_path):
    from fwpkm_rag.pipelines.settings import DEFAULT_WORD_TOPK, WORD_TOPK_BEFORE

    assert StoreSettings().word_topk == DEFAULT_WORD_TOPK == 2
    for bad in (0, -1, 2.0, "2", None):
        with pytest.raises((ConfigError, TypeError, ValueError), match="word_topk"):
            StoreSettings(word_topk=bad)
    docs, ids = [entry(i) for i in range(12)], [f"e{i}" for i in range(12)]
    store = word_store(small_model, word_topk=4)
    store.add_texts(docs, ids=ids)
    assert len(store.index.segments) >= 3 and {sv.view.words.config.topk for sv in store.index.view.segments} == {4}
    path = Path(store.save(tmp_path / "s"))
    manifest = json.loads(path.read_text())
    assert manifest["settings"]["word_topk"] == 4
    # the manifest of a store saved before the setting existed: no word_topk, layers of 4
    del manifest["settings"]["word_topk"]
    path.write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its saved layers are read back as they are
        old = FwPKMStore.load(tmp_path / "s", model=small_model)
    assert old.settings.word_topk == WORD_TOPK_BEFORE == 4
    assert results(old, QUERIES) == results(store, QUERIES)
    old.add_texts([entry(30), entry(31)] * 3, ids=[f"n{i}" for i in range(6)])  # new segments: the store's 4
    assert {sv.view.words.config.topk for sv in old.index.view.segments} == {4} and results(old, QUERIES)
    # asked for 2: every saved layer is rebuilt at 2 (a warning says so), and new ones are made at 2
    with pytest.warns(UserWarning, match="word_topk 4, not 2"):
        two = FwPKMStore.load(tmp_path / "s", model=small_model, word_topk=2)
    fresh = word_store(small_model)  # the default, 2: the same documents in one add call, so the same segments
    fresh.add_texts(docs, ids=ids)
    assert_same_words(word_tensors(fresh), word_tensors(two))
    assert results(two, QUERIES) == results(fresh, QUERIES) != results(store, QUERIES)
    two.add_texts([entry(40)], ids=["n40"])
    assert {sv.view.words.config.topk for sv in two.index.view.segments} == {2}
    for s in (store, old, two, fresh):
        s.close()


def test_a_store_saved_without_the_layer_loads_off_or_rebuilds_it(small_model, tmp_path):
    docs = [entry(i) for i in range(12)] + [prose(150, 4)]  # the long one: chunks with a word context, split
    ids = [f"e{i}" for i in range(13)]
    plain = FwPKMStore(model=small_model, chunk_tokens=CHUNK, segment_tokens=SEG, word_layer=False)
    plain.add_texts(docs, ids=ids)
    manifest = json.loads(Path(plain.save(tmp_path / "old")).read_text())
    assert "word_layer" not in manifest["settings"]  # the manifest of earlier versions
    same = FwPKMStore.load(tmp_path / "old", model=small_model)
    assert not same.settings.word_layer and results(same, QUERIES) == results(plain, QUERIES)
    # asked for the layer: rebuilt from each segment's stored chunks, with a warning; one add call of the same
    # documents gives each segment the same chunks in the same order, so the same layers as a store built with it
    with pytest.warns(UserWarning, match="saved without a word layer: rebuilding it"):
        upgraded = FwPKMStore.load(tmp_path / "old", model=small_model, word_layer=True)
    built = word_store(small_model)
    built.add_texts(docs, ids=ids)
    assert_same_words(word_tensors(built), word_tensors(upgraded))
    assert results(upgraded, QUERIES) == results(built, QUERIES)
    # the rebuilt sealed segments get new folders: the next save writes them with their layer, and loads clean
    old_folders = {e["folder"] for e in manifest["segments"] if e["sealed"]}
    new = json.loads(Path(upgraded.save(tmp_path / "old")).read_text())
    assert not old_folders & {e["folder"] for e in new["segments"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = FwPKMStore.load(tmp_path / "old", model=small_model)
    assert again.settings.word_layer and results(again, QUERIES) == results(built, QUERIES)
    for s in (plain, same, upgraded, built, again):
        s.close()


def test_each_chunk_also_writes_the_last_words_of_the_chunk_before_it(small_model):
    """word_layer.WORD_CONTEXT: a chunk's units are its core's words and the last 8 words of the previous core of
    its document (none for a document's first chunk), checked against a layer written from those units by hand."""
    assert chunk_word_texts(["a b, c!", "d e", "f"], context=2) == ["a b, c!", "b c d e", "d e f"]
    assert chunk_word_texts(["a b"], context=0) == ["a b"] and chunk_word_texts([]) == []
    store = word_store(small_model, segment_tokens=None)
    store.add_texts([prose(300, 11), entry(1), prose(200, 12)], ids=["long", "e1", "other"])
    index = store.index.segments[0].index
    rows = index.docs.db.execute("SELECT chunk_id, doc_id, text, core_offset FROM chunks ORDER BY chunk_id").fetchall()
    assert sum(r[1] == "long" for r in rows) >= 4
    by_hand, previous = [], {}
    for _, doc, text, off in rows:
        tail = re.findall(r"\w+", previous.get(doc, ""))[-WORD_CONTEXT:]
        by_hand.append(" ".join(tail + re.findall(r"\w+", text[off:])))
        previous[doc] = text[off:]
    reference = WordLayer(topk=store.settings.word_topk)
    reference.add(by_hand, [r[0] for r in rows])
    got, want = index.view.words.table.tensors(), reference.table.tensors()
    assert all(torch.equal(got[k], want[k]) for k in want)
    store.close()


# ---- 5. settings and the Ray store ---------------------------------------------------------------------------------
def test_word_settings_are_validated(small_model):
    assert StoreSettings().word_layer is True and StoreSettings().word_weight == DEFAULT_WORD_WEIGHT == 8.0
    assert StoreSettings().store_dict()["word_layer"] is True
    assert "word_layer" not in StoreSettings(word_layer=False).store_dict()  # the manifest of earlier versions
    # a manifest without the field (earlier versions, or word_layer=False) describes a store without the layer
    assert StoreSettings.from_dict(StoreSettings(word_layer=False).store_dict()).word_layer is False
    assert StoreSettings.from_dict(StoreSettings().store_dict()) == StoreSettings()
    for bad in (0, -1.0, float("nan"), float("inf"), "8", True):
        with pytest.raises(ConfigError, match="word_weight"):
            StoreSettings(word_weight=bad)
    with pytest.raises(ConfigError, match="word_layer"):
        StoreSettings(word_layer=1)
    with pytest.raises(ConfigError, match="merge must be 'raw'"):
        StoreSettings(word_layer=True, merge="rrf")
    with pytest.raises(ConfigError, match="needs word_layer=False"):
        StoreSettings(merge="max")  # the default has the layer
    assert StoreSettings(merge="max", word_layer=False).merge == "max"
    store = word_store(small_model)
    store.add_texts([entry(0)], ids=["e0"])
    with pytest.raises(InputError, match="only be 'raw'"):
        store.index.search("lantern", 3, strategy="max")
    assert store.index.search("lantern", 3, words=False, strategy="max")  # the lexical ranking: any strategy
    plain = FwPKMStore(model=small_model, chunk_tokens=CHUNK, word_layer=False)
    with pytest.raises(InputError, match="word_layer=True"):
        plain.index.search("lantern", 3, words=True)
    with pytest.raises(InputTypeError, match="words"):
        store.index.search("lantern", 3, words="yes")
    plain.close()
    assert store.similarity_search("lantern", k=0) == []
    store.close()
