"""The semantic addressing layer (pipelines/semantic_layer.py): scores against a loop reference, the hard read
against the kernels' reference, the training score's hard mode against the read it stands for, bad input,
weights on disk, and the shipped files (issue 17 B)."""
import gzip
import json
import math
import zlib

import pytest
import torch

from fwpkm_rag.errors import DuplicateIdError, InputError, InputTypeError
from fwpkm_rag.kernels.product_key.naive import reference_product_key_topk, reference_read_weights
from fwpkm_rag.pipelines.retrieval import SATURATION
from fwpkm_rag.pipelines.semantic_layer import (SemanticAddressing, SemanticConfig, SemanticLayer, default_weights_path,
                                               idf)


class WordEncoder:
    """A stand-in for MiniLM: one fixed random state per word (crc32 id), plus a little of the previous word."""

    vocab_size, dim = 512, 24

    def __init__(self):
        self.table = torch.randn(self.vocab_size, self.dim, generator=torch.Generator().manual_seed(7))

    def encode(self, texts):
        out = []
        for t in texts:
            ids = torch.tensor([zlib.crc32(w.lower().encode()) % self.vocab_size for w in t.split()], dtype=torch.long)
            h = self.table[ids]
            if len(ids) > 1:
                h = h + 0.3 * torch.cat([torch.zeros(1, self.dim), self.table[ids[:-1]]])
            out.append((ids, h))
        return out


CHUNKS = ["the old bridge was painted teal", "a cat named pickles sleeps", "the harbour crane lifts steel",
          "river crossing colours and paint", "nothing here at all today", "the mayor was born in oslo"]


def small_layer(per_slot=64, n_keys=16, heads=2, topk=4):
    module = SemanticAddressing(SemanticConfig(dim=WordEncoder.dim, k_dim=8, n_keys=n_keys, heads=heads, topk=topk))
    return SemanticLayer(module, encoder=WordEncoder(), per_slot=per_slot)


@torch.no_grad()
def reference_scores(layer, question, saturation=SATURATION):
    """Loop reference of the layer's scoring: every chunk's writes summed per slot, then for every question read
    token weight x read weight x idf(slot)^2 x s/(s + SATURATION), as retrieval.score_chunks defines it."""
    enc, module = layer.encoder, layer.addressing
    strength = {}  # (slot, chunk) -> strength
    writes = {}  # slot -> number of chunks that wrote it
    df = {}
    chunks = [t for t in layer.texts]
    for n, (ids, h) in enumerate(enc.encode(chunks)):
        for w in set(ids.tolist()):
            df[w] = df.get(w, 0) + 1
        slots, weights, gate = module.read(h)
        for t in range(slots.shape[0]):
            for j in range(slots.shape[1]):
                key = (int(slots[t, j]), n)
                strength[key] = strength.get(key, 0.0) + float(gate[t] * weights[t, j])
    for (slot, _), s in strength.items():
        if s > 0:
            writes[slot] = writes.get(slot, 0) + 1
    total = sum(writes.values())
    ids, h = enc.encode([question])[0]
    slots, weights, gate = module.read(h)
    scores = [0.0] * len(chunks)
    for t in range(slots.shape[0]):
        tw = math.log1p((len(chunks) + 1) / (df.get(int(ids[t]), 0) + 1)) * float(gate[t])
        for j in range(slots.shape[1]):
            slot = int(slots[t, j])
            if slot not in writes:
                continue
            slot_idf = math.log1p(total / writes[slot])
            for n in range(len(chunks)):
                s = strength.get((slot, n), 0.0)
                if s > 0:
                    s = float(torch.tensor(s).half())  # the table stores strengths in fp16
                    scores[n] += tw * float(weights[t, j]) * slot_idf ** 2 * s / (s + saturation)
    return scores


@pytest.fixture
def trained_like():
    """A layer whose gate is open and varied (the untrained gate is a constant 0.5)."""
    layer = small_layer()
    with torch.no_grad():
        layer.addressing.gate.weight.normal_(0, 0.5)
    layer.texts = CHUNKS
    layer.add(CHUNKS, [10 * i for i in range(len(CHUNKS))])
    return layer


