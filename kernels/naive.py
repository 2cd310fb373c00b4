"""Slow, obvious loop references of the three hot ops (tests only; nothing else should call them).

Plain Python loops over tokens, heads and entries, made of differentiable torch ops on single rows, so
autograd gives the reference gradients (and second derivatives) too.
"""
from __future__ import annotations

import torch
from torch import Tensor


def naive_product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3):
    """Same contract as kernels.product_key_topk, one (group, token, head) at a time."""
    G, R, H, k_dim = q.shape
    half = k_dim // 2
    n = keys.shape[-2] // (2 * H)
    slots = torch.zeros(G, R, H, topk, dtype=torch.long)
    scores, subs = [], []
    for g in range(G):
        for r in range(R):
            for h in range(H):
                sub = []
                for m in range(2):
                    qm = q[g, r, h, m * half:(m + 1) * half]
                    book = keys[g, (h * 2 + m) * n:(h * 2 + m + 1) * n]
                    if score == "idw":
                        sub.append(-torch.log(eps + ((qm[None] - book) ** 2).sum(-1)))
                    else:
                        sub.append(book @ qm)
                subs.append(torch.stack(sub))
                t0, t1 = sub[0].topk(topk), sub[1].topk(topk)
                cand = {}
                for a in range(topk):
                    for b in range(topk):
                        cand[(a, b)] = t0.values[a] + t1.values[b]
                best = sorted(cand, key=lambda ab: -float(cand[ab].detach()))[:topk]
                for c, (a, b) in enumerate(best):
                    slots[g, r, h, c] = t0.indices[a] * n + t1.indices[b]
                scores.append(torch.stack([cand[ab] for ab in best]))
    return (slots, torch.stack(scores).reshape(G, R, H, topk),
            torch.stack(subs).reshape(G, R, H, 2, n))


def _row(base: Tensor, pool: Tensor, i: int) -> Tensor:
    return base[i] if i < base.shape[0] else pool[i - base.shape[0]]


def naive_weighted_gather(base: Tensor, pool: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """out[m] = sum_j weights[m, j] * [base; pool][index[m, j]], one entry at a time."""
    M, J = index.shape
    outs = []
    for m in range(M):
        acc = base.new_zeros(base.shape[1])
        for j in range(J):
            acc = acc + weights[m, j] * _row(base, pool, int(index[m, j]))
        outs.append(acc)
    return torch.stack(outs) if outs else base.new_zeros(0, base.shape[1])


def naive_row_update(base: Tensor, pool: Tensor, index: Tensor, keys: Tensor, weights: Tensor, err: Tensor, *,
                     scale: float):
    """(keys (U,), rows (U, d), counts (U,)): rows[u] = T[row of u] - scale * sum(w * err) / n_u, by a dict."""
    M, J = index.shape
    grads, counts, rows_of = {}, {}, {}
    for m in range(M):
        for j in range(J):
            key = int(keys[m, j])
            contrib = weights[m, j] * err[m]
            grads[key] = grads[key] + contrib if key in grads else contrib
            counts[key] = counts.get(key, 0) + 1
            rows_of[key] = int(index[m, j])
    order = sorted(grads)
    new = [_row(base, pool, rows_of[u]) - scale * grads[u] / counts[u] for u in order]
    return (torch.tensor(order, dtype=torch.long), torch.stack(new) if new else base.new_zeros(0, base.shape[1]),
            torch.tensor([counts[u] for u in order], dtype=torch.long))
