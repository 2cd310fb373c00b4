"""Op (a): product-key scoring and two-stage top-k, and the read weights (softmax over a token's selections).

Files: `naive.py` the loop reference (tests), `torch_impl.py` the implementation. There is no triton version:
the triton backend runs the torch code (a matmul + torch.topk; see docs/kernels.md).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from fwpkm_rag.kernels.dispatch import get_backend
from fwpkm_rag.kernels.product_key import torch_impl


def product_key_topk(q: Tensor, keys: Tensor, *, topk: int, score: str = "idw", eps: float = 1e-3,
                     backend: Optional[str] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Product-key scoring and two-stage top-k.

    q (G, R, H, k_dim), keys (G, 2Hn, k_dim/2) -> slots (G, R, H, k) int64 (i*n + j), scores (G, R, H, k)
    (s1_i + s2_j, differentiable), sub (G, R, H, 2, n) every sub-key score (for the addressing loss).
    """
    return get_backend(q.device, backend).product_key_topk(q, keys, topk=topk, score=score, eps=eps)


def read_weights(scores: Tensor) -> Tensor:
    """Softmax over every (head, slot) a token selected: (G, R, H, k) -> (G, R, H, k), heads pooled."""
    return torch_impl.read_weights(scores)