@pytest.mark.parametrize("question", ["what colour is the old river crossing", "the cat pickles", "zzz unknown"])
def test_scores_match_loop_reference(trained_like, question):
    got = trained_like.score_tensor(question)
    want = torch.tensor(reference_scores(trained_like, question))
    # fp32 sums in another order than the loop's float64: relative 1e-5 covers the rounding
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)
    as_dict = trained_like.scores(question)
    assert as_dict == {10 * i: float(got[i]) for i in range(len(CHUNKS)) if got[i] > 0}


@pytest.mark.parametrize("saturation", [0.05, 2.0])
def test_other_saturation_matches_loop_reference(trained_like, saturation):
    trained_like.addressing.config.saturation = saturation
    for question in ("what colour is the old river crossing", "the cat pickles"):
        got = trained_like.score_tensor(question)
        want = torch.tensor(reference_scores(trained_like, question, saturation))
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-6)


def test_saturation_is_checked_and_defaults_to_the_stores():
    from fwpkm_rag.errors import ConfigError

    assert SemanticConfig().saturation == SATURATION
    for bad in (0.0, -1.0, "0.5"):
        with pytest.raises(ConfigError):
            SemanticConfig(saturation=bad)


def test_read_matches_kernel_reference():
    layer = small_layer()
    h = torch.randn(5, WordEncoder.dim)
    slots, weights, gate = layer.addressing.read(h)
    q = layer.addressing.queries(h)[None]
    ref_slots, ref_scores, _ = reference_product_key_topk(q, layer.addressing.keys[None], topk=4)
    ref_w = reference_read_weights(ref_scores)
    assert torch.equal(slots, ref_slots[0].reshape(5, -1))
    torch.testing.assert_close(weights, ref_w[0].reshape(5, -1), rtol=1e-5, atol=1e-6)
    assert torch.all((gate > 0) & (gate < 1))


def test_search_ranks_and_pads(trained_like):
    got = trained_like.search("the old bridge painted teal", k=len(CHUNKS) + 3)
    assert [cid for cid, _ in got][:1] == [0]  # its own words: the chunk that wrote them ranks first
    assert len(got) == len(CHUNKS)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    assert trained_like.search("anything", k=0) == []


def test_bad_input_stores_nothing(trained_like):
    before = (trained_like.table.chunk.clone(), trained_like.df.clone(), list(trained_like.ids))
    with pytest.raises(DuplicateIdError):
        trained_like.add(["new text"], [0])
    with pytest.raises(DuplicateIdError):
        trained_like.add(["a", "b"], [99, 99])
    with pytest.raises(InputError):
        trained_like.add(["a", "b"], [98])
    with pytest.raises(InputTypeError):
        trained_like.add([b"bytes"], [97])
    with pytest.raises(InputTypeError):
        trained_like.scores(b"bytes")
    assert torch.equal(trained_like.table.chunk, before[0]) and torch.equal(trained_like.df, before[1])
    assert trained_like.ids == before[2]


def test_empty_layer_and_empty_texts():
    layer = small_layer()
    assert layer.scores("anything") == {} and layer.search("anything") == []
    layer.add(["", "one two three"], [1, 2])
    assert set(layer.scores("one two three")) <= {2}


def test_calls_accumulate_like_one_call():
    one, two = small_layer(), small_layer()
    two.addressing.load_state_dict(one.addressing.state_dict())
    one.add(CHUNKS, list(range(len(CHUNKS))))
    two.add(CHUNKS[:2], [0, 1])
    two.add(CHUNKS[2:], list(range(2, len(CHUNKS))))
    assert torch.equal(one.table.chunk, two.table.chunk) and torch.equal(one.df, two.df)
    assert torch.equal(one.table.strength, two.table.strength)


