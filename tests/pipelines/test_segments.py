"""Issue 14, segments: a store as an ordered list of bounded memories (pipelines/segments.py), with a tiny model
and a small `segment_tokens` so that several segments form in a second. References: each segment's own
MemoryIndex ranked alone (`retrieval.rank_view`, with the question's idf over the whole store) and merged by
hand, the documents as given, and a single memory fed the same parts."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from fwpkm_rag.errors import InputError, InputTypeError
from fwpkm_rag.pipelines import FwPKMStore, MemoryIndex
from fwpkm_rag.pipelines.retrieval import hits_of, rank_chunks, rank_view
from test_reliability import assert_same, fingerprint

torch.set_num_threads(1)
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
SEG = 200  # segment_tokens of these tests
CHUNK = 16


def prose(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


COLOURS = ("amber", "cobalt", "saffron", "umber", "viridian", "magenta", "ochre", "teal", "crimson", "indigo",
           "sepia", "cerise", "jade", "mauve", "ivory", "olive", "coral", "lilac", "russet", "azure", "scarlet")


def needle(i: int) -> str:
    return f"Vault {COLOURS[i]} opens with code {1000 + 7 * i}."


def needle_query(i: int) -> str:
    return f"Vault {COLOURS[i]} opens with code"


def segmented(model, **over) -> FwPKMStore:
    """A store of small segments ranking by its lexical memories alone (word_layer=False): this file holds the
    segment machinery and the merge to by-hand references of the lexical ranking; the word layer, on by default,
    and its fusion are tested in test_store_word_layer.py."""
    return FwPKMStore(model=model, **{"chunk_tokens": CHUNK, "segment_tokens": SEG, "word_layer": False, **over})


def part_texts(store: FwPKMStore, doc_id: str) -> list[str]:
    """The text of each part of a document, read from the segments the catalog names."""
    out = []
    for segment_id in store.index.view.catalog[doc_id]:
        (segment,) = [s for s in store.index.segments if s.id == segment_id]
        ((_, text, _),) = segment.index.docs.get_documents([doc_id])
        out.append(text)
    return out


def store_token_weight(store: FwPKMStore, query: str) -> torch.Tensor:
    """The question tokens' idf over the whole store, by hand: chunks and per-token chunk counts summed over
    the segments, log(1 + (N + 1) / (df + 1)), the leading eos 0."""
    ids = [store.index.tok.eos_id] + store.index.tok.encode(query)
    n = sum(s.index.view.next_chunk for s in store.index.segments)
    df = [sum(int(s.index.view.chunk_df[t]) for s in store.index.segments) for t in ids]
    weight = torch.tensor([math.log1p((n + 1) / (d + 1)) for d in df], dtype=torch.float32)
    weight[0] = 0.0
    return weight


def expected_merge(store: FwPKMStore, query: str, k: int) -> list[tuple]:
    """The raw-score merge by hand: every segment's own ranking (its MemoryIndex alone, one forward over its
    memory, the question tokens weighted by the store-wide idf), positive scores first by score (ties: segment
    order, then rank), then the padding."""
    entries = []
    for pos, segment in enumerate(store.index.segments):
        for hit in segment_ranking(store, segment, query, k):
            entries.append((not hit.score > 0, -hit.score, pos, hit.rank, segment.id, hit.chunk_id, hit.doc_id))
    entries.sort()
    return [(e[4], e[5], e[6]) for e in entries[:k]]


def segment_ranking(store: FwPKMStore, segment, query: str, k: int) -> list:
    """One segment's own top k as Hits: its MemoryIndex alone (one forward over its memory), the question's
    tokens weighted by the store-wide idf."""
    ranked = rank_view(segment.index, segment.index.view, query, k, store_token_weight(store, query))
    return hits_of(segment.index, segment.index.view, None, ranked, segment=segment.id)


# ---- 1. a document across segments ------------------------------------------------------------------------------
def test_a_document_spanning_three_segments_round_trips_exactly(small_model):
    store = segmented(small_model)
    text = prose(330, 1)  # ~ 450 tokens: three segments of at most 200
    meta = {"source": "long.txt", "n": [1, 2]}
    assert store.add_texts([text], ids=["long"], metadatas=[meta]) == ["long"]
    parts = store.index.view.catalog["long"]
    assert len(parts) >= 3 and list(parts) == [s.id for s in store.index.segments]
    assert [s.sealed for s in store.index.segments] == [True] * (len(parts) - 1) + [False]
    pieces = part_texts(store, "long")
    assert "".join(pieces) == text and all(p and p in text for p in pieces)  # exact substrings, in order
    (doc,) = store.get_by_ids(["long"])
    assert doc.page_content == text and doc.metadata == meta and len(store) == 1
    tok = small_model.get_tokenizer()
    for segment in store.index.segments:
        assert segment.index.tokens_ingested <= SEG
        assert segment.index.n_live_chunks == segment.index.provenance.n_chunks > 0
    # split at chunk boundaries: the chunks are exactly the whole document's chunks
    n_chunks = -(-len(tok.encode(text)) // CHUNK)
    assert store.index.n_live_chunks == n_chunks
    hits = store.search_with_provenance(text[600:700], k=n_chunks + 5)
    assert len(hits) == n_chunks and all(h.metadata == meta and h.doc_id == "long" for h in hits)
    assert {h.segment for h in hits} == set(parts)
    assert sorted(h.text for h in hits) == sorted(
        t for s in store.index.segments for t in (r.text for r in s.index.docs.get_chunks(range(s.index.next_chunk)).values()))


# ---- 2. the merge -----------------------------------------------------------------------------------------------
def test_a_needle_in_every_segment_is_found_through_the_merge(small_model):
    store = segmented(small_model)
    for i in range(5):  # each document fills most of a segment: one needle per segment
        store.add_texts([prose(60, 10 + i) + " " + needle(i) + " " + prose(40, 20 + i)], ids=[f"d{i}"])
    assert len(store.index.segments) >= 4
    holders = {f"d{i}": store.index.view.catalog[f"d{i}"] for i in range(5)}
    assert len({p for parts in holders.values() for p in parts}) >= 4  # needles in different segments
    retriever = store.as_retriever(k=5)
    for i in range(5):
        q = needle_query(i)
        hits = store.search_with_provenance(q, k=5)
        assert hits[0].doc_id == f"d{i}" and COLOURS[i] in hits[0].text and hits[0].segment in holders[f"d{i}"], [(h.doc_id, h.score) for h in hits]
        assert [(h.segment, h.chunk_id, h.doc_id) for h in hits] == expected_merge(store, q, 5)
        assert [h.rank for h in hits] == list(range(5))
        doc = retriever.invoke(q)[0]
        assert doc.metadata["fwpkm"]["segment"] == hits[0].segment and doc.metadata["fwpkm"]["chunk_id"] == hits[0].chunk_id
    # every live chunk, once, when k is large; k = 0 nothing
    all_hits = store.search_with_provenance("secret", k=10_000)
    assert len(all_hits) == store.index.n_live_chunks == len({(h.segment, h.chunk_id) for h in all_hits})
    assert store.similarity_search("secret", k=0) == []
    # the strategies of merge.py: the store's `merge` setting, applied to the segments' own rankings
    from fwpkm_rag.pipelines.merge import merge_hits

    q = "Vault saffron opens with code"
    per_segment = [[(s.id, h) for h in segment_ranking(store, s, q, 3)] for s in store.index.segments]
    for strategy in ("raw", "max", "rrf"):
        other = FwPKMStore(model=small_model, _index=store.index)
        hits = other.index.search(q, k=3, strategy=strategy)
        by_chunk = {(sid, h.chunk_id): sid for seg in per_segment for sid, h in seg}
        ref = merge_hits([[h for _, h in seg] for seg in per_segment], 3, strategy)
        ref_ids = []
        for h in ref:  # which segment each reference hit came from
            (sid,) = [sid for seg in per_segment for sid, x in seg if x.chunk_id == h.chunk_id and x.text == h.text
                      and x.score == h.score]
            ref_ids.append((sid, h.chunk_id))
        assert [(h.segment, h.chunk_id) for h in hits] == ref_ids and by_chunk


def test_question_idf_counts_the_whole_store_whatever_its_segments(small_model):
    """Documents of one chunk (never split): the store-wide idf counts (N, df) equal one memory's over the
    same documents, and every segment's ranking uses those weights (not its own segment's)."""
    from fwpkm_rag.pipelines.retrieval import idf_counts, store_idf
    from fwpkm_rag.pipelines.segments import rank_segments

    docs = [needle(i % len(COLOURS)) + " " + prose(2, i) for i in range(45)]  # one chunk each: never split
    store, one = segmented(small_model), FwPKMStore(model=small_model, chunk_tokens=CHUNK, word_layer=False)
    store.add_texts(docs)
    one.add_texts(docs)
    assert len(store.index.segments) >= 3 and len(one.index.segments) == 1
    assert all(len(parts) == 1 for parts in store.index.view.catalog.values())  # no document was split
    for q in (needle_query(3), "golf hotel golf", "zulu"):
        ids = [store.index.tok.eos_id] + store.index.tok.encode(q)
        n, df = idf_counts([s.index.view for s in store.index.segments], ids)
        n1, df1 = idf_counts([one.index.segments[0].index.view], ids)
        assert n == n1 and df.tolist() == df1.tolist()
        assert torch.allclose(store_idf([s.index.view for s in store.index.segments], ids),
                              store_token_weight(store, q))
        # the fast path ranks every segment with the store-wide weights: as the by-hand reference does
        fast = rank_segments(store.index.view.segments, q, 8)
        for segment, ranked in zip(store.index.segments, fast):
            ref = segment_ranking(store, segment, q, 8)
            assert ranked.chosen == [h.chunk_id for h in ref]
            assert ranked.scores == pytest.approx([h.score for h in ref], rel=1e-4, abs=1e-6)
    store.index.close()
    one.index.close()


def test_one_segment_ranks_exactly_like_the_memory_index_alone(small_model):
    # default segment_tokens: one segment here; the lexical ranking (the word layer's fusion: test_store_word_layer)
    store = FwPKMStore(model=small_model, chunk_tokens=CHUNK, word_layer=False)
    store.add_texts([prose(200, 3), needle(7), prose(150, 4)], ids=["a", "n", "b"])
    (segment,) = store.index.segments
    for q in (needle_query(7), "golf hotel", ""):
        ref = rank_chunks(segment.index, q, 6)
        got = store.search_with_provenance(q, k=6, matched_slots=0)
        assert [(h.chunk_id, h.doc_id, h.text, h.score, h.rank) for h in got] == \
            [(h.chunk_id, h.doc_id, h.text, h.score, h.rank) for h in ref]


# ---- 3. delete and replace --------------------------------------------------------------------------------------
def test_delete_and_replace_reach_every_part(small_model):
    store = segmented(small_model)
    text = prose(330, 1) + " The walrus sleeps at noon."
    store.add_texts([needle(1), text, needle(2)], ids=["n1", "long", "n2"])
    parts = store.index.view.catalog["long"]
    assert len(parts) >= 3
    # replace: a new text under the same id; the old parts are gone from every segment
    store.add_texts(["The vault password is pelican."], ids=["long"])
    assert store.get_by_ids(["long"])[0].page_content == "The vault password is pelican."
    assert list(store.index.view.catalog) == ["n1", "n2", "long"]  # a replaced document moves to the end
    hits = store.similarity_search("walrus sleeps at noon", k=1000)
    assert all("walrus" not in d.page_content for d in hits) and {d.id for d in hits} == {"n1", "n2", "long"}
    sealed = [s for s in store.index.segments if s.sealed and s.id in parts]
    assert sealed and all("long" in s.tombstones for s in sealed)
    # delete: every part
    store.delete(["long", "missing"])
    assert store.get_by_ids(["long"]) == [] and len(store) == 2
    assert {d.id for d in store.similarity_search("vault password pelican", k=1000)} == {"n1", "n2"}
    assert store.index.n_live_chunks == sum(s.index.docs.n_chunks() for s in store.index.segments)
    # a sealed segment left with nothing live is dropped
    assert all(s.index.docs.n_documents() > 0 for s in store.index.segments if s.sealed)
    store.delete()
    assert len(store) == 0 and store.similarity_search("secret", k=5) == []
    store.add_texts([needle(3)], ids=["n3"])
    assert store.similarity_search(needle_query(3), k=1)[0].id == "n3"


# ---- 4. compaction ----------------------------------------------------------------------------------------------
def test_compact_rebuilds_only_the_sparse_segments(small_model, tmp_path):
    store = segmented(small_model)
    texts = {f"d{i}": prose(35, 30 + i) + (f" {needle(i)}" if i % 3 == 0 else "") for i in range(14)}
    store.add_texts(list(texts.values()), ids=list(texts))
    assert len(store.index.segments) >= 3
    store.save(tmp_path / "s")
    first = store.index.segments[0]
    victims = [d for d, parts in store.index.view.catalog.items() if parts == (first.id,)]
    keep = victims[-1]
    store.delete(victims[:-1])  # most of the first segment
    before = {s.id: s for s in store.index.segments}
    live = {s.id: s.index.n_live_chunks / s.index.provenance.n_chunks for s in store.index.segments}
    others = min(v for sid, v in live.items() if sid != first.id)
    assert live[first.id] < others
    assert store.compact((live[first.id] + others) / 2) == [first.id]
    after = {s.id: s for s in store.index.segments}
    assert list(after) == list(before)
    for sid, segment in after.items():
        if sid == first.id:
            assert segment.index is not before[sid].index and segment.uid != before[sid].uid
            assert segment.index.n_live_chunks == segment.index.provenance.n_chunks  # no dead chunks left
            assert segment.tombstones == ()
            # rebuilt from its stored parts: the same memory as a fresh index fed those parts
            ref = MemoryIndex(small_model, store.settings)
            ref.add(before[sid].index.iter_documents())
            for a, b in zip(segment.index.view.memory, ref.view.memory):
                assert torch.equal(a.values.rows, b.values.rows) and torch.equal(a.keys, b.keys)
        else:
            assert segment is before[sid]  # untouched: the same record, index and memory
    assert [d.id for d in store.get_by_ids(list(texts))] == [d for d in texts if d not in victims[:-1]]
    assert store.get_by_ids([keep])[0].page_content == texts[keep]
    for i in range(0, 14, 3):
        if f"d{i}" not in victims[:-1]:
            assert store.similarity_search(needle_query(i), k=1)[0].id == f"d{i}"
    # on disk: the untouched sealed segments' folders are reused, the rebuilt one gets a new folder
    stats = {p.name: p.stat() for p in (tmp_path / "s").iterdir() if p.name.startswith("seg-")}
    store.save(tmp_path / "s")
    now = {p.name: p.stat() for p in (tmp_path / "s").iterdir() if p.name.startswith("seg-")}
    for segment in store.index.segments:
        name = f"seg-{segment.id:06d}-{segment.uid}"
        if segment.sealed and segment.id != first.id:
            assert name in stats and (now[name].st_ino, now[name].st_mtime_ns) == (stats[name].st_ino, stats[name].st_mtime_ns)
        elif segment.sealed:
            assert name not in stats and name in now
    assert not any(n.startswith(f"seg-{first.id:06d}-{before[first.id].uid}") for n in now)  # the old one is gone
    with pytest.raises(InputError):
        store.compact(1.5)
    with pytest.raises(InputTypeError):
        store.compact("half")
    assert store.compact(0.0) == []
    store.rebuild()  # every segment; still the same documents
    assert [d.id for d in store.get_by_ids(list(texts))] == [d for d in texts if d not in victims[:-1]]


# ---- 5. persistence ---------------------------------------------------------------------------------------------
QUERIES = [needle_query(i) for i in range(0, 14, 3)] + ["golf hotel", ""]


def results(store: FwPKMStore) -> list:
    return [[(h.segment, h.chunk_id, h.doc_id, h.text, round(h.score, 4)) for h in store.search_with_provenance(q, k=4)]
            for q in QUERIES]


def test_save_load_round_trip_and_incremental_saves(small_model, tmp_path, monkeypatch):
    import fwpkm_rag.pipelines.persistence as persistence

    store = segmented(small_model)
    texts = {f"d{i}": prose(35, 30 + i) + (f" {needle(i)}" if i % 3 == 0 else "") for i in range(14)}
    texts["long"] = prose(330, 2)
    store.add_texts(list(texts.values()), ids=list(texts), metadatas=[{"i": d} for d in texts])
    store.delete(["d1"])  # a tombstone in a sealed segment, kept in the manifest
    path = tmp_path / "s"
    written = []
    real = persistence.write_snapshot
    monkeypatch.setattr(persistence, "write_snapshot", lambda index, folder, fp: written.append(folder) or real(index, folder, fp))
    manifest_path = Path(store.save(path))
    n_segments = len(store.index.segments)
    assert len(written) == n_segments >= 4
    manifest = json.loads(manifest_path.read_text())
    assert (path / "CURRENT").read_text().strip() == manifest_path.name and manifest["version"] == 2
    assert [e["id"] for e in manifest["segments"]] == [s.id for s in store.index.segments]
    assert any("d1" in e["tombstones"] for e in manifest["segments"])
    loaded = FwPKMStore.load(path, model=small_model)
    assert results(loaded) == results(store)
    assert [(s.id, s.sealed, s.uid, s.tombstones) for s in loaded.index.segments] == \
        [(s.id, s.sealed, s.uid, s.tombstones) for s in store.index.segments]
    assert loaded.index.view.catalog == store.index.view.catalog and len(loaded) == len(store)
    assert [(d.id, d.page_content, d.metadata) for d in loaded.get_by_ids(list(texts))] == \
        [(d, t, {"i": d}) for d, t in texts.items() if d != "d1"]
    assert loaded.settings == store.settings
    # incremental: a second save writes only the open segment; sealed folders are not touched
    sealed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()
              if p.name.startswith("seg-") and p.name.count("-") == 2}
    assert len(sealed) == n_segments - 1
    written.clear()
    store.add_texts(["A short late note."], ids=["late"])  # the open segment only
    second = Path(store.save(path))
    assert len(written) == 1
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()
            if p.name.startswith("seg-") and p.name.count("-") == 2} == sealed
    names = sorted(p.name for p in path.iterdir())
    assert not manifest_path.exists() and second.exists()  # the old manifest, catalog, open folder: removed
    assert len([n for n in names if n.startswith("seg-")]) == n_segments
    assert sorted(n for n in names if not n.startswith("seg-")) == sorted(
        ["CURRENT", second.name, json.loads(second.read_text())["catalog"]["file"]])
    # a loaded store keeps ingesting exactly like the original (also into new segments)
    loaded2 = FwPKMStore.load(path, model=small_model)
    for s in (store, loaded2):
        s.add_texts([prose(300, 9) + " " + needle(20)], ids=["more"])
    assert results(loaded2) == results(store)
    assert "more" in {d.id for d in loaded2.similarity_search(needle_query(20), k=5)}
    for s in (store, loaded, loaded2):
        s.close()


def test_a_single_memory_store_of_the_previous_format_loads_as_one_segment(small_model, tmp_path):
    from fwpkm_rag.pipelines.persistence import save_index

    old = MemoryIndex(small_model, chunk_tokens=CHUNK)  # what FwPKMStore held before segments
    docs = [("a", prose(300, 5), {"s": 1}), ("n", needle(3), {"s": 2}), ("b", prose(100, 6), {})]
    old.add(docs)
    snap = Path(save_index(old, tmp_path / "old"))  # the version-1 layout: CURRENT -> snap-*/
    assert snap.name.startswith("snap-") and (tmp_path / "old" / "CURRENT").read_text().strip() == snap.name
    store = FwPKMStore.load(tmp_path / "old", model=small_model, segment_tokens=SEG)
    assert len(store.index.segments) == 1 and not store.index.segments[0].sealed
    assert [(d.id, d.page_content, d.metadata) for d in store.get_by_ids(["a", "n", "b"])] == docs
    for q in (needle_query(3), "golf hotel"):
        assert [(h.chunk_id, h.doc_id, h.score) for h in store.search_with_provenance(q, k=4)] == \
            [(h.chunk_id, h.doc_id, h.score) for h in rank_chunks(old, q, 4)]
    # over its segment size already: the next document opens a new segment; the next save writes version 2
    store.add_texts([needle(9)], ids=["late"])
    assert [s.sealed for s in store.index.segments] == [True, False]
    store.save(tmp_path / "old")
    assert not any(p.name.startswith("snap-") for p in (tmp_path / "old").iterdir())
    again = FwPKMStore.load(tmp_path / "old", model=small_model)
    assert results(again) == results(store) and len(again) == 4


# ---- 6. atomic calls across segments ----------------------------------------------------------------------------
def test_a_failure_mid_call_rolls_back_every_segment(small_model, monkeypatch):
    store = segmented(small_model)
    store.add_texts([prose(330, 1), needle(1), prose(50, 3)], ids=["long", "n1", "short"])
    assert len(store.index.segments) >= 3
    before = fingerprint(store)

    def failing():  # replaces a document with parts in three segments, fills new segments, then fails
        yield prose(500, 7)
        yield needle(2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_texts(failing(), ids=["long", "x", "y"])
    assert_same(before, fingerprint(store))
    with pytest.raises(InputTypeError):
        store.add_texts([prose(400, 8), b"bytes"], ids=["n1", "z"])
    assert_same(before, fingerprint(store))
    # a failure in phase one (the last flush of a segment the call created)
    real = MemoryIndex.prepare_write

    def prepare(self, bar=None):
        if self.next_seq and self is store.index.segments[-1].index:
            return real(self, bar)
        raise RuntimeError("disk full")

    monkeypatch.setattr(MemoryIndex, "prepare_write", prepare)
    with pytest.raises(RuntimeError, match="disk full"):
        store.add_texts([prose(450, 9)], ids=["new"])
    assert_same(before, fingerprint(store))
    # a delete failing in its second segment: the first is untouched too
    real_delete = MemoryIndex.delete
    calls = []

    def delete(self, doc_ids=None):
        calls.append(self)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real_delete(self, doc_ids)

    monkeypatch.setattr(MemoryIndex, "delete", delete)
    with pytest.raises(RuntimeError, match="boom"):
        store.delete(["long"])
    assert_same(before, fingerprint(store))
    monkeypatch.undo()
    store.delete(["long"])
    assert store.get_by_ids(["long"]) == [] and len(store) == 2


def test_readers_never_see_half_a_call_over_segments(small_model):
    import threading

    store = segmented(small_model, segment_tokens=120)
    store.add_texts([needle(0)], ids=["base"])
    errors, seen = [], []
    done = threading.Event()
    tok = small_model.get_tokenizer()
    batches = {b: {f"b{b}-{j}": prose(40 + 10 * j, 100 * b + j) for j in range(3)} for b in range(5)}
    n_chunks = {i: -(-len(tok.encode(t)) // CHUNK) for batch in batches.values() for i, t in batch.items()}
    n_chunks["base"] = 1

    def reader():
        while not done.is_set():
            try:
                docs = store.similarity_search("alpha bravo", k=10_000)
                ids = [d.id for d in docs]
                for b in {i.split("-")[0] for i in ids if "-" in i}:
                    assert {f"{b}-{j}" for j in range(3)} <= set(ids), sorted(set(ids))
                assert all(ids.count(i) == n_chunks[i] for i in set(ids))  # every part of a document, or none
                got = store.get_by_ids(sorted(set(ids)))
                assert all(d.page_content == batches[int(d.id[1])][d.id] for d in got if d.id != "base")
                seen.append(len(ids))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for b, batch in batches.items():
        store.add_texts(list(batch.values()), ids=list(batch))
        if b == 2:
            store.delete(list(batches[1]))
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert seen and len(store.index.segments) >= 4 and len(store) == 1 + 4 * 3


def test_segment_settings_are_validated(small_model):
    from fwpkm_rag.errors import ConfigError
    from fwpkm_rag.pipelines import StoreSettings
    from fwpkm_rag.pipelines.settings import DEFAULT_SEGMENT_TOKENS

    assert StoreSettings().segment_tokens == DEFAULT_SEGMENT_TOKENS and StoreSettings().merge == "raw"
    assert StoreSettings(segment_tokens=None).segment_tokens is None
    for bad in (0, 1, 2.5, True, "100"):
        with pytest.raises(ConfigError, match="segment_tokens"):
            StoreSettings(segment_tokens=bad)
    for bad in ("mean", None, 1):
        with pytest.raises(ConfigError, match="merge"):
            StoreSettings(merge=bad)
    unbounded = FwPKMStore(model=small_model, chunk_tokens=CHUNK, segment_tokens=None)
    unbounded.add_texts([prose(600, 1)] * 2, ids=["a", "b"])
    assert len(unbounded.index.segments) == 1


def test_info_prints_segments_and_totals(small_model, tmp_path, capsys):
    from fwpkm_rag.cli import main

    store = segmented(small_model)
    store.add_texts([prose(330, 1), needle(1)], ids=["long", "n1"])
    store.delete(["n1"])
    store.save(tmp_path / "s")
    model_dir = tmp_path / "model"
    small_model.save_pretrained(model_dir)
    assert main(["info", "--store", str(tmp_path / "s"), "--model", str(model_dir), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    stats = store.index.segment_stats()
    for s in stats:
        row = next(line for line in lines if line.split()[0] == str(s["id"]))
        assert row.split()[1:6] == [("yes" if s["sealed"] else "no"), str(s["tokens"]), str(s["parts"]),
                                    str(s["live_chunks"]), str(s["chunks"])]
    total = next(line for line in lines if line.startswith("total"))
    on_disk = sum(f.stat().st_size for f in (tmp_path / "s").rglob("*") if f.is_file())
    assert f"{on_disk:,}" in total and f"{len(store)} documents" in total and f"{len(stats)} segments" in total
    assert main(["info", "--store", str(tmp_path / "nothing")]) == 1
    torch.set_num_threads(1)


# ---- answers from memory read the segment the question belongs to ------------------------------------------------
def test_answers_from_memory_read_the_segment_that_ranks_first(small_model):
    store = segmented(small_model)
    store.add_texts([prose(120, 30) + " " + needle(3) + " " + prose(60, 31)], ids=["a"])
    store.add_texts([prose(200, 32), prose(200, 33)], ids=["b", "c"])
    segments = store.index.view.segments
    assert len(segments) >= 3
    top = store.index.search(needle_query(3), 1)[0]
    (owner,) = [sv for sv in segments if sv.id == top.segment]
    assert needle(3)[:12] in top.text and owner is not segments[-1]  # routing matters: not the newest segment
    routed = store.index.memory_for(needle_query(3))
    assert owner.sealed and owner.index.sealed  # its states live on disk: read back, the same to the bit
    for got, saved in zip(routed, owner.index.view.memory.load().memory):
        assert torch.equal(got.keys, saved.keys) and torch.equal(got.values.rows, saved.values.rows)
        assert torch.equal(got.values.slot_map, saved.values.slot_map)
    # a one-segment store answers from its only memory without retrieving
    single = segmented(small_model, segment_tokens=None)
    single.add_texts([needle(3)], ids=["n"])
    assert single.index.memory_for("anything at all") is single.index.view.segments[0].view.memory


# ---- the fast path (first-layer queries once) against a forward per segment -------------------------------------
def test_the_fast_path_reads_and_ranks_like_a_forward_per_segment(small_model):
    from fwpkm_rag.pipelines.retrieval import check_query, first_layer_queries, reads_against, read_question

    store = segmented(small_model)
    store.add_texts([prose(140, 40 + i) + " " + needle(i) + " " + prose(30, 50 + i) for i in range(4)],
                    ids=[f"d{i}" for i in range(4)])
    segments = store.index.view.segments
    assert len(segments) >= 3 and segments[0].index.sealed and not segments[-1].index.sealed
    config = small_model.fwpkm_modules[0].config
    long_question = prose(100, 60)  # longer than the memory's chunk (64 tokens): read in pieces, like the forward
    for query in [needle_query(i) for i in range(4)] + ["zulu alpha", long_question]:
        ids = check_query(store.index.tok, query, 1000)
        q = first_layer_queries(small_model, ids)
        for sv in segments:  # sealed ones read back their memories from disk for the reference forward
            slots_ref, weights_ref = read_question(sv.index, query, sv.view).reads[0]
            slots, weights = reads_against(q, sv.view.keys[0], config)
            assert torch.equal(slots, slots_ref)  # exactly the slots a forward over that memory reads
            torch.testing.assert_close(weights, weights_ref, rtol=1e-6, atol=1e-7)
        fast, slow = store.index.search(query, 6), store.index.search_reference(query, 6)
        assert [(h.segment, h.chunk_id) for h in fast] == [(h.segment, h.chunk_id) for h in slow]
        assert [h.score for h in fast] == pytest.approx([h.score for h in slow], rel=1e-5)
    for i in range(4):  # and the ranking finds each needle's document
        assert store.similarity_search(needle_query(i), 1)[0].id == f"d{i}"


def test_a_sealed_segment_keeps_in_ram_only_what_retrieval_reads(small_model):
    index = MemoryIndex(small_model, chunk_tokens=CHUNK)
    index.add([("a", prose(200, 70) + " " + needle(2) + " " + prose(50, 71), {"n": 1}), ("b", prose(90, 72), None)])
    before = [(m.keys.clone(), m.values.rows.clone(), m.values.slot_map.clone()) for m in index.view.memory]
    ranked = rank_chunks(index, needle_query(2), 5)
    whole = index.nbytes()
    index.seal(1)
    assert index.sealed and index.cache is None and index.view.provenance.n_layers == 1
    assert index.nbytes() < whole / 3  # sub-keys, one packed layer, int32 token counts
    for (keys, rows, slot_map), m in zip(before, index.view.memory):  # read back from disk, exactly as written
        assert torch.equal(m.keys, keys) and torch.equal(m.values.rows, rows) and torch.equal(m.values.slot_map, slot_map)
    after = rank_chunks(index, needle_query(2), 5)  # the reference path, over the packed table and the spill
    assert [h.chunk_id for h in after] == [h.chunk_id for h in ranked]
    assert [h.score for h in after] == pytest.approx([h.score for h in ranked], rel=1e-6)
    with pytest.raises(RuntimeError, match="sealed"):
        index.add([("c", "more text", None)])
    index.delete(["b"])  # deletes still work
    assert index.docs.doc_ids() == ["a"] and index.n_live_chunks < len(ranked) + 100
    folder = index.view.memory.folder
    assert os.path.isdir(folder)
    index.docs.close()
    del index
    import gc

    gc.collect()
    assert not os.path.exists(folder)  # the spilled states go with the last reference


def test_a_loaded_sealed_segment_links_its_saved_memory_files(small_model, tmp_path):
    """Loading does not write a sealed segment's memory states again: its private spill holds hard links to the
    saved files (same inode), and the states read back equal the saved store's, also after the saved folder is
    gone (a later save may remove it)."""
    import shutil

    store = segmented(small_model)
    store.add_texts([prose(120, 300 + i) + " " + needle(i) for i in range(4)], ids=[f"d{i}" for i in range(4)])
    assert sum(s.sealed for s in store.index.segments) >= 2
    store.save(tmp_path / "s")
    expected = {s.id: [m.values.rows.clone() for m in s.index.view.memory] for s in store.index.segments if s.sealed}
    loaded = FwPKMStore.load(tmp_path / "s", model=small_model)
    sealed = [s for s in loaded.index.segments if s.sealed]
    assert len(sealed) == len(expected)
    for segment in sealed:
        spill = segment.index.view.memory
        (saved,) = [p for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name.endswith(segment.uid)]
        for name in os.listdir(spill.folder):
            assert os.stat(os.path.join(spill.folder, name)).st_ino == os.stat(saved / name).st_ino
    shutil.rmtree(tmp_path / "s")
    for segment in sealed:
        got = [m.values.rows for m in segment.index.view.memory]  # read back from the links
        assert all(torch.equal(a, b) for a, b in zip(got, expected[segment.id]))
    assert loaded.search_with_provenance(needle_query(2), k=3)[0].doc_id == "d2"
    loaded.close()
    store.close()


def test_spill_folders_of_dead_processes_are_swept_once_per_process(small_model, monkeypatch):
    """A process killed with -9 never runs its finalizers: the next process that spills removes its folders
    (named by process id), and leaves those of live processes alone."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from fwpkm_rag.pipelines import index as index_module

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root, prefix = tempfile.gettempdir(), index_module.SPILL_PREFIX
    dead, live = os.path.join(root, f"{prefix}{gone.pid}-t"), os.path.join(root, f"{prefix}{os.getppid()}-t")
    os.makedirs(dead)
    os.makedirs(live)
    try:
        monkeypatch.setattr(index_module, "_swept", False)
        index = MemoryIndex(small_model, chunk_tokens=CHUNK)
        index.add([("a", prose(80, 5), None)])
        index.seal(1)
        assert not os.path.exists(dead) and os.path.isdir(live)
        assert os.path.basename(index.view.memory.folder).startswith(f"{prefix}{os.getpid()}-")
        os.makedirs(dead)
        index.close()
        other = MemoryIndex(small_model, chunk_tokens=CHUNK)
        other.add([("b", prose(80, 6), None)])
        other.seal(1)  # swept already in this process: not again
        assert os.path.isdir(dead)
        other.close()
    finally:
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def test_segments_ranked_on_threads_rank_as_on_one(small_model, monkeypatch):
    from fwpkm_rag.pipelines import segments as seg_module

    store = segmented(small_model, segment_tokens=120)
    store.add_texts([prose(100, 80 + i) + " " + needle(i) + " " + prose(20, 90 + i) for i in range(5)],
                    ids=[f"d{i}" for i in range(5)])
    views = store.index.view.segments
    assert len(views) >= 6
    monkeypatch.setattr(seg_module, "MIN_SEGMENTS_PER_THREAD", 1)  # split even this small store
    for query in (needle_query(1), needle_query(4), "alpha"):
        one = seg_module.rank_segments(views, query, 4, threads=1)
        three = seg_module.rank_segments(views, query, 4, threads=3)
        assert [r.chosen for r in three] == [r.chosen for r in one]  # every segment's own ranking, in order
        assert [r.scores for r in three] == [pytest.approx(r.scores, rel=1e-6) for r in one]
