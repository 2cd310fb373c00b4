"""Small random FwPKM language models shared by the model tests (not the presets: tests stay fast)."""
from __future__ import annotations

import torch

from fwpkm_rag.memory import FwPKMConfig
from fwpkm_rag.modeling import FwPKMForCausalLM, FwPKMModelConfig

VOCAB = 61


def tiny_model_config(**over) -> FwPKMModelConfig:
    base = dict(
        vocab_size=VOCAB, d_model=32, n_layers=3, n_heads=2, window=5, fwpkm_layers=[0, 2],
        fwpkm=FwPKMConfig(n_subkeys=8, k_dim=8, v_dim=8, heads=2, topk=3, chunk_size=4, q_conv=3).to_dict(),
    )
    base.update(over)
    return FwPKMModelConfig(**base)


def tiny_model(seed: int = 0, **over) -> FwPKMForCausalLM:
    torch.manual_seed(seed)
    model = FwPKMForCausalLM(tiny_model_config(**over)).eval()
    # Larger memory projections than N(0, 0.02) so that reads spread over many slots and the gate varies.
    with torch.no_grad():
        for layer in model.fwpkm_modules:
            for lin in (layer.q_proj, layer.v_proj, layer.g_proj, layer.o_proj):
                lin.weight.normal_(0, 0.5)
                lin.bias.normal_(0, 0.1)
    return model


def memory_tensors(state):
    """Everything a MemoryState remembers, as comparable tensors (dense values per group)."""
    values = [state.values.dense(g) for g in range(state.groups)]
    return [state.keys, *values, state.pending_q, state.pending_v, state.pending_g, state.pending_mask.float()]


def assert_same_memory(a, b, exact=False):
    assert a.position == b.position and a.pending == b.pending and a.updates == b.updates
    for x, y in zip(memory_tensors(a), memory_tensors(b)):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