def test_weights_round_trip(tmp_path):
    module = small_layer().addressing
    module.save(tmp_path / "w.safetensors", metadata={"command": "test"})
    back = SemanticAddressing.load(tmp_path / "w.safetensors")
    assert back.config == module.config and back.metadata["command"] == "test"
    for (name, a), (_, b) in zip(module.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_idf_formula():
    df = torch.tensor([0, 1, 9])
    torch.testing.assert_close(idf(df, 9), torch.log1p(torch.tensor([10.0, 5.0, 1.0])))


# ---- the training score (benchmarks/semantic_train.py) ---------------------------------------------------------
def test_hard_training_score_is_the_grid_read():
    """batch_scores(mode="hard") equals the layer's read over the full k x k candidate grid, computed by loops:
    w(i, j) = softmax over the grid of s1_i + s2_j, strengths summed per passage, saturation, token weights."""
    from fwpkm_rag.benchmarks.semantic_train import batch_scores

    torch.manual_seed(0)
    c = SemanticConfig(dim=12, k_dim=8, n_keys=6, heads=2, topk=3)
    module = SemanticAddressing(c)
    with torch.no_grad():
        module.gate.weight.normal_(0, 0.5)
    qs = [torch.randn(3, 12), torch.randn(2, 12)]
    ps = [torch.randn(4, 12), torch.randn(5, 12), torch.randn(1, 12)]
    qw = [torch.rand(3) + 0.5, torch.rand(2) + 0.5]
    got = batch_scores(module, qs, ps, qw, 1.0, "hard")

    @torch.no_grad()
    def grid(h):  # per token and head: {(i, j): weight} over the k x k grid
        sub = module.sub_scores(h)  # (T, H, 2, n)
        out = []
        for t in range(h.shape[0]):
            per_head = []
            for hh in range(c.heads):
                top1 = sub[t, hh, 0].topk(c.topk).indices.tolist()
                top2 = sub[t, hh, 1].topk(c.topk).indices.tolist()
                cand = {(i, j): float(sub[t, hh, 0, i] + sub[t, hh, 1, j]) for i in top1 for j in top2}
                z = sum(math.exp(v) for v in cand.values())
                per_head.append({ij: math.exp(v) / z for ij, v in cand.items()})
            out.append(per_head)
        return out

    want = torch.zeros(len(qs), len(ps))
    for b, p in enumerate(ps):
        g = module.gates(p).detach()
        S = {}
        for t, heads in enumerate(grid(p)):
            for w in heads:
                for ij, v in w.items():
                    S[ij] = S.get(ij, 0.0) + float(g[t]) * v / c.heads
        for a, q in enumerate(qs):
            tw = module.gates(q).detach() * qw[a]
            tw = tw / tw.sum()
            for t, heads in enumerate(grid(q)):
                for w in heads:
                    for ij, v in w.items():
                        s = S.get(ij, 0.0)
                        want[a, b] += float(tw[t]) * v / c.heads * s / (s + SATURATION)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # straight-through: the forward value is the hard read's
    torch.testing.assert_close(batch_scores(module, qs, ps, qw, 0.1, "st"), got, rtol=1e-5, atol=1e-7)


def test_straight_through_reaches_keys_outside_the_top_k():
    """The hard read alone gives no gradient to sub-keys it did not select; the straight-through score does."""
    from fwpkm_rag.benchmarks.semantic_train import batch_scores

    module = SemanticAddressing(SemanticConfig(dim=12, k_dim=8, n_keys=16, heads=1, topk=2))
    qs, ps, qw = [torch.randn(3, 12)], [torch.randn(4, 12), torch.randn(4, 12)], [torch.ones(3)]
    batch_scores(module, qs, ps, qw, 0.5, "hard").sum().backward()
    hard_rows = int((module.keys.grad.abs().sum(-1) > 0).sum())
    module.zero_grad()
    batch_scores(module, qs, ps, qw, 0.5, "st").sum().backward()
    st_rows = int((module.keys.grad.abs().sum(-1) > 0).sum())
    assert st_rows > hard_rows


# ---- shipped files ------------------------------------------------------------------------------------------------
def test_shipped_pairs_come_from_the_train_split_only():
    from fwpkm_rag.benchmarks.semantic_train import PAIRS
    from fwpkm_rag.data.corpora import split_of
    from fwpkm_rag.data.paraphrase import CONCEPTS

    with gzip.open(PAIRS, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    assert len(pairs) > 1000 and {p["split"] for p in pairs} == {"train", "dev"}
    bank = {w.lower() for c in CONCEPTS for w in (*c.fact, *c.question)}
    for p in pairs:
        for src in (p["source"], p["query_source"]):
            source, name = src.split(":", 1)
            assert split_of(source, name) == "train"
        text = (p["query"] + " " + p["passage"]).lower()
        assert not any(w in text for w in bank)


def test_shipped_weights_are_small_and_load():
    path = default_weights_path()
    if not path.exists():
        pytest.skip("no shipped semantic weights")
    assert path.stat().st_size < 5 * 2 ** 20
    module = SemanticAddressing.load(path)
    assert "command" in module.metadata


def test_sentence_rows_are_sentence_means():
    from fwpkm_rag.pipelines.semantic_layer import SENTENCE_END, sentence_rows

    dot, q = SENTENCE_END[0], SENTENCE_END[1]
    pieces = torch.tensor([5, 6, dot, 7, q, 8])
    h = torch.arange(12.0).reshape(6, 2)
    want = torch.stack([h[0:3].mean(0), h[3:5].mean(0), h[5:6].mean(0)])
    torch.testing.assert_close(sentence_rows(pieces, h), want)
    assert sentence_rows(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2)).shape == (0, 2)


def test_sentence_rows_are_read_and_written():
    """With sentence rows on, a question reads one more row per sentence (weighted like its mean token) and chunks
    write theirs: the one-sentence question below has 3 token rows + 1 sentence row."""
    layer = small_layer()
    layer.addressing.config.sentence_rows = True
    layer.add(CHUNKS, list(range(len(CHUNKS))))
    reads, tw = layer.reads("the old bridge")
    assert reads[0][0].shape[0] == 3 + 1 and tw.shape == (4,)
    assert layer.table.writes.sum() > 0 and layer.scores("the old bridge")


# ---- hard negatives mined by the layer (benchmarks/semantic_train.py) -------------------------------------------
def synthetic_pairs(n=24, dim=12, seed=3):
    """Pairs and cached features in the trainer's format; passage 1 also holds pair 0's sentence (a second
    positive of query 0), passages 5 and 6 are the same text."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        sentence = f"sentence number {i} says something."
        pairs.append(dict(query=f"query {i}", sentence=sentence, passage=f"before {i}. {sentence} after {i}.",
                          split="dev" if i % 4 == 0 else "train"))
    pairs[1]["passage"] = pairs[0]["sentence"] + " " + pairs[1]["passage"]
    pairs[6]["passage"] = pairs[5]["passage"]

    def enc(T):
        return torch.randint(0, 300, (T,), generator=gen), torch.randn(T, dim, generator=gen).half()

    feats = {"passage": [enc(12) for _ in range(n)], "query": [enc(5) for _ in range(n)]}
    feats["passage"][6] = feats["passage"][5]
    return pairs, feats


def test_mined_hard_negatives_are_the_layers_best_wrong_passages():
    from fwpkm_rag.benchmarks.semantic_train import _cached_layer, is_positive, mine_hard_negatives

    pairs, feats = synthetic_pairs()
    module = SemanticAddressing(SemanticConfig(dim=12, k_dim=8, n_keys=8, heads=2, topk=2))
    with torch.no_grad():
        module.gate.weight.normal_(0, 0.5)
    pool = list(range(len(pairs)))
    depth = 5
    mined = mine_hard_negatives(module, pairs, feats, pool, pool, depth)
    layer = _cached_layer(module, feats, pool)
    assert set(mined) == set(pool)
    for q, negs in mined.items():
        s = layer.score_tensor(feats["query"][q], encoded=True)  # chunk ids are the pool rows, in order
        assert q not in negs and len(set(negs)) == len(negs) <= depth
        assert not any(is_positive(pairs, q, r) for r in negs)  # never the answer, never a passage holding it
        got = [float(s[r]) for r in negs]
        assert got == sorted(got, reverse=True) and all(v > 0 for v in got)
        if len(negs) == depth:  # nothing left out outscores what was kept
            rest = [float(s[r]) for r in pool if r not in negs and not is_positive(pairs, q, r)]
            assert max(rest, default=0.0) <= min(got) + 1e-6
    assert 1 not in mined[0]  # passage 1 holds query 0's sentence


def test_is_positive_and_batch_negatives():
    import random

    from fwpkm_rag.benchmarks.semantic_train import batch_negatives, is_positive

    pairs, _ = synthetic_pairs()
    assert is_positive(pairs, 0, 0) and is_positive(pairs, 0, 1) and not is_positive(pairs, 1, 0)
    assert is_positive(pairs, 5, 6) and is_positive(pairs, 6, 5)
    pool = list(range(len(pairs)))
    mined = {q: [r for r in reversed(pool) if not is_positive(pairs, q, r)][:6] for q in pool}
    rng = random.Random(0)
    for rows in ([0, 2, 5], [3, 7, 9, 11]):
        extra = batch_negatives(pairs, rows, mined, 2, 4, pool, rng)
        assert len(set(extra)) == len(extra) <= 2 * len(rows) + 4
        assert not set(extra) & set(rows)
        assert not any(is_positive(pairs, q, r) for q in rows for r in extra)
    assert batch_negatives(pairs, [0], {}, 3, 0, pool, rng) == []  # nothing mined, no random ones asked


def test_dev_recall_pools():
    from fwpkm_rag.benchmarks.semantic_train import dev_recall
    from fwpkm_rag.errors import ConfigError

    pairs, feats = synthetic_pairs()
    module = SemanticAddressing(SemanticConfig(dim=12, k_dim=8, n_keys=8, heads=2, topk=2))
    small, big = dev_recall(module, pairs, feats), dev_recall(module, pairs, feats, pool="all")
    n_dev = sum(p["split"] == "dev" for p in pairs)
    assert small["passages"] == small["n"] == big["n"] == n_dev and big["passages"] == len(pairs)
    assert 0 <= big["recall@1"] <= big["recall@5"] <= 1
    with pytest.raises(ConfigError):
        dev_recall(module, pairs, feats, pool="train")


def test_training_score_slot_weight_is_per_slot_and_linear():
    """batch_scores(slot_weight=W) = sum over slots s of W[s] x the score through slot s alone (slot i*n + j, the
    kernels' numbering); all-ones W is the unweighted score."""
    from fwpkm_rag.benchmarks.semantic_train import batch_scores

    torch.manual_seed(1)
    c = SemanticConfig(dim=12, k_dim=8, n_keys=5, heads=2, topk=2)
    module = SemanticAddressing(c)
    qs, ps, qw = [torch.randn(3, 12), torch.randn(2, 12)], [torch.randn(4, 12), torch.randn(3, 12)], \
        [torch.rand(3) + 0.5, torch.rand(2) + 0.5]
    with torch.no_grad():
        plain = batch_scores(module, qs, ps, qw, 1.0, "hard")
        torch.testing.assert_close(batch_scores(module, qs, ps, qw, 1.0, "hard", torch.ones(c.n_slots)), plain)
        W = torch.rand(c.n_slots)
        per_slot = torch.stack([batch_scores(module, qs, ps, qw, 1.0, "hard", torch.eye(c.n_slots)[s])
                                for s in range(c.n_slots)])  # (n*n, Bq, Bp)
        torch.testing.assert_close(batch_scores(module, qs, ps, qw, 1.0, "hard", W),
                                   (W[:, None, None] * per_slot).sum(0), rtol=1e-5, atol=1e-7)
        # a slot contributes only when it is in the k x k candidate grid (the training score's read) of a question
        # token and of a passage token

        def grid(h):
            top = module.sub_scores(h).topk(c.topk, dim=-1).indices  # (T, H, 2, k)
            return {int(i) * c.n_keys + int(j) for t in range(h.shape[0]) for hh in range(c.heads)
                    for i in top[t, hh, 0] for j in top[t, hh, 1]}

        q_slots = set().union(*(grid(h) for h in qs))
        p_slots = [grid(h) for h in ps]
    for s in range(c.n_slots):
        for b in range(len(ps)):
            if per_slot[s, :, b].abs().sum() > 0:
                assert s in q_slots and s in p_slots[b]


def test_rescore_keeps_the_weights_and_sets_the_saturation(tmp_path):
    from fwpkm_rag.benchmarks.semantic_train import rescore
    from fwpkm_rag.errors import ConfigError

    module = small_layer().addressing
    module.save(tmp_path / "a.safetensors", metadata={"command": "train it"})
    rescore(tmp_path / "a.safetensors", 0.05, tmp_path / "b.safetensors", command="rescore it")
    back = SemanticAddressing.load(tmp_path / "b.safetensors")
    assert back.config.saturation == 0.05 and back.config.n_keys == module.config.n_keys
    assert back.metadata["command"] == "rescore it" and back.metadata["trained_command"] == "train it"
    for (name, a), (_, b) in zip(module.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError):
        rescore(tmp_path / "a.safetensors", 0.0, tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()
