"""Small builders shared by the memory tests."""
from __future__ import annotations

import torch

from fwpkm_rag.memory import FwPKM, FwPKMConfig


def tiny_config(**over) -> FwPKMConfig:
    base = dict(n_subkeys=7, k_dim=6, v_dim=5, heads=1, topk=3, chunk_size=5, lookahead=1)
    base.update(over)
    return FwPKMConfig(**base)


def tiny_layer(d_model: int = 12, torch_seed: int = 0, **over) -> FwPKM:
    torch.manual_seed(torch_seed)
    layer = FwPKM(d_model, tiny_config(**over))
    # Larger projections than the N(0, 0.02) init so that queries spread over many slots in tests.
    with torch.no_grad():
        for lin in (layer.q_proj, layer.v_proj, layer.g_proj):
            lin.weight.normal_(0, 0.5)
            lin.bias.normal_(0, 0.1)
    return layer


def fast_inputs(B, T, H, k_dim, n, v_dim, dtype=torch.float64, requires_grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H * k_dim, dtype=dtype, generator=gen)
    v = torch.randn(B, T, v_dim, dtype=dtype, generator=gen)
    g = torch.rand(B, T, dtype=dtype, generator=gen)
    keys = (torch.rand(2 * H * n, k_dim // 2, dtype=dtype, generator=gen) * 2 - 1) * 0.7
    values = torch.randn(n * n, v_dim, dtype=dtype, generator=gen) / v_dim**0.5
    for t in (q, v, g):
        t.requires_grad_(requires_grad)
    return q, v, g, keys, values


def state_tensors(state, group=None):
    """The memory content of a state as a tuple of tensors (keys, dense values per group)."""
    groups = range(state.groups) if group is None else [group]
    return [state.keys] + [state.dense_values(i) for i in groups]
