"""Naive reference ("oracle") of the FwPKM memory's functional core: the read of spec §5 and the per-chunk
write of spec §6, in the paper's shared mode (spec §7: one memory for the whole batch).

It is written to be obvious, not fast: plain Python loops over chunks, sequences, tokens and heads, and the
inner gradients taken with ``torch.autograd.grad`` (``create_graph=True`` when the caller's tensors require
grad, so an outer loss back-propagates through every unrolled update). Tests compare the fast implementation
against it on tiny shapes; nothing else should call it.

Layout (spec §6): ``keys`` is (2*H*n, k_dim/2), row ``(h*2 + m)*n + j`` is sub-key j of book m of head h;
``values`` is (n*n, v_dim), slot ``i*n + j`` with i from book 0 and j from book 1, shared by all heads.
"""
from __future__ import annotations

import torch

from fwpkm_rag.errors import InputError

_SCORES = ("idw", "dot")


def naive_fwpkm_forward(q, v, g, keys, values, *, chunk_size, topk, heads=1, lookahead=1, lr=1.0,
                        addr_weight=1.0, score="idw", eps=1e-3, mask=None):
    """Read and write the shared memory chunk by chunk.

    q: (B, T, H*k_dim); v: (B, T, v_dim); g: (B, T) in (0, 1); keys: (2*H*n, k_dim/2); values: (n*n, v_dim);
    mask: optional (B, T) bool, True = real token.

    Returns ``(out, new_keys, new_values)``: out (B, T, v_dim) is the gathered read v̂ of every token (each
    chunk reads the memory left by the previous chunk); new_keys / new_values are the memory after the last
    chunk (the trailing partial chunk is written too).
    """
    n, v_dim = _check(q, v, g, keys, values, chunk_size, topk, heads, lookahead, score, mask)
    B, T = g.shape
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
    needs_graph = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, v, g, keys, values))

    K, V = keys, values
    outs = []
    with torch.enable_grad():
        for start in range(0, T, chunk_size):
            stop = min(start + chunk_size, T)
            if not needs_graph:
                K, V = K.detach(), V.detach()
            if not V.requires_grad:
                V = V.detach().requires_grad_(True)
            if addr_weight != 0 and not K.requires_grad:
                K = K.detach().requires_grad_(True)
            out_c, K, V = _chunk(q[:, start:stop], v[:, start:stop], g[:, start:stop], mask[:, start:stop],
                                 K, V, n=n, topk=topk, heads=heads, lookahead=lookahead, lr=lr,
                                 addr_weight=addr_weight, score=score, eps=eps, create_graph=needs_graph)
            outs.append(out_c)
        out = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, v_dim)
    if not needs_graph:
        out, K, V = out.detach(), K.detach(), V.detach()
    return out, K, V


# ----------------------------------------------------------------------------------------------- one chunk

def _chunk(q, v, g, mask, K, V, *, n, topk, heads, lookahead, lr, addr_weight, score, eps, create_graph):
    """Read chunk (B, L, ...) from (K, V), then return (out (B, L, v_dim), K_new, V_new)."""
    B, L = g.shape
    reads = [[_read_token(q[b, t], K, V, n=n, topk=topk, heads=heads, score=score, eps=eps)
              for t in range(L)] for b in range(B)]
    out = torch.stack([torch.stack([reads[b][t]["vhat"] for t in range(L)]) for b in range(B)])  # (B, L, v_dim)

    V_new = _value_update(out, v, g, mask, reads, V, n=n, topk=topk, heads=heads, lookahead=lookahead,
                          lr=lr, create_graph=create_graph)
    K_new = _key_update(reads, K, topk=topk, lr=lr, addr_weight=addr_weight, create_graph=create_graph)
    return out, K_new, V_new


def _value_update(out, v, g, mask, reads, V, *, n, topk, heads, lookahead, lr, create_graph):
    """V - lr * (topk*H / n_i) * dL_val/dV, with L_val the gated lookahead MSE of the chunk."""
    B, L = g.shape
    terms = []
    for b in range(B):
        for t in range(L - lookahead):
            if bool(mask[b, t]) and bool(mask[b, t + lookahead]):
                diff = out[b, t] - v[b, t + lookahead]                      # (v_dim,)
                terms.append(g[b, t] * (diff ** 2).sum())
    if terms:
        loss = 0.5 * torch.stack(terms).sum()
        (grad_v,) = torch.autograd.grad(loss, V, create_graph=create_graph, allow_unused=True)
        if grad_v is None:
            grad_v = torch.zeros_like(V)
    else:
        grad_v = torch.zeros_like(V)

    slots = torch.cat([reads[b][t]["slots"] for b in range(B) for t in range(L)])  # (B*L*H*k,)
    counts = torch.bincount(slots, minlength=n * n).clamp(min=1).to(V.dtype)      # (n*n,)
    scale = (topk * heads) / counts                                                # (n*n,)
    return V - lr * scale[:, None] * grad_v


