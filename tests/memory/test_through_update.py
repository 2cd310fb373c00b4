"""Training the slow weights through the memory updates: the layer (closed-form inner gradients) matches a
reference built on the naive oracle (memory/naive.py) in outputs, memory after the updates, and the gradient of
an outer loss on both with respect to every slow weight and the input, in isolated and shared mode. The
`inner_grad="autograd"` step gives the same gradients, and the gradient reaches every slow weight through the
writes."""
import pytest
import torch

from fwpkm_rag.memory import stream_memory
from fwpkm_rag.memory.naive import naive_fwpkm_forward

from helpers import tiny_layer

B, T = 2, 17  # 17 = three chunks of 5 and a queued tail of 2, written by the flush


def _inputs(layer):
    h = torch.randn(B, T, layer.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(B, T, generator=torch.Generator().manual_seed(5)) > 0.2
    return h.requires_grad_(True), mask


def _layer_run(layer, h, mask, mode):
    """Output (B, T, d_model), then the memory after flushing the tail: keys (G, 2Hn, k_dim/2), values (G, N, v_dim)."""
    res = layer(h, layer.init_state(B, mode=mode), mask=mask)
    state = layer.flush(res.state).state
    values = torch.stack([state.dense_values(i) for i in range(state.groups)])
    return res.output, state.keys, values


def _naive_run(layer, h, mask, mode):
    """The same quantities with the memory computed by the naive oracle: one naive memory per sequence
    (isolated) or one for the batch (shared); projections and output mix as FwPKM.forward does them."""
    cfg = layer.config
    q, v, g, _ = layer.project(h, layer.init_state(B).conv_cache)
    kw = dict(chunk_size=cfg.chunk_size, topk=cfg.topk, heads=cfg.heads, lookahead=cfg.lookahead, lr=cfg.lr,
              addr_weight=cfg.addr_weight, score=cfg.score, eps=cfg.eps)
    groups = [slice(0, B)] if mode == "shared" else [slice(b, b + 1) for b in range(B)]
    runs = [naive_fwpkm_forward(q[s], v[s], g[s], layer.keys_init, layer.values_init, mask=mask[s], **kw) for s in groups]
    vhat = torch.cat([out for out, _, _ in runs])  # (B, T, v_dim)
    mixed = g.unsqueeze(-1) * vhat + (1 - g.unsqueeze(-1)) * v
    out = layer.o_proj(layer.o_norm(mixed.to(h.dtype)))
    return out, torch.stack([k for _, k, _ in runs]), torch.stack([val for _, _, val in runs])


def _grads(layer, results, h):
    """Gradients of one fixed random projection of (output, keys, values) w.r.t. the input and every parameter."""
    gen = torch.Generator().manual_seed(4)
    loss = sum((x * torch.randn(x.shape, generator=gen, dtype=x.dtype)).sum() for x in results)
    params = dict(layer.named_parameters())
    return dict(zip(["input", *params], torch.autograd.grad(loss, [h, *params.values()])))


@pytest.mark.parametrize("mode", ["isolated", "shared"])
def test_layer_matches_naive_oracle_in_outputs_memory_and_every_slow_weight_gradient(mode):
    layer = tiny_layer(q_conv=2, heads=2).double()  # the memory itself stays fp32 (spec §4), hence the tolerances
    h, mask = _inputs(layer)
    fast, ref = _layer_run(layer, h, mask, mode), _naive_run(layer, h, mask, mode)
    for name, a, b in zip(("output", "keys", "values"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    fast_grads, ref_grads = _grads(layer, fast, h), _grads(layer, ref, h)
    assert set(fast_grads) == set(ref_grads)
    for name in ref_grads:
        assert ref_grads[name].abs().sum() > 0, name  # every slow weight is reached (else the test is vacuous)
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=2e-4, atol=1e-6, msg=name)


def test_autograd_inner_step_gives_the_analytic_gradients():
    # inner_grad="autograd" is the public config value that takes the inner gradients with torch.autograd.grad.
    results = {}
    for inner_grad in ("analytic", "autograd"):
        layer = tiny_layer(q_conv=2, heads=2, inner_grad=inner_grad).double()
        h, mask = _inputs(layer)
        run = _layer_run(layer, h, mask, "isolated")
        results[inner_grad] = (run, _grads(layer, run, h))
    (run_a, grads_a), (run_o, grads_o) = results["analytic"], results["autograd"]
    for a, b in zip(run_o, run_a):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_o[name], grads_a[name], rtol=2e-4, atol=1e-6, msg=name)


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
