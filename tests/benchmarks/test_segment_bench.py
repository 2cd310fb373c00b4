"""`fwpkm-rag bench segments` (issue 14): structure and sanity on tiny sizes, not figures.

The figures are the command's (docs/benchmarks.md, "Segments"); these tests check that the quick run goes end to
end and writes its files, that the simulated segments cut where they should and rank like one store when there
is one segment, and that the choice rules read the curve as documented.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

from fwpkm_rag.benchmarks import segments as S

needs_bm25 = pytest.mark.skipif(importlib.util.find_spec("rank_bm25") is None, reason="rank-bm25 not installed")

TINY = dict(lengths=(1024, 2048), items_per_length={1024: 1, 2048: 1}, distractors=2, capacity_loads=(0.0625,),
            capacity_queries=8, merge_segments={512: 2048}, merge_capacity_loads=(0.0625,),
            merge_capacity_segment=512, paraphrase_lengths=(1024,), paraphrase_items=1, paraphrase_segments=2,
            store_lengths=(2048,), store_distractors={2048: (2, 4)}, store_queries=3, store_capacity_loads=(0.0625,))


@needs_bm25
def test_quick_run_writes_every_part(tmp_path, small_model):
    res = S.run_segments_bench(out_dir=str(tmp_path), quick=True, threads=1, model=small_model, overrides=TINY,
                               segment_tokens=512)
    assert (tmp_path / "segments.md").is_file() and not (tmp_path / "segments.partial.json").exists()
    saved = json.loads((tmp_path / "segments.json").read_text())
    assert saved["meta"]["commit"] and saved["meta"]["machine"]

    needles = res["needles"]
    questions = {L: 1 + TINY["distractors"] for L in TINY["lengths"]}  # every needle of the one item is asked
    for L, n in questions.items():
        for s in ("fwpkm", "bm25"):
            assert sum(r["system"] == s and r["length_req"] == L for r in needles) == n
    # segments only where the haystack is at least merge_segments' length, one row set per strategy
    for st in ("raw", "max", "rrf"):
        rows = [r for r in needles if r["system"] == f"seg512-{st}"]
        assert {r["length_req"] for r in rows} == {2048} and len(rows) == questions[2048]
        assert all(r["segments"] >= 4 for r in rows)
    assert all(r["hit1"] <= r["hit5"] for r in needles)

    assert {r["system"] for r in res["merge_capacity"]} == {"fwpkm", "bm25", "seg512-raw", "seg512-max", "seg512-rrf"}
    assert {r["system"] for r in res["merge_paraphrase"]} == {"fwpkm", "bm25", "seg2x-raw", "seg2x-max", "seg2x-rrf"}
    assert all(r["segments"] == 2 for r in res["merge_paraphrase"] if r["system"].startswith("seg"))
    assert set(res["choice"]) >= {"needle_tokens", "capacity_tokens", "segment_tokens", "limited_by"}
    assert res["strategy"] in ("raw", "max", "rrf")
    assert isinstance(res["store"], list)  # measured when the segmented store exists, [] (and said so) otherwise
    if S.segmented_store_available():
        store = [r for r in res["store"] if r["system"].startswith("store-seg")]
        assert [r["distractors"] for r in store] == [2, 4] and {r["system"] for r in res["store"]} >= {"fwpkm", "bm25"}
        # the item with more distractors asks every one of its needles
        assert store[0]["queries"] == TINY["store_queries"] and store[1]["queries"] == 1 + 4
        assert all(r["ingest_tok_s"] > 0 for r in store)
        if "minilm-faiss-flat" in res["meta"]["systems"]:
            assert sum(r["system"] == "minilm-faiss-flat" for r in res["store"]) == 2
        cap = res["store_capacity"]
        assert S.store_name(512, TINY).endswith("+words")  # the store as a user gets it: word layer on
        assert {r["system"] for r in cap} == {"bm25", S.store_name(512, TINY)} and all(0 <= r["hit1"] <= 1 for r in cap)
        assert "Capacity: near-duplicate facts in the segmented store" in (tmp_path / "segments.md").read_text()
        assert store[0]["nbytes"] > 0
        assert store[0]["segments"] >= 3 and 0 < store[0]["sealed_bytes_per_token"] < store[0]["bytes_per_token"]
        assert store[0]["reference_p50_ms"] > 0 and store[0]["hit1"] <= store[0]["hit5"]
        assert sorted({x["segments"] for x in store[0]["replicas"]}) == list(S.QUICK["store_replicas"])
        assert {x["threads"] for x in store[0]["replicas"]} >= {1}
        assert "repeated (latency only)" in (tmp_path / "segments.md").read_text()


@needs_bm25
def test_word_layer_run_measures_the_store_with_its_word_layer(tmp_path, small_model):
    res = S.run_segments_bench(out_dir=str(tmp_path), quick=True, threads=1, model=small_model, overrides=TINY,
                               segment_tokens=512, parts=["store-capacity"], word_layer=True)
    assert {r["system"] for r in res["store_capacity"]} == {"bm25", f"store-seg{S.klabel(512)}+words"}
    assert all(r["segments"] >= 1 and 0 <= r["hit1"] <= 1 for r in res["store_capacity"])


def test_segments_cut_by_tokens_and_one_segment_ranks_like_one_store(small_model):
    from fwpkm_rag.data.needles import chunk_item, make_item

    item = make_item(2048, 0.5, 2, split="bench", seed=3, chunk_size=256)
    chunks = chunk_item(item).chunks
    tok = small_model.get_tokenizer()
    sizes = [len(tok.encode(c)) + 1 for c in chunks]

    seg = S.SegmentedSystem(small_model, 600)
    seg.add(chunks)
    firsts = [first for first, _ in seg.segments] + [len(chunks)]
    assert firsts[0] == 0 and len(seg) == len(chunks) and len(seg.segments) > 1
    for a, b in zip(firsts, firsts[1:]):
        assert sum(sizes[a:b]) <= 600 or b - a == 1  # a segment holds at most segment_tokens (or one chunk)
    assert seg.nbytes() > 0

    one = S.SegmentedSystem(small_model, 10 ** 9)
    one.add(chunks)
    ref = S.OneMemorySystem(small_model)
    ref.add(chunks)
    assert len(one.segments) == 1
    for q in (item.question, "an unrelated question about nothing"):
        want = [i for i, _ in ref.search(q, 5)]
        for st, got in one.search_all(q, 5).items():
            assert [i for i, _ in got] == want, st  # every strategy keeps one segment's order
    for s in (seg, one, ref):
        s.close()


def test_choice_rules():
    needles = [dict(system="fwpkm", length_req=L, hit5=h, hit1=h) for L, hits in
               ((32768, [1] * 100), (65536, [1] * 99 + [0]), (131072, [1] * 97 + [0] * 3), (262144, [1] * 100))
               for h in hits]
    cap = dict(retrieval=[dict(system="fwpkm", facts=F, tokens=20 * F, hit1=h)
                          for F, h in ((512, 1.0), (1024, 0.96), (2048, 0.8), (4096, 0.97))])
    ch = S.choose_segment_tokens(needles, cap)
    # needles stop at the first length under 99% (a later recovery does not count); capacity likewise
    assert ch["needle_tokens"] == 65536 and ch["capacity_tokens"] == 20480
    assert ch["segment_tokens"] == 16384 and ch["limited_by"] == "capacity"
    assert S.choose_segment_tokens(needles, {})["segment_tokens"] == 65536
    # a needle cut by a chunk boundary (BM25 misses those too) does not count against a length
    cut = [dict(system="fwpkm", length_req=32768, hit5=0, hit1=0, needle_chunks=2)]
    assert S.choose_segment_tokens(needles + cut, {})["needle_tokens"] == 65536

    res = dict(needles=[dict(system="seg16K-raw", hit5=1, hit1=1), dict(system="seg16K-rrf", hit5=0, hit1=0),
                        dict(system="seg16K-max", hit5=1, hit1=1)],
               merge_capacity=[dict(system="seg16K-raw", hit1=0.9, queries=10),
                               dict(system="seg16K-max", hit1=0.5, queries=10),
                               dict(system="seg16K-rrf", hit1=0.5, queries=10)])
    assert S.choose_strategy(res) == "raw"
    assert S.choose_strategy({}) is None
