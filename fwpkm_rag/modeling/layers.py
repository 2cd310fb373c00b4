"""Building blocks of the FwPKM language model: RoPE, sliding-window attention, SwiGLU, static PKM, the block.

Shapes: B batch, T tokens of this call, P cached tokens before them (at most window-1), S = P + T keys,
h attention heads, dh head width, d d_model.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwpkm_rag.memory import FwPKM

# Queries are processed in blocks of at least this many tokens, so one long call never builds a T x T mask.
ATTN_BLOCK = 256


def rope_tables(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin (T, dh/2) for absolute positions (T,).

    The angles are formed in float64 and reduced mod 2*pi before the cast: at position 10^6 a float32 angle
    would already be off by ~0.06 rad, and streams here run to millions of tokens.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = torch.remainder(positions.double()[:, None] * inv_freq[None, :], 2 * math.pi)  # (T, dh/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate feature pairs (first half, second half) of x (B, h, T, dh) by the position angles."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, h, T, dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def window_attention(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, window: int) -> Tensor:
    """Causal sliding-window attention of the T last keys' queries.

    q (B,h,T,dh); k, v (B,h,S,dh) with the queries at key positions S-T .. S-1; key_valid (B,S) bool (False =
    padding). Query t sees keys t-window+1 .. t that are valid, and always itself (so a padded query row is
    never empty). Queries go in blocks so memory stays O(T * (block + window)) for any T.
    """
    B, h, T, dh = q.shape
    S = k.shape[2]
    P = S - T
    out = []
    block = max(ATTN_BLOCK, window)
    for a in range(0, T, block):
        b = min(a + block, T)
        lo = max(0, P + a - (window - 1))  # first key any query of this block can see
        qpos = torch.arange(P + a, P + b, device=q.device)  # (Tb,)
        kpos = torch.arange(lo, P + b, device=q.device)  # (Sb,)
        rel = qpos[:, None] - kpos[None, :]  # (Tb, Sb)
        allowed = (rel >= 0) & (rel < window)
        mask = (allowed[None] & key_valid[:, None, lo : P + b]) | (rel == 0)[None]  # (B, Tb, Sb)
        out.append(F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, lo : P + b], v[:, :, lo : P + b], attn_mask=mask[:, None]))
    return torch.cat(out, dim=2)  # (B, h, T, dh)


class SlidingWindowAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, window: int):
        super().__init__()
        self.n_heads, self.head_dim, self.window = n_heads, d_model // n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: Optional[tuple[Tensor, Tensor]], key_valid: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B,T,d), past (k, v) each (B,h,P,dh) or None, key_valid (B,P+T). Returns (B,T,d) and the new
        (k, v) of the last window-1 positions (what the next call can still see)."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B,h,T,dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, h, S, dh)
        y = window_attention(q, k, v, key_valid, self.window)  # (B, h, T, dh)
        start = max(0, k.shape[2] - (self.window - 1))
        # clone: a slice would keep the whole (B, h, S, dh) storage alive and the cache would grow with S.
        new_past = (k[:, :, start:].clone(), v[:, :, start:].clone())  # (B, h, <= window-1, dh) each
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d)), new_past


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.down(F.silu(gate) * up)


class StaticPKM(nn.Module):
    """Product Key Memory with learned (slow) keys and values (Lample et al. 2019), in place of an MLP.

    The paper's "semantic memory": dot-product sub-key scores, top-k per book, top-k of the k*k candidate
    slots, softmax over the H*k selected scores, weighted sum of value rows (an embedding bag).
    """

    def __init__(self, d_model: int, n_subkeys: int, k_dim: int, topk: int, heads: int):
        super().__init__()
        self.n, self.k_dim, self.topk, self.heads = n_subkeys, k_dim, topk, heads
        self.q_proj = nn.Linear(d_model, heads * k_dim, bias=False)
        self.sub_keys = nn.Parameter(torch.empty(heads, 2, n_subkeys, k_dim // 2))
        self.values = nn.Embedding(n_subkeys * n_subkeys, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.k_dim)
        with torch.no_grad():
            self.sub_keys.uniform_(-bound, bound)
            self.values.weight.normal_(0, self.values.weight.shape[1] ** -0.5)

    def forward(self, x: Tensor) -> Tensor:
        B, T, d = x.shape
        H, k, n = self.heads, self.topk, self.n
        q = self.q_proj(x).view(B * T, H, 2, self.k_dim // 2)  # (R, H, 2, k_dim/2)
        sub = torch.einsum("rhmd,hmnd->rhmn", q, self.sub_keys)  # (R, H, 2, n)
        top, idx = sub.topk(k, dim=-1)  # (R, H, 2, k)
        cand = top[:, :, 0, :, None] + top[:, :, 1, None, :]  # (R, H, k, k)
        scores, flat = cand.flatten(-2).topk(k, dim=-1)  # (R, H, k)
        i = idx[:, :, 0].gather(-1, torch.div(flat, k, rounding_mode="floor"))
        j = idx[:, :, 1].gather(-1, flat % k)
        slots = (i * n + j).reshape(B * T, H * k)  # (R, H*k)
        w = torch.softmax(scores.reshape(B * T, H * k), dim=-1)  # (R, H*k)
        out = F.embedding_bag(slots, self.values.weight, per_sample_weights=w, mode="sum")  # (R, d)
        return out.view(B, T, d)


class DecoderLayer(nn.Module):
    """h = h + FwPKM(h) (optional); h = h + Attn(norm(h)); h = h + MLP(norm(h))  (spec §2)."""

    def __init__(self, config, index: int):
        super().__init__()
        d = config.d_model
        self.fwpkm = FwPKM(d, config.fwpkm_config) if index in config.fwpkm_layers else None
        self.attn_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.attn = SlidingWindowAttention(d, config.n_heads, config.window)
        self.mlp_norm = nn.RMSNorm(d, eps=config.norm_eps)
        if config.static_pkm_layer == index:
            self.mlp = StaticPKM(d, **config.static_pkm)
        else:
            self.mlp = SwiGLU(d, config.mlp_hidden)

    def forward(self, h, cos, sin, past, key_valid, memory, mask, read_only, inplace, return_reads):
        """h (B,T,d). Returns (h, new_past, FwPKMOutput or None)."""
        mem_out = None
        if self.fwpkm is not None:
            mem_out = self.fwpkm(h, memory, mask=mask, read_only=read_only, inplace=inplace, return_reads=return_reads)
            h = h + mem_out.output
        a, new_past = self.attn(self.attn_norm(h), cos, sin, past, key_valid)
        h = h + a
        h = h + self.mlp(self.mlp_norm(h))
        return h, new_past, mem_out
