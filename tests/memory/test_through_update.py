"""Training the slow weights through the memory updates: closed-form and autograd inner gradients give the
same slow-weight gradients, and the gradient reaches every slow weight and the input through the writes."""
import pytest
import torch

from fwpkm_rag.memory import stream_memory

from helpers import tiny_layer


def _grads(inner_grad, mode, q_conv=0):
    layer = tiny_layer(inner_grad=inner_grad, q_conv=q_conv, heads=2)
    layer.double()
    h = torch.randn(2, 17, layer.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    h.requires_grad_(True)
    out = layer(h, layer.init_state(2, mode=mode)).output
    weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(4))
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((out * weight).sum(), [h, *params.values()])
    return dict(zip(["input", *params], grads))


@pytest.mark.parametrize("mode", ["isolated", "shared"])
def test_closed_form_and_autograd_inner_gradients_agree_on_every_slow_weight(mode):
    analytic, oracle = _grads("analytic", mode, q_conv=2), _grads("autograd", mode, q_conv=2)
    assert set(analytic) == set(oracle)
    for name in analytic:
        torch.testing.assert_close(analytic[name], oracle[name], rtol=2e-4, atol=1e-6, msg=name)


def test_gradient_reaches_value_and_gate_weights_only_through_the_write():
    # The reads of chunk 2 depend on W_v and W_g only through chunk 1's write (targets and write gates).
    layer = tiny_layer()
    C = layer.config.chunk_size
    h = torch.randn(2, 2 * C, layer.d_model, requires_grad=True)
    state = layer.init_state(2)
    q, v, g, _ = layer.project(h, state.conv_cache)
    vhat = stream_memory(q, v, g, None, state).vhat
    loss = (vhat[:, C:] * torch.randn_like(vhat[:, C:])).sum()
    params = [layer.v_proj.weight, layer.g_proj.weight, layer.v_norm.weight, layer.g_norm.weight, layer.q_proj.weight]
    grads = torch.autograd.grad(loss, params + [h])
    for p, gr in zip(params + [h], grads):
        assert torch.isfinite(gr).all() and gr.abs().sum() > 0
    # control: with the memory frozen, W_v cannot influence chunk 2's reads
    frozen = stream_memory(q, v, g, None, state, read_only=True).vhat
    assert torch.autograd.grad(frozen[:, C:].sum(), layer.v_proj.weight, allow_unused=True)[0] is None
