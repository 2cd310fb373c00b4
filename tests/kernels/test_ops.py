"""Every hot op: triton kernels (under TRITON_INTERPRET=1, on CPU) == torch backend == the loop reference in the
op's naive.py (kernels/<op>/naive.py): forward, gradients and (gather) double backward, fp64 / fp32 / bf16, small
odd shapes."""
import os

import pytest
import torch

# The interpreter flag must be set before triton decorates the kernels (triton reads it at decoration time).
# It is restored right after, so that `auto` in other test modules of this process still means torch on CPU;
# the fixture below sets it again while each test here runs (the triton backend checks it per call).
_old = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
from fwpkm_rag.kernels import triton_ops, triton_utils  # noqa: E402, F401  (decorates every op's kernels now)

if _old is None:
    os.environ.pop("TRITON_INTERPRET")
else:
    os.environ["TRITON_INTERPRET"] = _old

from fwpkm_rag.kernels import gather_dot, product_key_topk, read_weights, row_update, weighted_gather  # noqa: E402
from fwpkm_rag.kernels.gather.naive import reference_gather_dot, reference_weighted_gather  # noqa: E402
from fwpkm_rag.kernels.product_key.naive import reference_product_key_topk, reference_read_weights  # noqa: E402
from fwpkm_rag.kernels.row_update.naive import reference_row_update  # noqa: E402
from fwpkm_rag.memory import SparseValues  # noqa: E402

BACKENDS = ["torch", "triton"]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_utils, "FILL_NAN", True)  # an element a kernel forgets to write becomes NaN


def _close(got, ref, dtype, msg):
    assert torch.isfinite(got).all(), f"{msg}: non-finite (an unwritten output element?)"
    torch.testing.assert_close(got.double(), ref.double(), msg=msg, **TOL[dtype])


def _table(dtype, N=11, P=4, d=13, G=2, seed=0):
    """A SparseValues with 2 groups and some rewritten rows: a non-empty pool, the layout the core uses."""
    gen = torch.Generator().manual_seed(seed)
    values = SparseValues.fresh(torch.randn(N, d, generator=gen).to(dtype), G)
    keys = torch.tensor([3, 5, N + 5, N + 8])[:P]  # group 0 rows 3, 5; group 1 rows 5, 8
    return values.assign(keys, torch.randn(P, d, generator=gen).to(dtype)), gen


