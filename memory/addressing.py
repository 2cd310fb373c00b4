"""The sub-key addressing loss (marginal entropy of slot usage) and its gradient in closed form.

For each sub-key book m, every (token, head) row keeps its sub-scores at or above its k-th largest, softmaxes
them, and all rows of a memory group are averaged into one usage distribution p̄^m over the n sub-keys:

    L_addr = sum_m sum_j p̄^m_j log(p̄^m_j + 1e-8)          (= -H(p̄^1) - H(p̄^2))

Descending it spreads reads over the sub-keys. `addressing_key_grad` is dL_addr/dK written out, made only of
differentiable first-order ops, so an outer loss can be back-propagated through the key update without a
second-order autograd graph (tests hold it to memory/naive.py; memory/inner_autograd.py takes it by autograd).
"""
from __future__ import annotations

import torch
from torch import Tensor

USAGE_EPS = 1e-8


def addressing_probs(sub: Tensor, topk: int) -> Tensor:
    """Per-row softmax over the sub-scores at or above the row's k-th largest: (G,R,H,2,n) -> same shape."""
    threshold = sub.topk(topk, dim=-1).values[..., -1:]
    return torch.softmax(sub.masked_fill(sub < threshold, float("-inf")), dim=-1)


def addressing_loss(sub: Tensor, topk: int) -> tuple[Tensor, Tensor, Tensor]:
    """L_addr per group (G,), the row probabilities p (G,R,H,2,n) and the usage p̄ (G,2,n)."""
    p = addressing_probs(sub, topk)
    usage = p.mean(dim=(1, 2))  # all rows of all heads pooled
    loss = (usage * torch.log(usage + USAGE_EPS)).sum(dim=(-1, -2))
    return loss, p, usage


def addressing_key_grad(q: Tensor, keys: Tensor, sub: Tensor, p: Tensor, usage: Tensor, *, score: str) -> Tensor:
    """dL_addr/dK for one chunk, summed over groups' own keys.

    q (G,R,H,k_dim), keys (G,2Hn,k_dim/2), sub and p (G,R,H,2,n), usage (G,2,n) -> (G,2Hn,k_dim/2)
    """
    G, R, H, _, n = p.shape
    half = q.shape[-1] // 2
    # dL/dusage_j = log(u_j + eps) + u_j / (u_j + eps); usage is a mean over R*H rows.
    a = (torch.log(usage + USAGE_EPS) + usage / (usage + USAGE_EPS))[:, None, None]  # (G,1,1,2,n)
    d_sub = p * (a - (p * a).sum(-1, keepdim=True)) / (R * H)  # softmax backward; 0 off the kept entries
    qh = q.reshape(G, R, H, 2, half)
    book = keys.reshape(G, H, 2, n, half)
    if score == "idw":
        # s = -log(eps + d) so ds/dd = -1/(eps + d) = -exp(s); d = ||q - K||^2 so dd/dK = 2 (K - q).
        d_dist = -d_sub * torch.exp(sub)
        grad = 2 * (d_dist.sum(1)[..., None] * book - torch.einsum("grhmn,grhmd->ghmnd", d_dist, qh))
    else:
        grad = torch.einsum("grhmn,grhmd->ghmnd", d_sub, qh)
    return grad.reshape(keys.shape)
