"""Properties of one write: it lowers the loss it descends, touches only what was read, and spreads usage. (Recall
well below the N/k capacity is measured by the memory benchmark: tests/benchmarks/test_memory.py.)"""
import math

import torch

from fwpkm_rag.memory import FwPKMConfig, SparseValues, memory_chunk
from fwpkm_rag.memory.addressing import addressing_loss

from helpers import fast_inputs


def _chunk(cfg, q, v, g, keys, values, write):
    return memory_chunk(q, v, g, None, keys, values, cfg, shared=True, write=write)


def test_one_write_lowers_the_memory_loss_of_its_chunk_and_changes_only_read_slots():
    cfg = FwPKMConfig(n_subkeys=9, k_dim=8, v_dim=6, topk=3, chunk_size=12, addr_weight=0.0)
    q, v, g, keys, values = fast_inputs(2, 12, 1, 8, 9, 6, dtype=torch.float32, requires_grad=False)
    table = SparseValues.fresh(values, 1)
    with torch.no_grad():
        first = _chunk(cfg, q, v, g, keys[None], table, write=True)
        again = _chunk(cfg, q, v, g, first.keys, first.values, write=True)  # re-read the same chunk after the write
    assert again.value_loss.item() < 0.5 * first.value_loss.item()
    changed = (first.values.dense(0) != values).any(-1).nonzero().squeeze(-1)
    read = torch.unique(first.slots)
    assert changed.numel() > 0 and set(changed.tolist()) <= set(read.tolist())


def test_addressing_loss_raises_slot_usage_entropy_on_a_skewed_stream():
    n = 16
    torch.manual_seed(0)
    centres = torch.randn(3, 8)  # every query lies near one of three points: a skewed stream
    def usage_entropy(addr_weight):
        cfg = FwPKMConfig(n_subkeys=n, k_dim=8, v_dim=4, topk=2, chunk_size=64, addr_weight=addr_weight, lr=0.5)
        keys = (torch.rand(2 * n, 4) * 2 - 1) * 0.35
        table = SparseValues.fresh(torch.randn(n * n, 4), 1)
        K = keys[None]
        gen = torch.Generator().manual_seed(1)
        for _ in range(40):
            q = centres[torch.randint(0, 3, (1, 64), generator=gen)] + 0.3 * torch.randn(1, 64, 8, generator=gen)
            with torch.no_grad():
                res = _chunk(cfg, q, torch.randn(1, 64, 4, generator=gen), torch.ones(1, 64), K, table, write=True)
            K, table = res.keys, res.values
        counts = torch.bincount(res.slots.reshape(-1), minlength=n * n).float()
        p = counts / counts.sum()
        return -(p[p > 0] * p[p > 0].log()).sum().item()
    frozen, learned = usage_entropy(0.0), usage_entropy(1.0)
    assert learned > frozen + 0.3, (frozen, learned)


def test_addressing_loss_is_minus_the_usage_entropy():
    sub = torch.randn(1, 5, 2, 2, 7)
    loss, p, usage = addressing_loss(sub, topk=3)
    assert torch.allclose(p.sum(-1), torch.ones(1, 5, 2, 2))
    assert ((p > 0).sum(-1) >= 3).all()
    entropy = -(usage * torch.log(usage + 1e-8)).sum(-1).sum(-1)
    torch.testing.assert_close(loss, -entropy)
    assert loss.item() >= -2 * math.log(7) - 1e-6
