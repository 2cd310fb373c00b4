"""Streaming inference with bounded state: one call == uneven pieces == token by token (logits and memory),
batched streams keep isolated memories, read_only freezes the memory, memory introspection, flush."""
import pytest
import torch

from fwpkm_rag.modeling import FwPKMCache

from model_helpers import VOCAB, assert_same_memory, tiny_model


def _stream(model, ids, sizes, **kw):
    cache = model.init_cache(ids.shape[0])
    outs, start = [], 0
    for size in sizes:
        outs.append(model(ids[:, start : start + size], cache=cache, **kw).logits)
        start += size
    assert start == ids.shape[1]
    return torch.cat(outs, 1), cache


@pytest.mark.parametrize("static_pkm", [False, True])
def test_one_call_equals_uneven_pieces_equals_token_by_token(static_pkm):
    model = tiny_model(static_pkm_layer=1 if static_pkm else None, static_pkm={"n_subkeys": 6, "k_dim": 8, "topk": 2})
    ids = torch.randint(0, VOCAB, (2, 29))
    with torch.no_grad():
        one, c1 = _stream(model, ids, [29])
        uneven, c2 = _stream(model, ids, [3, 7, 1, 12, 6])
        single, c3 = _stream(model, ids, [1] * 29)
    torch.testing.assert_close(uneven, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, one, rtol=1e-5, atol=1e-5)
    assert c1.position == c2.position == c3.position == 29
    for other in (c2, c3):
        for a, b in zip(other.memory, c1.memory):
            assert_same_memory(a, b)
    assert c1.memory[0].updates == 29 // 4 and c1.pending == [29 % 4, 29 % 4]
    # The cache-free one-shot forward gives the same logits too.
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, one, rtol=1e-5, atol=1e-5)


def test_kv_window_is_bounded():
    model = tiny_model()
    cache = model.init_cache(1)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (1, 40)), cache=cache)
        size = cache.nbytes()
        model(torch.randint(0, VOCAB, (1, 400)), cache=cache)
    window = model.config.window
    assert all(k.shape[2] == window - 1 and v.shape[2] == window - 1 for k, v in cache.kv)
    assert cache.key_valid.shape == (1, window - 1)
    # Only the rewritten value rows may grow, and never past the n*n slots of a memory.
    n_slots, v_dim = model.config.fwpkm_config.n_slots, model.config.fwpkm_config.v_dim
    assert cache.nbytes() - size <= 2 * n_slots * v_dim * 4


def test_batched_streams_have_isolated_memories():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (3, 18))
    with torch.no_grad():
        batch, cb = _stream(model, ids, [5, 13])
        for b in range(3):
            alone, ca = _stream(model, ids[b : b + 1], [11, 7])
            torch.testing.assert_close(alone, batch[b : b + 1], rtol=1e-5, atol=1e-5)
            for sa, sb in zip(ca.memory, cb.memory):
                assert_same_memory(sa, sb.select([b]))


def test_read_only_leaves_memory_bit_identical_and_changes_reads():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        _, cache = _stream(model, ids[:, :14], [14])
        before = cache.clone()
        frozen = model(ids[:, 14:], cache=cache, read_only=True).logits
        for a, b in zip(cache.memory, before.memory):
            assert_same_memory(a, b, exact=True)
        assert cache.position == 30  # the attention window still advances
        written = model(ids[:, 14:], cache=before).logits
    assert not torch.allclose(frozen, written)


def test_memory_introspection_and_flush():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 10))
    cfg = model.config.fwpkm_config
    with torch.no_grad():
        cache = model.init_cache(2)
        out = model(ids, cache=cache, return_memory=True)
        assert len(out.memory_reads) == len(out.memory_writes) == 2
        for slots, weights, gate in out.memory_reads:
            assert slots.shape == weights.shape == (2, 10, cfg.heads, cfg.topk) and slots.dtype == torch.int64
            assert gate.shape == (2, 10) and bool(((gate > 0) & (gate < 1)).all())
            torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(2, 10))
            assert int(slots.max()) < cfg.n_slots
        for writes in out.memory_writes:  # chunks 0 and 1 complete (C = 4); 2 tokens queued
            assert [w["chunk"] for w in writes] == [0, 1]
            assert writes[0]["slots"].shape == writes[0]["strength"].shape == (2, 4, cfg.heads, cfg.topk)
        assert cache.pending == [2, 2]
        snapshot = cache.clone()
        flushed = model.flush_memory(cache)
        assert [[w["chunk"] for w in layer] for layer in flushed] == [[2], [2]]
        assert cache.pending == [0, 0] and cache.position == 10
        assert model.flush_memory(cache) == [[], []]  # nothing left to write
        assert snapshot.pending == [2, 2]  # the clone was not touched by the in-place flush
        # Without return_memory nothing is collected.
        plain = model(ids, cache=FwPKMCache())
        assert plain.memory_reads is None and plain.memory_writes is None


def test_left_padding_is_invisible_to_attention():
    # Attention-only model: RoPE is relative and padded keys are masked, so left padding changes nothing.
    # (With memories, padding shifts the chunk schedule, so logits legitimately differ; they stay finite.)
    ids = torch.randint(0, VOCAB, (1, 9))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.isfinite(tiny_model()(padded, attention_mask=mask).logits).all()
        model = tiny_model(fwpkm_layers=[])
        torch.testing.assert_close(
            model(padded, attention_mask=mask).logits[:, 3:], model(ids).logits, rtol=1e-4, atol=1e-5
        )
