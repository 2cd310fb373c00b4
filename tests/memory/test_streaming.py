"""Spec §8: one call == calls of any split == token by token (outputs and memory), and the streaming state
agrees with the pure functional core once the queued partial chunk is flushed."""
import pytest
import torch

from fwpkm_rag.memory import fwpkm_forward, stream_memory

from helpers import state_tensors, tiny_layer


def _run_pieces(layer, h, sizes, mode, mask=None):
    state = layer.init_state(h.shape[0], mode=mode)
    outs, start = [], 0
    for size in sizes:
        part = slice(start, start + size)
        res = layer(h[:, part], state, mask=None if mask is None else mask[:, part])
        outs.append(res.output)
        state = res.state
        start += size
    assert start == h.shape[1]
    return torch.cat(outs, 1), state


def _assert_same_state(a, b):
    assert a.position == b.position and a.pending == b.pending and a.updates == b.updates
    for x, y in zip(state_tensors(a), state_tensors(b)):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for name in ("pending_q", "pending_v", "pending_g", "conv_cache"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-6)
    assert torch.equal(a.pending_mask, b.pending_mask)


@pytest.mark.parametrize("mode", ["isolated", "shared"])
@pytest.mark.parametrize("q_conv", [0, 3])
def test_one_call_equals_uneven_pieces_equals_token_by_token(mode, q_conv):
    layer = tiny_layer(q_conv=q_conv, heads=2)
    h = torch.randn(2, 23, layer.d_model)
    mask = torch.rand(2, 23) > 0.2
    with torch.no_grad():
        one, s1 = _run_pieces(layer, h, [23], mode, mask)
        uneven, s2 = _run_pieces(layer, h, [3, 7, 1, 12], mode, mask)
        single, s3 = _run_pieces(layer, h, [1] * 23, mode, mask)
    torch.testing.assert_close(uneven, one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(single, one, rtol=1e-5, atol=1e-6)
    _assert_same_state(s2, s1)
    _assert_same_state(s3, s1)
    assert s1.position == 23 and s1.pending == 23 % layer.config.chunk_size


def test_parity_holds_with_autograd_and_gradients_agree():
    layer = tiny_layer()
    h = torch.randn(2, 12, layer.d_model, requires_grad=True)
    weight = torch.randn(2, 12, layer.d_model)
    grads = []
    for sizes in ([12], [4, 1, 7], [1] * 12):
        out, _ = _run_pieces(layer, h, sizes, "isolated")
        grads.append(torch.autograd.grad((out * weight).sum(), [h, layer.q_proj.weight, layer.v_proj.weight]))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inner_grad", ["analytic", "autograd"])
def test_stream_then_flush_equals_functional_core(inner_grad):
    layer = tiny_layer(heads=2, inner_grad=inner_grad)
    cfg = layer.config
    h = torch.randn(3, 17, layer.d_model)
    mask = torch.rand(3, 17) > 0.2
    with torch.no_grad():
        q, v, g, _ = layer.project(h, layer.init_state(3).conv_cache)
        out, keys, values, aux = fwpkm_forward(
            q, v, g, layer.keys_init, layer.values_init, chunk_size=cfg.chunk_size, topk=cfg.topk, heads=cfg.heads,
            lookahead=cfg.lookahead, mask=mask, inner_grad=inner_grad,
        )
        state = layer.init_state(3, mode="shared")
        res = stream_memory(q[:, :9], v[:, :9], g[:, :9], mask[:, :9], state)
        res2 = stream_memory(q[:, 9:], v[:, 9:], g[:, 9:], mask[:, 9:], res.state)
        flushed = layer.flush(res2.state).state
    torch.testing.assert_close(torch.cat([res.vhat, res2.vhat], 1), out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flushed.keys[0], keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flushed.dense_values(), values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([res.slots, res2.slots], 1).double(), aux["slots"].double())
    assert flushed.pending == 0 and flushed.position == 17


def test_flush_keeps_chunk_boundaries_at_multiples_of_chunk_size():
    layer = tiny_layer()
    C = layer.config.chunk_size
    with torch.no_grad():
        state = layer(torch.randn(1, C + 2, layer.d_model)).state
        state = layer.flush(state).state
        assert state.pending == 0 and state.position == C + 2
        res = layer(torch.randn(1, C - 2, layer.d_model), state)
    # the 3 tokens after the flush complete the second chunk at position 2C
    assert [w["chunk"] for w in res.writes] == [1] and res.state.pending == 0


def test_read_only_leaves_memory_bit_identical():
    layer = tiny_layer(q_conv=2)
    with torch.no_grad():
        state = layer(torch.randn(2, 13, layer.d_model)).state
        frozen = layer(torch.randn(2, 11, layer.d_model), state, read_only=True)
    assert frozen.writes == []
    assert frozen.state.keys is state.keys and frozen.state.values is state.values
    assert frozen.state.position == state.position and frozen.state.pending_q is state.pending_q
    assert not torch.equal(frozen.state.conv_cache, state.conv_cache)  # the short query context still advances


def test_inplace_matches_copying_and_copying_leaves_old_state_untouched():
    layer = tiny_layer()
    h = torch.randn(2, 14, layer.d_model)
    with torch.no_grad():
        state = layer(h[:, :6]).state
        snapshot = [t.clone() for t in state_tensors(state)]
        copied = layer(h[:, 6:], state)
        for a, b in zip(state_tensors(state), snapshot):
            assert torch.equal(a, b)  # the state passed in is not mutated
        in_place = layer(h[:, 6:], state.clone(), inplace=True)
    torch.testing.assert_close(in_place.output, copied.output, rtol=0, atol=0)
    for a, b in zip(state_tensors(in_place.state), state_tensors(copied.state)):
        assert torch.equal(a, b)


def test_write_records_tile_the_stream_exactly_once():
    layer = tiny_layer()
    spans = []
    with torch.no_grad():
        state = layer.init_state(1)
        for size, flush in ((3, False), (9, True), (4, False), (1, True), (11, False)):
            res = layer(torch.randn(1, size, layer.d_model), state)
            spans += [(w["start"], w["start"] + w["slots"].shape[1]) for w in res.writes]
            state = res.state
            if flush:
                out = layer.flush(state)
                spans += [(w["start"], w["start"] + w["slots"].shape[1]) for w in out.writes]
                state = out.state
        out = layer.flush(state)
        spans += [(w["start"], w["start"] + w["slots"].shape[1]) for w in out.writes]
    covered = sorted(spans)
    assert covered[0][0] == 0 and covered[-1][1] == 28
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
    C = layer.config.chunk_size
    assert all(start // C == (end - 1) // C for start, end in covered)  # no write crosses a chunk boundary
