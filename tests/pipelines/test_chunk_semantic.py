"""The chunk-level semantic layer (pipelines/chunk_semantic.py), with a stand-in encoder (no MiniLM needed):
addressing against a loop reference, scores against a by-hand sum, the store's uses (clone, compaction, state),
k-means, and bad input."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fwpkm_rag.errors import ConfigError, InputError, InputTypeError
from fwpkm_rag.pipelines.chunk_semantic import (DIM, ChunkSemanticConfig, ChunkSemanticLayer, fit_keys, kmeans,
                                                load_keys, permutations, random_keys, save_keys, split_sentences)

torch.set_num_threads(1)


class HashEncoder:
    """A deterministic stand-in for MiniLM: a unit vector per text, seeded by the text; texts sharing a first word
    get nearby vectors (a common direction plus a little noise)."""

    def encode(self, texts):
        out = []
        for t in texts:
            first = t.split()[0] if t.split() else ""
            base = np.random.default_rng(abs(hash(("base", first))) % 2**32).standard_normal(DIM)
            noise = np.random.default_rng(abs(hash(("noise", t))) % 2**32).standard_normal(DIM)
            v = base + 0.3 * noise
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), DIM)


def unit(rng, n):
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def small(**kw):
    return ChunkSemanticConfig(**{**dict(heads=2, n_keys=8, topk=3, write_topk=0, keys="random", per_slot=64,
                                         unit="chunk", saturation=0.0), **kw})


def test_address_matches_a_loop_reference():
    cfg = small(temperature=0.5)
    layer = ChunkSemanticLayer(cfg, encoder=HashEncoder())
    e = unit(np.random.default_rng(0), 5)
    slots, weights = layer.address(e)
    perms, keys, n, half = permutations(cfg), layer.keys, cfg.n_keys, DIM // 2
    for r in range(5):
        cands = []  # (score, slot) of every (i, j) of every head
        for h in range(cfg.heads):
            q = torch.from_numpy(e[r])[perms[h]]
            s = [[-math.log(cfg.eps + float((q[m * half:(m + 1) * half] - keys[(h * 2 + m) * n + j]).pow(2).sum()))
                  for j in range(n)] for m in range(2)]
            best0 = sorted(range(n), key=lambda j: -s[0][j])[: cfg.topk]
            best1 = sorted(range(n), key=lambda j: -s[1][j])[: cfg.topk]
            grid = sorted(((s[0][i] + s[1][j], h * n * n + i * n + j) for i in best0 for j in best1), reverse=True)
            cands += grid[: cfg.topk]
        z = [math.exp(sc / cfg.temperature) for sc, _ in cands]
        want = {slot: w / sum(z) for (_, slot), w in zip(cands, z)}
        got = dict(zip(slots[r].tolist(), weights[r].tolist()))
        assert set(got) == set(want)
        for slot in want:
            assert got[slot] == pytest.approx(want[slot], rel=1e-4, abs=1e-6)
        for h in range(cfg.heads):  # every head reads topk slots in its own range
            assert sum(h * n * n <= s < (h + 1) * n * n for s in got) == cfg.topk


@pytest.mark.parametrize("saturation,idf_power,write_topk,pool", [(0.0, 0.0, 0, "sum"), (0.05, 1.0, 0, "sum"),
                                                                  (0.01, 0.0, 2, "sum"), (0.01, 0.0, 2, "max")])
def test_scores_equal_a_by_hand_sum(saturation, idf_power, write_topk, pool):
    cfg = small(saturation=saturation, idf_power=idf_power, write_topk=write_topk, pool=pool)
    enc = HashEncoder()
    layer = ChunkSemanticLayer(cfg, encoder=enc)
    texts = [f"{w} text number {i}" for i, w in enumerate(["alpha", "beta", "alpha", "gamma", "beta", "delta"])]
    layer.add(texts, list(range(6)))
    # by hand: each chunk's strength per slot from its own read, then the question's reads over them
    strength, writes = {}, {}
    cs, cw = layer.address(enc.encode(texts), cfg.writes_per_head)
    assert cs.shape == (6, cfg.heads * (write_topk or cfg.topk))
    for c in range(6):
        for s, w in zip(cs[c].tolist(), cw[c].tolist()):
            strength[(s, c)] = strength.get((s, c), 0.0) + w
            writes[s] = writes.get(s, 0) + 1
    q = "alpha question"
    qs, qw = layer.address(enc.encode([q]))
    want = {}
    for s, w in zip(qs[0].tolist(), qw[0].tolist()):
        idf = math.log1p(6 / max(writes.get(s, 0), 1)) ** idf_power
        for (slot, c), st in strength.items():
            if slot == s:
                st = float(torch.tensor(st).half())  # the table keeps strengths in float16
                want[c] = want.get(c, 0.0) + w * idf * (st / (st + saturation) if saturation else st)
    got = layer.scores(q)
    assert set(got) == {c for c, v in want.items() if v > 0}
    for c in got:
        assert got[c] == pytest.approx(want[c], rel=1e-4)


def test_a_chunk_is_found_by_its_own_embedding_and_neighbours_rank_above_strangers():
    rng = np.random.default_rng(1)
    e = unit(rng, 200)
    layer = ChunkSemanticLayer(ChunkSemanticConfig(heads=4, n_keys=16, topk=8, keys="random", unit="chunk"),
                               encoder=False)
    layer.add_embeddings(e, list(range(200)))
    found = 0
    for i in range(0, 200, 10):
        ids, s = layer.score_tensors("", address=layer.address(e[i:i + 1]))
        found += int(ids[s.argmax()]) == i
    assert found == 20
    # a slightly perturbed copy of chunk 7 ranks chunk 7 first
    q = e[7] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
    q /= np.linalg.norm(q)
    ids, s = layer.score_tensors("", address=layer.address(q[None]))
    assert int(ids[s.argmax()]) == 7


def test_sentence_unit_writes_every_sentence_on_behalf_of_its_chunk():
    enc = HashEncoder()
    layer = ChunkSemanticLayer(small(unit="sentence"), encoder=enc)
    layer.add(["zeta one. omega two! kappa three?", "lambda four"], [0, 1])
    assert layer.n_chunks == 2
    # the question "omega two!" is the second sentence of chunk 0: it scores chunk 0 at least as much as the
    # sentence alone written as a chunk
    alone = ChunkSemanticLayer(small(), encoder=enc)
    alone.add(["omega two!"], [0])
    assert layer.scores("omega two!")[0] >= alone.scores("omega two!")[0] * (1 - 1e-3)
    assert split_sentences("A b. C d? E!  F") == ["A b.", "C d?", "E!", "F"]
    assert split_sentences("   ") == []


@pytest.mark.parametrize("pool", ["max", "sum"])
def test_clone_compacted_state_and_alive(pool):
    enc = HashEncoder()
    layer = ChunkSemanticLayer(small(pool=pool, unit="sentence"), encoder=enc)
    layer.add([f"word{i % 3} chunk {i}. word{(i + 1) % 3} more {i}." for i in range(10)], list(range(10)))
    q = "word1 question"
    before = layer.scores(q)
    other = layer.clone()
    other.add(["word1 more"], [10])
    assert layer.scores(q) == before and 10 in other.scores(q)
    packed = layer.compacted()
    assert packed.scores(q) == before
    with pytest.raises(RuntimeError):
        packed.add(["x"], [11])
    tensors, meta = layer.state()
    back = ChunkSemanticLayer.from_state(tensors, meta, encoder=enc)
    assert back.scores(q) == before
    alive = torch.ones(10, dtype=torch.bool)
    alive[list(before)[0]] = False
    filtered = layer.scores(q, alive=alive)
    assert list(before)[0] not in filtered and set(filtered) == set(before) - {list(before)[0]}
    with pytest.raises(InputError):
        layer.scores(q, alive=torch.ones(3, dtype=torch.bool))


def sentence_chunks(rng, n_chunks, per_chunk):
    """Unit vectors for n_chunks x per_chunk sentences and each one's chunk id."""
    e = unit(rng, n_chunks * per_chunk)
    return e, [i // per_chunk for i in range(n_chunks * per_chunk)]


def test_max_pool_scores_a_chunk_by_its_best_sentence():
    """pool "max": a chunk's score is the largest of its sentences' scores, each sentence's score being what a
    one-sentence chunk of a "sum" layer gets for the same writes (an independent reference)."""
    rng = np.random.default_rng(4)
    e, owner = sentence_chunks(rng, 30, 4)
    cfg = small(heads=4, n_keys=8, topk=4, write_topk=1, pool="max", saturation=0.01)
    layer = ChunkSemanticLayer(cfg, encoder=False)
    layer.add_embeddings(e, owner)
    ref = ChunkSemanticLayer(dataclasses.replace(cfg, pool="sum"), encoder=False)
    ref.add_embeddings(e, list(range(len(owner))))  # every sentence its own chunk
    for i in range(0, 120, 7):
        address = layer.address(e[i:i + 1] + 0.2 * unit(rng, 1))
        per_row = dict(zip(*[t.tolist() for t in ref.score_tensors("", address=address)]))
        want = {}
        for row, v in per_row.items():
            want[owner[row]] = max(want.get(owner[row], 0.0), v)
        ids, got = layer.score_tensors("", address=address)
        assert ids.tolist() == sorted(want)
        for c, v in zip(ids.tolist(), got.tolist()):
            assert v == pytest.approx(want[c], rel=1e-5)


def test_a_sentence_asked_by_itself_ranks_its_chunk_first():
    rng = np.random.default_rng(5)
    e, owner = sentence_chunks(rng, 300, 5)
    layer = ChunkSemanticLayer(ChunkSemanticConfig(heads=16, n_keys=32, topk=16, write_topk=1), encoder=False)
    layer.add_embeddings(e, owner)
    for i in range(0, len(owner), 37):
        ids, s = layer.score_tensors("", address=layer.address(e[i:i + 1]))
        assert int(ids[s.argmax()]) == owner[i]


def test_a_meta_saved_before_the_pool_field_loads_with_the_sum_rule():
    """Layers saved before `pool` existed kept one entry per (slot, chunk) and summed a chunk's sentences: their
    meta's config lacks the field, and they must load with that rule (not today's default "max")."""
    enc = HashEncoder()
    old = ChunkSemanticLayer(small(pool="sum", unit="sentence"), encoder=enc)
    old.add([f"word{i % 3} chunk {i}. word{(i + 1) % 3} more {i}." for i in range(12)], list(range(12)))
    tensors, meta = old.state()
    assert "owner" not in tensors
    del meta["config"]["pool"]
    assert ChunkSemanticConfig().pool == "max"
    back = ChunkSemanticLayer.from_state(tensors, meta, encoder=enc)
    assert back.config == old.config and back.config.pool == "sum"
    for q in ("word1 question", "word2 more"):
        assert back.scores(q) == old.scores(q)
    # a "max" layer's state keeps its row owners; a state without them, or with a wrong count, is refused
    new = ChunkSemanticLayer(small(unit="sentence"), encoder=enc)
    new.add(["word0 a. word1 b.", "word2 c."], [0, 5])
    tensors, meta = new.state()
    assert tensors["owner"].tolist() == [0, 0, 5]
    assert ChunkSemanticLayer.from_state(tensors, meta, encoder=enc).scores("word1 b.") == new.scores("word1 b.")
    with pytest.raises(InputError):
        ChunkSemanticLayer.from_state({**tensors, "owner": tensors["owner"][:2]}, meta, encoder=enc)
    with pytest.raises(KeyError):
        ChunkSemanticLayer.from_state({k: v for k, v in tensors.items() if k != "owner"}, meta, encoder=enc)


def test_kmeans_recovers_separated_clusters_and_fitted_keys_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    centres = torch.from_numpy(rng.standard_normal((4, 6)).astype(np.float32)) * 10
    x = (centres[:, None, :] + 0.1 * torch.randn(4, 50, 6, generator=torch.Generator().manual_seed(0))).reshape(-1, 6)
    c = kmeans(x, 4, seed=0)
    assert torch.cdist(centres, c).min(1).values.max() < 0.2  # every true centre has a centroid next to it
    cfg = small(keys="kmeans", n_keys=4, topk=2)
    e = torch.from_numpy(unit(rng, 64))
    keys = fit_keys(e, cfg)
    assert keys.shape == (2 * cfg.heads * cfg.n_keys, DIM // 2)
    path = tmp_path / "k.safetensors"
    save_keys(path, keys, cfg, {"command": "test"})
    assert torch.equal(load_keys(cfg, path), keys)
    with pytest.raises(ConfigError):
        load_keys(small(keys="kmeans", n_keys=8, topk=2), path)
    layer = ChunkSemanticLayer(cfg, encoder=False, keys_path=path)
    assert torch.equal(layer.keys, keys)
    # fitted keys quantise the data they were fitted on better than random directions
    def inertia(k):
        q = e[:, permutations(cfg)[0]][:, : DIM // 2]
        return float(torch.cdist(q, k[: cfg.n_keys]).min(1).values.pow(2).sum())
    assert inertia(keys) < inertia(random_keys(cfg))
    with pytest.raises(InputError):
        kmeans(x[:3], 4)


def test_bad_input_and_config():
    layer = ChunkSemanticLayer(small(), encoder=HashEncoder())
    with pytest.raises(InputError):
        layer.add(["a", "b"], [0])
    with pytest.raises(InputTypeError):
        layer.add([3], [0])
    with pytest.raises(InputTypeError):
        layer.add(["a"], [-1])
    with pytest.raises(InputTypeError):
        layer.scores(3)
    with pytest.raises(InputError):
        layer.address(np.zeros((2, 5), dtype=np.float32))
    assert layer.scores("nothing written") == {} and layer.search("q") == []
    for bad in (dict(topk=9), dict(temperature=0.0), dict(saturation=-1.0), dict(unit="word"), dict(keys="x"),
                dict(heads=0), dict(pool="mean")):
        with pytest.raises(ConfigError):
            small(**bad)
    with pytest.raises(ConfigError):
        ChunkSemanticLayer(small(), keys=torch.zeros(3, 3))


def test_sparse_provenance_keeps_what_the_dense_table_keeps():
    from fwpkm_rag.pipelines.chunk_semantic import SparseProvenance
    from fwpkm_rag.pipelines.provenance import ProvenanceTable

    gen = torch.Generator().manual_seed(3)
    dense, sparse = ProvenanceTable(1, 40, 3), SparseProvenance(40, 3)
    for step in range(6):  # several write calls, collisions, evictions, and deletes between them
        E = 60
        slots = torch.randint(0, 40, (E,), generator=gen)
        chunks = torch.randint(0, 10 + 5 * step, (E,), generator=gen)
        strength = torch.rand(E, generator=gen) + 0.01
        for t in (dense, sparse):
            t.record(0, slots, chunks, strength)
        if step == 2:
            for t in (dense, sparse):
                t.delete([1, 4])
    reads = torch.arange(40)
    dw, dc, ds = dense.entries(0, reads)
    sw, sc, ss = sparse.entries(0, reads)
    assert torch.equal(dw, sw) and torch.equal(dc, sc) and torch.equal(ds, ss)
    assert torch.equal(sparse.writes_of(reads), dense.writes[0]) and torch.equal(sparse.alive, dense.alive)
    frozen = sparse.frozen_copy()
    fw, fc, fs = frozen.entries(0, reads)
    assert torch.equal(fc, sc) and frozen.chunk.dtype == torch.uint16 and frozen.nbytes() < sparse.nbytes()
    with pytest.raises(RuntimeError):
        frozen.record(0, reads[:1], reads[:1], torch.ones(1))
    back = SparseProvenance.from_tensors(sparse.tensors(), 40, 3)
    assert all(torch.equal(a, b) for a, b in zip(back.entries(0, reads), sparse.entries(0, reads)))
    with pytest.raises(InputError):
        sparse.record(0, torch.tensor([40]), torch.tensor([0]), torch.ones(1))
