"""benchmarks/chunk_semantic.py on synthetic embeddings (no MiniLM): the dev measures and the sentence reference."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fwpkm_rag.benchmarks.chunk_semantic import FlatSentences, dev_eval, flat_eval, recall
from fwpkm_rag.pipelines.chunk_semantic import DIM, ChunkSemanticConfig

torch.set_num_threads(1)


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_set(n=60, seed=0):
    """n chunks of 3 sentences; query i is a near copy of sentence 1 of chunk gold[i]."""
    rng = np.random.default_rng(seed)
    sent = unit(rng.standard_normal((3 * n, DIM)))
    owner = np.repeat(np.arange(n), 3)
    chunk = unit(sent.reshape(n, 3, DIM).mean(1))
    gold = rng.permutation(n)[:20]
    query = unit(sent[3 * gold + 1] + 0.05 * rng.standard_normal((20, DIM)))
    return dict(query=query, chunk=chunk, sentence=sent, sentence_owner=owner, gold=gold)


def test_recall_counts_gold_in_the_first_k():
    assert recall([[3, 1], [2, 0], [5]], [1, 0, 4], 1) == 0.0
    assert recall([[3, 1], [2, 0], [5]], [1, 0, 4], 2) == 2 / 3


def test_flat_and_layer_find_near_copies_by_sentence():
    ds = synthetic_set()
    assert flat_eval(ds, "sentence")["recall@1"] == 1.0
    cfg = ChunkSemanticConfig(heads=8, n_keys=16, topk=4, write_topk=2, unit="sentence", keys="random", per_slot=16)
    r = dev_eval(cfg, ds)
    assert r["recall@5"] == 1.0 and r["pool"] == 60
    # the sentence unit beats the chunk unit on sentence-level queries (each chunk mean mixes 3 random sentences)
    chunk_r = dev_eval(dataclasses.replace(cfg, unit="chunk"), ds)
    assert chunk_r["recall@5"] <= r["recall@5"]


class StubEncoder:
    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def test_flat_sentences_scores_a_chunk_by_its_best_sentence():
    rng = np.random.default_rng(1)
    vec = {t: unit(rng.standard_normal(DIM)) for t in ("A a.", "B b.", "C c.", "D d.")}
    vec["q"] = unit(vec["C c."] + 0.01 * rng.standard_normal(DIM))
    flat = FlatSentences(StubEncoder(vec))
    flat.add(["A a. B b.", "C c. D d."])
    hits = flat.search("q", 2)
    assert [i for i, _ in hits] == [1, 0]
    assert abs(hits[0][1] - float(vec["q"] @ vec["C c."])) < 1e-5


def test_cost_counts_entries_and_bytes_of_a_real_layer():
    from fwpkm_rag.benchmarks.chunk_semantic import cost

    c = cost(n_tokens=1024, chunk_size=128)
    cfg = ChunkSemanticConfig()
    per_sentence = cfg.heads * cfg.writes_per_head  # entries a sentence writes
    assert 0 < c["entries"] <= c["sentences"] * per_sentence and c["chunks"] >= 8
    # sealed: writer ids in 16 bits instead of 32, the same entries (slot int32 + id + float16 strength)
    assert c["bytes_sealed"] == c["bytes_open"] - 2 * c["entries"]
    assert c["bytes_per_token_sealed"] == round(c["bytes_sealed"] / 1024, 2) and c["query_ms"] > 0


def test_sweep_runs_every_valid_combination_against_the_config_defaults():
    from fwpkm_rag.benchmarks.chunk_semantic import sweep

    ds = synthetic_set()
    n = ChunkSemanticConfig().n_keys
    rows = sweep({}, {"s": ds}, {"topk": [4, n, n + 1]}, {"heads": 2, "per_slot": 16})
    # topk up to the default n_keys is valid (not filtered by another n); topk > n_keys is not a config
    assert [r["topk"] for r in rows] == [4, n]
    for r in rows:
        want = dev_eval(ChunkSemanticConfig(heads=2, per_slot=16, topk=r["topk"]), ds)
        assert r["s"] == [want["recall@5"], want["recall@1"]]
