"""The FwPKM layer gives the same outputs, memory and slow-weight gradients with either backend, and the
backend dispatch behaves as documented."""
import logging
import os

import pytest
import torch

_old = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"  # before triton decorates the kernels (see test_ops.py)
pytest.importorskip("triton")
from fwpkm_rag.kernels import triton_ops, triton_utils  # noqa: E402, F401  (decorates every op's kernels now)

if _old is None:
    os.environ.pop("TRITON_INTERPRET")
else:
    os.environ["TRITON_INTERPRET"] = _old

from fwpkm_rag.kernels import dispatch, resolve, set_backend, use_backend  # noqa: E402
from fwpkm_rag.memory import FwPKM, FwPKMConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_utils, "FILL_NAN", True)


def _layer():
    torch.manual_seed(0)
    cfg = FwPKMConfig(n_subkeys=7, k_dim=6, v_dim=5, heads=2, topk=3, chunk_size=5, q_conv=2)
    layer = FwPKM(12, cfg)
    with torch.no_grad():  # spread queries over many slots, as tests/memory/helpers.py does
        for lin in (layer.q_proj, layer.v_proj, layer.g_proj):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 0.1)
    return layer


def _run(backend, mode, inner_grad="analytic"):
    layer = _layer()
    if inner_grad != "analytic":
        layer.config = layer.config.replace(inner_grad=inner_grad)
    h = torch.randn(2, 12, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with use_backend(backend):
        res = layer(h, layer.init_state(2, mode=mode))
        res = layer(h[:, :4], res.state)  # a second call: reads rows rewritten by the first (the pool)
        weight = torch.randn(res.output.shape, generator=torch.Generator().manual_seed(2))
        params = dict(layer.named_parameters())
        grads = torch.autograd.grad((res.output * weight).sum(), [h, *params.values()])
    memory = [res.state.keys.detach()] + [res.state.dense_values(i).detach() for i in range(res.state.groups)]
    return res.output.detach(), memory, dict(zip(["input", *params], grads))


@pytest.mark.parametrize("mode", ["isolated", "shared"])
def test_layer_same_outputs_memory_and_slow_weight_gradients_with_either_backend(mode):
    out_t, mem_t, grads_t = _run("torch", mode)
    out_k, mem_k, grads_k = _run("triton", mode)
    torch.testing.assert_close(out_k, out_t, rtol=1e-5, atol=1e-6)
    for a, b in zip(mem_k, mem_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-5, msg=name)


def test_autograd_oracle_through_triton_gather_double_backward():
    # inner_grad="autograd" differentiates the gradient of the read: the gather's double backward.
    out_t, mem_t, grads_t = _run("torch", "shared", "autograd")
    out_k, mem_k, grads_k = _run("triton", "shared", "autograd")
    torch.testing.assert_close(out_k, out_t, rtol=1e-5, atol=1e-6)
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dispatch_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("FWPKM_BACKEND", raising=False)
    assert resolve(cpu) == "triton"  # auto on CPU under TRITON_INTERPRET=1
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert resolve(cpu) == "torch"  # auto on CPU without the interpreter
    with pytest.raises(RuntimeError):
        resolve(cpu, "triton")
    monkeypatch.setenv("FWPKM_BACKEND", "torch")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve(cpu) == "torch"
    with use_backend("triton"):
        assert resolve(cpu) == "triton"  # set_backend / use_backend beat the environment
    monkeypatch.setenv("FWPKM_BACKEND", "cuda")
    with pytest.raises(ValueError):
        resolve(cpu)
    with pytest.raises(ValueError):
        set_backend("fast")


def test_backend_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="fwpkm_rag.kernels"):
        for _ in range(3):
            dispatch.get_backend(torch.device("cpu"), "triton")
    assert sum("triton backend" in r.getMessage() for r in caplog.records) == 1


def test_import_fwpkm_rag_does_not_import_triton():
    from lightimport import assert_import_light

    assert_import_light("fwpkm_rag", "fwpkm_rag.memory", "fwpkm_rag.kernels", forbidden=("triton",))
