"""Product-key scoring, two-stage top-k and read weights in torch: the implementation on every backend.

On a GPU the scoring is a matmul, which cuBLAS already does well, and torch.topk is the selection; no fused
triton scoring kernel has shown a gain yet (docs/kernels.md), so the triton backend uses these functions too.
Both are ordinary differentiable torch code (twice differentiable: the addressing-loss key gradient and
`inner_grad="autograd"` differentiate through them).
"""
from __future__ import annotations

import torch
from torch import Tensor


def product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3):
    """Score queries against both sub-key books and select each head's top-k slots.

    q:    (G, R, H, k_dim)       queries, one per head
    keys: (G, 2*H*n, k_dim/2)    sub-keys; row (h*2 + m)*n + j is sub-key j of book m of head h
    returns
      slots  (G, R, H, k) int64  slot index i*n + j (i from book 0, j from book 1)
      scores (G, R, H, k)        s1_i + s2_j of the selected slots
      sub    (G, R, H, 2, n)     every sub-key score (the addressing loss needs them all)
    """
    G, R, H, k_dim = q.shape
    half = k_dim // 2
    n = keys.shape[-2] // (2 * H)
    qh = q.reshape(G, R, H, 2, half)
    book = keys.reshape(G, H, 2, n, half)
    dot = torch.einsum("grhmd,ghmnd->grhmn", qh, book)  # (G, R, H, 2, n)
    if score == "idw":
        # ||q||^2 - 2 q.K + ||K||^2, clamped: twice differentiable at every size, unlike torch.cdist.
        sq_dist = qh.pow(2).sum(-1, keepdim=True) - 2 * dot + book.pow(2).sum(-1)[:, None]  # (G, R, H, 2, n)
        sub = -torch.log(eps + sq_dist.clamp_min(0))
    elif score == "dot":
        sub = dot
    else:
        raise ValueError(f"unknown score {score!r}")
    top_scores, top_idx = sub.topk(topk, dim=-1)  # (G, R, H, 2, k) per book
    cand = top_scores[..., 0, :, None] + top_scores[..., 1, None, :]  # (G, R, H, k, k) s1_a + s2_b
    scores, flat = cand.flatten(-2).topk(topk, dim=-1)  # (G, R, H, k) best k of the k*k candidates
    i = top_idx[..., 0, :].gather(-1, torch.div(flat, topk, rounding_mode="floor"))  # (G, R, H, k) book-0 index
    j = top_idx[..., 1, :].gather(-1, flat % topk)  # (G, R, H, k) book-1 index
    slots = i * n + j
    return slots, scores, sub


def read_weights(scores: Tensor) -> Tensor:
    """Softmax over every (head, slot) a token selected: (G, R, H, k) -> (G, R, H, k), heads pooled."""
    G, R, H, k = scores.shape
    return torch.softmax(scores.reshape(G, R, H * k), dim=-1).reshape(G, R, H, k)
