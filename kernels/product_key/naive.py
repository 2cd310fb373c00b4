"""Python-loop references of product-key scoring + top-k and of the read weights (tests only).

One (group, token, head) at a time, made of differentiable torch ops on single rows, so autograd gives the
reference gradients too. Named `reference_*` (not `naive_*`): the benchmarks' "naive" paths are something else,
the unoptimised torch baselines that the speed-ups are measured against.
"""
from __future__ import annotations

import torch
from torch import Tensor


def reference_product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3):
    """Same contract as kernels.product_key_topk: (slots (G,R,H,k), scores (G,R,H,k), sub (G,R,H,2,n))."""
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
                    qm = q[g, r, h, m * half:(m + 1) * half]  # (k_dim/2,)
                    book = keys[g, (h * 2 + m) * n:(h * 2 + m + 1) * n]  # (n, k_dim/2)
                    if score == "idw":
                        sub.append(-torch.log(eps + ((qm[None] - book) ** 2).sum(-1)))  # (n,)
                    else:
                        sub.append(book @ qm)  # (n,)
                subs.append(torch.stack(sub))  # (2, n)
                t0, t1 = sub[0].topk(topk), sub[1].topk(topk)
                cand = {(a, b): t0.values[a] + t1.values[b] for a in range(topk) for b in range(topk)}
                best = sorted(cand, key=lambda ab: -float(cand[ab].detach()))[:topk]
                for c, (a, b) in enumerate(best):
                    slots[g, r, h, c] = t0.indices[a] * n + t1.indices[b]
                scores.append(torch.stack([cand[ab] for ab in best]))  # (k,)
    return (slots, torch.stack(scores).reshape(G, R, H, topk), torch.stack(subs).reshape(G, R, H, 2, n))


def reference_read_weights(scores: Tensor) -> Tensor:
    """Same contract as kernels.read_weights: one softmax per token over its H*k selected scores, written out."""
    G, R, H, k = scores.shape
    out = []
    for g in range(G):
        for r in range(R):
            e = torch.exp(scores[g, r] - scores[g, r].max())  # (H, k), shifted for stability
            out.append(e / e.sum())
    return torch.stack(out).reshape(G, R, H, k)