def _key_update(reads, K, *, topk, lr, addr_weight, create_graph):
    """K - lr * addr_weight * dL_addr/dK, L_addr = sum over books of minus the entropy of the mean row."""
    if addr_weight == 0:
        return K
    loss = 0.0
    for m in range(2):
        rows = [r["book_scores"][h][m] for per_seq in reads for r in per_seq for h in range(len(r["book_scores"]))]
        probs = [_topk_softmax(s, topk) for s in rows]                    # each (n,)
        p_bar = torch.stack(probs).mean(dim=0)                             # (n,)
        loss = loss + (p_bar * torch.log(p_bar + 1e-8)).sum()
    (grad_k,) = torch.autograd.grad(loss, K, create_graph=create_graph)
    return K - lr * addr_weight * grad_k


def _topk_softmax(s, k):
    """Softmax of s (n,) over the entries >= its k-th largest (ties keep more), others get 0."""
    kth = torch.topk(s, k).values[-1]
    kept = torch.where(s >= kth, s, torch.full_like(s, float("-inf")))
    return torch.softmax(kept, dim=0)


# ---------------------------------------------------------------------------------------------------- read

def _sub_scores(qm, Km, score, eps):
    """Scores of one query half qm (d,) against one book Km (n, d) -> (n,)."""
    if score == "idw":
        dist2 = ((qm[None, :] - Km) ** 2).sum(-1)                          # (n,)
        return -torch.log(eps + dist2)
    return Km @ qm                                                          # dot


def _read_token(q_tok, K, V, *, n, topk, heads, score, eps):
    """Read one token. q_tok: (H*k_dim,). Returns dict with vhat (v_dim,), slots (H*k,), book_scores."""
    k_half = K.shape[1]
    qh = q_tok.reshape(heads, 2 * k_half)                                      # (H, k_dim)
    all_slots, all_scores, book_scores = [], [], []
    for h in range(heads):
        s = []
        for m in range(2):
            Km = K[(h * 2 + m) * n:(h * 2 + m + 1) * n]                      # (n, k_dim/2)
            qm = qh[h, m * k_half:(m + 1) * k_half]                          # (k_dim/2,)
            s.append(_sub_scores(qm, Km, score, eps))                       # (n,)
        book_scores.append(s)
        top0, top1 = torch.topk(s[0], topk), torch.topk(s[1], topk)
        cand = top0.values[:, None] + top1.values[None, :]                  # (k, k)
        best = torch.topk(cand.reshape(-1), topk)
        i = top0.indices[best.indices // topk]
        j = top1.indices[best.indices % topk]
        all_slots.append(i * n + j)                                          # (k,)
        all_scores.append(best.values)                                       # (k,)
    slots = torch.cat(all_slots)                                             # (H*k,)
    w = torch.softmax(torch.cat(all_scores), dim=0)                          # (H*k,) heads pooled
    vhat = (w[:, None] * V[slots]).sum(0)                                    # (v_dim,)
    return {"vhat": vhat, "slots": slots, "book_scores": book_scores}


# -------------------------------------------------------------------------------------------------- checks

def _check(q, v, g, keys, values, chunk_size, topk, heads, lookahead, score, mask):
    """Validate shapes and options; return (n, v_dim)."""
    if score not in _SCORES:
        raise InputError(f"score must be one of {_SCORES}, got {score!r}")
    if heads < 1 or chunk_size < 1 or lookahead < 0:
        raise InputError("heads and chunk_size must be >= 1 and lookahead >= 0")
    if keys.dim() != 2 or values.dim() != 2 or keys.shape[0] % (2 * heads):
        raise InputError("keys must be (2*H*n, k_dim/2) and values (n*n, v_dim)")
    n = keys.shape[0] // (2 * heads)
    k_dim = 2 * keys.shape[1]
    v_dim = values.shape[1]
    if values.shape[0] != n * n:
        raise InputError(f"values has {values.shape[0]} rows, expected n*n = {n * n}")
    if not 1 <= topk <= n:
        raise InputError(f"topk must be in [1, n={n}], got {topk}")
    if q.dim() != 3 or q.shape[-1] != heads * k_dim:
        raise InputError(f"q must be (B, T, {heads * k_dim}), got {tuple(q.shape)}")
    B, T = q.shape[:2]
    if tuple(v.shape) != (B, T, v_dim) or tuple(g.shape) != (B, T):
        raise InputError("v must be (B, T, v_dim) and g (B, T), matching q")
    if mask is not None and (tuple(mask.shape) != (B, T) or mask.dtype != torch.bool):
        raise InputError("mask must be a (B, T) bool tensor")
    return n, v_dim