def _inputs(dtype, M=7, J=3, seed=0):
    values, gen = _table(dtype, seed=seed)
    G, N = values.groups, values.n_slots
    slots = torch.randint(0, N, (G, M, J), generator=gen)
    slots[:, :, 0] = torch.tensor([3, 5])[:, None].expand(G, M)[:, :]  # force repeats and rewritten rows
    flat, index = values.resolve(slots)
    w = torch.rand(G, M, J, generator=gen).to(dtype)
    return values, flat.reshape(G * M, J), index.reshape(G * M, J), w.reshape(G * M, J), gen


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_weighted_gather_forward_gradients_and_double_backward(dtype):
    values, _, index, w, gen = _inputs(dtype)
    base = values.base.clone().requires_grad_()
    pool = values.rows.clone().requires_grad_()
    w = w.clone().requires_grad_()
    up = torch.randn(index.shape[0], base.shape[1], generator=gen).to(dtype).requires_grad_()
    results = {}
    for name in ["reference", *BACKENDS]:
        if name == "reference":
            out = reference_weighted_gather(base, pool, index, w)
        else:
            out = weighted_gather(base, pool, index, w, backend=name)
        grads = torch.autograd.grad((out * up).sum(), (base, pool, w), create_graph=True)
        # double backward: a loss of the gradients, differentiated again w.r.t. everything
        probes = [torch.randn(gr.shape, generator=torch.Generator().manual_seed(i)).to(dtype) for i, gr in enumerate(grads)]
        second = torch.autograd.grad(sum((gr * pr).sum() for gr, pr in zip(grads, probes)), (base, pool, w, up),
                                     allow_unused=True, materialize_grads=True)
        results[name] = (out, *grads, *second)
    labels = ["out", "dbase", "dpool", "dw", "d2base", "d2pool", "d2w", "d2up"]
    for name in BACKENDS:
        for label, got, ref in zip(labels, results[name], results["reference"]):
            _close(got, ref, dtype, f"{name} {label}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_gather_dot_forward_and_gradients_match_loop(dtype):
    values, _, index, _, gen = _inputs(dtype)
    leaves = [t.clone().requires_grad_() for t in (
        torch.randn(index.shape[0], values.base.shape[1], generator=gen).to(dtype), values.base, values.rows)]
    up = torch.randn(index.shape, generator=gen).to(dtype)
    ref = reference_gather_dot(leaves[0], leaves[1], leaves[2], index)
    ref_grads = torch.autograd.grad((ref * up).sum(), leaves)
    for name in BACKENDS:
        got = gather_dot(leaves[0], leaves[1], leaves[2], index, backend=name)
        _close(got, ref, dtype, name)
        for label, a, b in zip(["dx", "dbase", "dpool"], torch.autograd.grad((got * up).sum(), leaves), ref_grads):
            _close(a, b, dtype, f"{name} {label}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_row_update_forward_and_gradients(dtype):
    values, flat, index, w, gen = _inputs(dtype)
    err = torch.randn(index.shape[0], values.base.shape[1], generator=gen).to(dtype)
    scale = 0.7 * 3
    ref_keys, ref_rows, ref_counts = reference_row_update(values.base, values.rows, index, flat, w, err, scale=scale)
    assert ref_counts.max() > 1  # some rows are read by several entries: the normalisation is exercised
    for name in BACKENDS:
        with torch.no_grad():  # the fused one-pass kernel
            got = row_update(values.base, values.rows, index, flat, w, err, scale=scale, backend=name)
        assert torch.equal(got.keys, ref_keys) and torch.equal(got.counts, ref_counts)
        _close(got.rows, ref_rows, dtype, f"{name} fused rows")
    # with autograd recording: the composed path, its value and its gradients
    leaves = [t.clone().requires_grad_() for t in (values.base, values.rows, w, err)]
    up = torch.randn(ref_rows.shape, generator=gen).to(dtype)
    ref = reference_row_update(leaves[0], leaves[1], index, flat, leaves[2], leaves[3], scale=scale)[1]
    ref_grads = torch.autograd.grad((ref * up).sum(), leaves)
    for name in BACKENDS:
        got = row_update(leaves[0], leaves[1], index, flat, leaves[2], leaves[3], scale=scale, backend=name).rows
        _close(got, ref, dtype, f"{name} rows (autograd path)")
        for label, a, b in zip(["dbase", "dpool", "dw", "derr"], torch.autograd.grad((got * up).sum(), leaves), ref_grads):
            _close(a, b, dtype, f"{name} {label}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_row_update_is_deterministic_under_heavy_collisions(backend):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(5, 9, generator=gen)
    index = torch.randint(0, 3, (40, 4), generator=gen)  # 160 entries on 3 rows
    w, err = torch.rand(40, 4, generator=gen), torch.randn(40, 9, generator=gen) * 1e3
    runs = [row_update(base, base[:0], index, index, w, err, scale=1.0, backend=backend).rows for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("score", ["idw", "dot"])
def test_product_key_topk_matches_loop(score):
    gen = torch.Generator().manual_seed(5)
    G, R, H, k_dim, n, k = 2, 3, 2, 6, 7, 3
    q = torch.randn(G, R, H, k_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(G, 2 * H * n, k_dim // 2, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = reference_product_key_topk(q, keys, topk=k, score=score)
    probes = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in ref[1:]]
    ref_grads = torch.autograd.grad(sum((x * p).sum() for x, p in zip(ref[1:], probes)), (q, keys))
    for name in BACKENDS:
        got = product_key_topk(q, keys, topk=k, score=score, backend=name)
        assert torch.equal(got[0], ref[0])
        for a, b in zip(got[1:], ref[1:]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        grads = torch.autograd.grad(sum((x * p).sum() for x, p in zip(got[1:], probes)), (q, keys))
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_empty_and_single_entry_edges():
    base = torch.randn(4, 3)
    for name in BACKENDS:
        out = weighted_gather(base, base[:0], torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), backend=name)
        assert out.shape == (0, 3)
        one = weighted_gather(base, base[:0], torch.tensor([[2]]), torch.tensor([[1.0]]), backend=name)
        assert torch.equal(one[0], base[2])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_read_weights_pool_heads_and_match_loop(dtype):
    gen = torch.Generator().manual_seed(6)
    scores = (torch.randn(2, 3, 2, 3, generator=gen) * 4).to(dtype).requires_grad_()  # (G, R, H, k)
    got, ref = read_weights(scores), reference_read_weights(scores)
    _close(got, ref, dtype, "read weights")
    torch.testing.assert_close(got.sum((-1, -2)), torch.ones(2, 3, dtype=dtype))  # one softmax over H*k per token
    probe = torch.randn(scores.shape, generator=gen).to(dtype)
    (g_got,), (g_ref,) = (torch.autograd.grad((x * probe).sum(), scores) for x in (got, ref))
    _close(g_got, g_ref, dtype, "read weights gradient")
