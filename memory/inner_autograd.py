"""`FwPKMConfig(inner_grad="autograd")`: the chunk's inner SGD step with its gradients taken by autograd.

The paper's code takes the inner gradients with ``torch.autograd.grad(..., create_graph=True)``; the default
(`inner_grad="analytic"`, `core.analytic_step`) writes them out in closed form and is what every path uses.
This step is kept because `inner_grad` is a public, checkpointed config field: the same update, computed the
paper's way, in one function that `core.memory_chunk` calls in place of `analytic_step`. It is slower (a second
gather of the touched rows, a second scoring of the keys) and differentiates the gradient of the read, so an
outer loss through it exercises the gather's double backward. memory/naive.py stays the independent oracle.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fwpkm_rag.kernels import group_entries, product_key_topk, weighted_gather
from fwpkm_rag.memory.addressing import addressing_loss
from fwpkm_rag.memory.chunk import ChunkRead, ChunkStep
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.memory.values import SparseValues


def autograd_step(read: ChunkRead, target: Tensor, pair_w: Tensor, keys: Tensor, values: SparseValues,
                  cfg: FwPKMConfig) -> ChunkStep:
    """The same step as core.analytic_step: touched rows (U,), their new values (U, v_dim), new keys.

    target (G, R, v_dim) and pair_w (G, R) are the chunk's lookahead targets and write weights. With an outer
    loss recording (grad enabled) the step keeps its graph (create_graph=True); otherwise it is detached.
    """
    outer = torch.is_grad_enabled()
    G, R, H, k = read.slots.shape
    M, J = G * R, H * k
    seg = group_entries(read.row_keys.reshape(M, J))  # the touched rows: seg.keys (U,), seg.inverse (M, J)
    new_keys = keys
    with torch.enable_grad():
        # The chunk's reads again, from a small local table of the touched rows, so autograd.grad w.r.t. it is
        # the per-row inner gradient G_u (summed over the row's reads by the gather's scatter backward).
        rows = values.lookup(seg.keys)  # (U, v_dim)
        if not (outer and rows.requires_grad):
            rows = rows.detach().requires_grad_()
        vhat = weighted_gather(rows, rows[:0], seg.inverse, read.weights.reshape(M, J)).reshape(G, R, -1)
        value_loss = 0.5 * (pair_w * (vhat - target).pow(2).sum(-1)).sum()
        (grad_rows,) = torch.autograd.grad(value_loss, rows, create_graph=outer)  # (U, v_dim)
        # V_u - lr * (k*H / n_u) * dL/dV_u, n_u = reads of u in the chunk (last and padded tokens included)
        new_rows = rows - (cfg.lr * k * H / seg.counts.to(grad_rows.dtype)).unsqueeze(-1) * grad_rows
        if cfg.addr_weight > 0:
            K = keys if outer and keys.requires_grad else keys.detach().requires_grad_()
            sub = product_key_topk(read.queries, K, topk=k, score=cfg.score, eps=cfg.eps)[2]  # (G, R, H, 2, n)
            (grad_keys,) = torch.autograd.grad(addressing_loss(sub, k)[0].sum(), K, create_graph=outer)
            new_keys = K - (cfg.lr * cfg.addr_weight) * grad_keys
    if not outer:
        new_rows = new_rows.detach()
        new_keys = new_keys if new_keys is keys else new_keys.detach()  # frozen keys stay the same object
    return ChunkStep(seg.keys, new_rows, new_keys)
