"""FwPKMConfig.write_gate="separate": the write is weighted by its own gate over the token and its conv'd query.

Checked against an independent path: the naive oracle (memory/naive.py) driven by a write gate computed by hand,
with the output mixed by the layer's shared gate g as spec §5 writes it. The layer computes q, v and the gates
in fp32 whatever its weights' dtype (the memory is fp32, spec §4), so the fp64 oracle agrees to fp32 rounding:
rtol 1e-5 / atol 1e-6 on outputs and memory."""
import pytest
import torch
import torch.nn.functional as F

from fwpkm_rag.errors import ConfigError
from fwpkm_rag.memory import FwPKMConfig
from fwpkm_rag.memory.layer import zscore
from fwpkm_rag.memory.naive import naive_fwpkm_forward

from helpers import state_tensors, tiny_layer


def _separate(q_conv=3, heads=2, seed=0, ctx_std=0.5):
    layer = tiny_layer(q_conv=q_conv, heads=heads, write_gate="separate", torch_seed=seed).double()
    with torch.no_grad():
        layer.w_proj.weight.normal_(0, 0.5)
        layer.w_proj.bias.normal_(0, 0.1)
        layer.w_ctx.weight.normal_(0, ctx_std)
        if layer.q_conv is not None:
            layer.q_conv.normal_(0, 0.5)
    return layer


def _by_hand(layer, h):
    """(output, new keys, new values) of one call from a fresh state, through the naive oracle."""
    c = layer.config
    q = layer.q_proj(layer.q_norm(h))  # (B, T, H*k_dim)
    if layer.q_conv is not None:  # causal depthwise conv, taps t-K+1 .. t, zero history
        K = layer.q_conv.shape[1]
        padded = F.pad(q, (0, 0, K - 1, 0))
        q = sum(padded[:, j : j + h.shape[1]] * layer.q_conv[:, j] for j in range(K))
    v = zscore(layer.v_proj(layer.v_norm(h)))
    g = torch.sigmoid(layer.g_proj(layer.g_norm(h))).squeeze(-1)
    g_write = torch.sigmoid(layer.w_proj(layer.w_norm(h)) + q @ layer.w_ctx.weight.T).squeeze(-1)
    vhat, keys, values = naive_fwpkm_forward(
        q, v, g_write, layer.keys_init.double(), layer.values_init.double(), chunk_size=c.chunk_size, topk=c.topk,
        heads=c.heads, lookahead=c.lookahead, lr=c.lr, addr_weight=c.addr_weight, score=c.score, eps=c.eps)
    out = layer.o_proj(layer.o_norm(g.unsqueeze(-1) * vhat + (1 - g.unsqueeze(-1)) * v))
    return out, keys, values


@pytest.mark.parametrize("q_conv,heads", [(3, 2), (0, 1), (4, 1)])
def test_separate_write_gate_matches_the_naive_oracle_in_output_memory_and_gradients(q_conv, heads):
    layer = _separate(q_conv, heads)
    h = torch.randn(2, 15, layer.d_model, dtype=torch.float64)  # 15 = 3 full chunks of 5: everything written
    res = layer(h, layer.init_state(2, mode="shared"))
    ref_out, ref_keys, ref_values = _by_hand(layer, h)
    torch.testing.assert_close(res.output, ref_out, rtol=1e-5, atol=1e-6)
    got_keys, got_values = state_tensors(res.state)
    torch.testing.assert_close(got_keys.reshape(ref_keys.shape).double(), ref_keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_values.double(), ref_values, rtol=1e-5, atol=1e-6)
    # the next call reads what this one wrote: an outer loss on its output reaches the write gate's weights
    # through the update, and its gradients are those of the oracle run over both calls at once
    h2 = torch.randn(2, 5, layer.d_model, dtype=torch.float64)
    params = [layer.w_ctx.weight, layer.w_proj.weight, layer.w_norm.weight]
    got = torch.autograd.grad(layer(h2, res.state).output.square().sum(), params)
    assert all(x.abs().sum() > 0 for x in got), "the write gate gets no gradient through the update"
    ref_h2 = _by_hand(layer, torch.cat([h, h2], 1))[0][:, 15:]
    ref = torch.autograd.grad(ref_h2.square().sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_write_gate_weights_the_writes_and_not_the_output_mix():
    layer = _separate()
    h = torch.randn(1, 12, layer.d_model, dtype=torch.float64)
    res = layer(h, layer.init_state(1), return_reads=True)
    g = torch.sigmoid(layer.g_proj(layer.g_norm(h))).squeeze(-1)
    torch.testing.assert_close(res.gate.double(), g, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(res.write_gate, res.gate)
    # the state queues the write gate for the incomplete chunk: it is what the next write is weighted by
    torch.testing.assert_close(res.state.pending_g, res.write_gate[:, 10:].float(), rtol=1e-6, atol=1e-7)
    # a write gate closed everywhere writes nothing but the keys' addressing step; the output still mixes g
    with torch.no_grad():
        layer.w_proj.bias.fill_(-1e4)
    closed = layer(h, layer.init_state(1))
    values = state_tensors(closed.state)[1]
    assert torch.equal(values.reshape(layer.values_init.shape), layer.values_init)


def test_a_separate_gate_that_copies_g_and_ignores_context_is_the_shared_layer_exactly():
    shared = tiny_layer(q_conv=3, heads=2, torch_seed=3)
    separate = tiny_layer(q_conv=3, heads=2, torch_seed=3, write_gate="separate")
    with torch.no_grad():
        separate.load_state_dict(shared.state_dict(), strict=False)
        separate.w_norm.weight.copy_(shared.g_norm.weight)
        separate.w_proj.weight.copy_(shared.g_proj.weight)
        separate.w_proj.bias.copy_(shared.g_proj.bias)
    assert torch.count_nonzero(separate.w_ctx.weight) == 0  # the context part starts at 0
    h = torch.randn(2, 17, shared.d_model)
    a, b = shared(h, shared.init_state(2)), separate(h, separate.init_state(2))
    assert torch.equal(a.output, b.output)
    for x, y in zip(state_tensors(a.state), state_tensors(b.state)):
        assert torch.equal(x, y)


def test_separate_write_gate_streams_one_call_equal_to_pieces_and_token_by_token():
    layer = _separate().float()
    h = torch.randn(2, 19, layer.d_model)
    with torch.no_grad():
        outs = []
        for sizes in ([19], [4, 9, 6], [1] * 19):
            state, parts, start = layer.init_state(2), [], 0
            for size in sizes:
                res = layer(h[:, start : start + size], state)
                parts.append(res.output)
                state, start = res.state, start + size
            outs.append((torch.cat(parts, 1), state))
    for out, state in outs[1:]:
        torch.testing.assert_close(out, outs[0][0], rtol=1e-5, atol=1e-6)
        for x, y in zip(state_tensors(state), state_tensors(outs[0][1])):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.pending_g, outs[0][1].pending_g, rtol=1e-5, atol=1e-6)


def test_write_gate_config_is_validated_and_old_configs_load_as_shared():
    with pytest.raises(ConfigError, match="write_gate"):
        FwPKMConfig(write_gate="context")
    old = FwPKMConfig().to_dict()
    old.pop("write_gate")
    assert FwPKMConfig.from_dict(old).write_gate == "shared"
    assert "w_ctx.weight" not in tiny_layer().state_dict()  # the paper's layer has no extra weights
