"""The fast memory core (closed-form and autograd inner gradients) against the independent naive oracle:
outputs, memory after the updates, and gradients of an outer loss through the updates."""
import pytest
import torch

from fwpkm_rag.memory import fwpkm_forward
from fwpkm_rag.memory.naive import naive_fwpkm_forward

from helpers import fast_inputs

CASES = [
    # B, T, H, k_dim, n, v_dim, topk, chunk, lookahead, mask, score
    (2, 13, 1, 8, 6, 5, 3, 5, 1, False, "idw"),  # chunk does not divide T, odd v_dim
    (2, 13, 2, 8, 6, 5, 3, 5, 1, True, "idw"),  # two heads, padding
    (1, 1, 1, 6, 5, 3, 2, 4, 1, False, "idw"),  # T = 1: one read, no pair written
    (3, 9, 1, 4, 5, 7, 4, 9, 2, True, "dot"),  # lookahead 2, dot score
    (2, 11, 2, 6, 4, 3, 2, 3, 0, False, "idw"),  # lookahead 0
    (1, 10, 1, 8, 9, 6, 3, 10, 1, False, "dot"),
]


def _run(impl, inputs, mask, case):
    B, T, H, k_dim, n, v_dim, topk, chunk, la, _, score = case
    q, v, g, keys, values = inputs
    kw = dict(chunk_size=chunk, topk=topk, heads=H, lookahead=la, lr=0.7, addr_weight=1.3, score=score, mask=mask)
    if impl == "naive":
        out, nk, nv = naive_fwpkm_forward(q, v, g, keys, values, **kw)
    else:
        out, nk, nv, _ = fwpkm_forward(q, v, g, keys, values, inner_grad=impl, **kw)
    return out, nk, nv


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}T{}H{}k{}n{}v{}top{}C{}la{}m{}-{}".format(*c))
@pytest.mark.parametrize("impl", ["analytic", "autograd"])
def test_forward_memory_and_gradients_match_naive_fp64(case, impl):
    B, T, H, k_dim, n, v_dim = case[:6]
    inputs = fast_inputs(B, T, H, k_dim, n, v_dim)
    mask = (torch.rand(B, T) > 0.25) if case[9] else None
    gen = torch.Generator().manual_seed(7)
    ref = _run("naive", inputs, mask, case)
    got = _run(impl, inputs, mask, case)
    weights = [torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in ref]
    grads = []
    for outs in (ref, got):
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        grads.append(torch.autograd.grad(loss, inputs[:3], allow_unused=True, materialize_grads=True))
    for name, a, b in zip(("out", "keys", "values"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"{name} differs from the naive oracle")
    for name, a, b in zip(("dq", "dv", "dg"), grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"{name} differs from the naive oracle")


@pytest.mark.parametrize("impl", ["analytic", "autograd"])
def test_fp32_matches_naive_fp64(impl):
    case = (2, 13, 2, 8, 6, 5, 3, 5, 1, False, "idw")
    inputs64 = fast_inputs(2, 13, 2, 8, 6, 5)
    inputs32 = tuple(x.detach().float().requires_grad_(x.requires_grad) for x in inputs64)
    ref = _run("naive", inputs64, None, case)
    got = _run(impl, inputs32, None, case)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_no_grad_results_equal_grad_results_and_carry_no_graph():
    inputs = fast_inputs(2, 12, 1, 6, 5, 4)
    kw = dict(chunk_size=4, topk=2)
    with_grad = fwpkm_forward(*inputs, **kw)
    with torch.no_grad():
        without = fwpkm_forward(*inputs, **kw)
    for a, b in zip(with_grad[:3], without[:3]):
        assert not b.requires_grad
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_inputs_are_not_modified():
    inputs = fast_inputs(2, 12, 1, 6, 5, 4, requires_grad=False)
    before = [x.clone() for x in inputs]
    for mode in (torch.no_grad, torch.enable_grad):
        with mode():
            fwpkm_forward(*inputs, chunk_size=4, topk=2)
    for a, b in zip(inputs, before):
        assert torch.equal(a, b)


def test_addr_weight_zero_freezes_keys_and_zero_gate_freezes_values():
    q, v, g, keys, values = fast_inputs(2, 9, 1, 6, 5, 4, requires_grad=False)
    _, nk, _, _ = fwpkm_forward(q, v, g, keys, values, chunk_size=4, topk=2, addr_weight=0.0)
    assert torch.equal(nk, keys)
    _, _, nv, _ = fwpkm_forward(q, v, torch.zeros_like(g), keys, values, chunk_size=4, topk=2)
    assert torch.equal(nv, values)
