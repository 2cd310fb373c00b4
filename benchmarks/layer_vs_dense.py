"""The FwPKM sub-block against a same-width dense block (causal attention + MLP), part of `fwpkm-rag bench ops`.

Both see the same (1, T, d_model) hidden states. "fwpkm" is `memory.FwPKM` (projections, read of every token,
one write per chunk, output projection), its memory starting fresh; "dense" is a pre-norm causal multi-head
attention (scaled_dot_product_attention, head width 64) followed by a 4x GELU MLP, the usual transformer
layer of that width. Inference = no autograd (FwPKM updates its state in place, as ingestion does);
fwd+bwd = the sum of the outputs back-propagated to the inputs and slow weights (FwPKM through its updates).

Dense attention costs O(T^2) and FwPKM O(T): the ratio at 4K and 32K tokens is what a user trading a long
context for a memory pays or saves. On a GPU the issue asks for 4K and 32K; on a 2-core CPU 32K tokens of full
attention take minutes, so the CPU run measures 4K (1K with --quick) and says so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fwpkm_rag.benchmarks.common import measure
from fwpkm_rag.memory import FwPKM, FwPKMConfig


class DenseBlock(nn.Module):
    """Pre-norm causal attention + MLP of width d_model: the baseline a FwPKM layer sits beside."""

    def __init__(self, d_model: int, head_dim: int = 64):
        super().__init__()
        self.heads = max(1, d_model // head_dim)
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(B, T, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, dh)
        h = h + self.out(y.transpose(1, 2).reshape(B, T, d))
        return h + self.mlp(self.norm2(h))


def layer_vs_dense(d_model: int, cfg: FwPKMConfig, lengths: tuple, device: torch.device, *, repeats: int = 3,
                   dtype: torch.dtype = torch.float32) -> list[dict]:
    """Tokens/s of the FwPKM sub-block and of a dense block, inference and fwd+bwd, at each length."""
    torch.manual_seed(0)
    fwpkm = FwPKM(d_model, cfg).to(device=device, dtype=dtype)
    dense = DenseBlock(d_model).to(device=device, dtype=dtype)
    rows = []
    for T in lengths:
        h = torch.randn(1, T, d_model, device=device, dtype=dtype)
        hg = h.clone().requires_grad_()

        def fwpkm_inf():
            with torch.no_grad():
                return fwpkm(h, fwpkm.init_state(1), inplace=True).output

        def dense_inf():
            with torch.no_grad():
                return dense(h)

        def fwpkm_fb():
            fwpkm(hg, fwpkm.init_state(1)).output.float().sum().backward()

        def dense_fb():
            dense(hg).float().sum().backward()

        for mode, (f_fn, d_fn) in (("inference", (fwpkm_inf, dense_inf)), ("fwd+bwd", (fwpkm_fb, dense_fb))):
            # interleaved medians, as for the ops: a load change on a shared machine hits both sides alike
            (t_f, peak_f), (t_d, peak_d) = measure([f_fn, d_fn], repeats, device)
            rows.append(dict(tokens=T, mode=mode, fwpkm_tokens_per_s=T / t_f, dense_tokens_per_s=T / t_d,
                             fwpkm_over_dense=t_d / t_f, fwpkm_peak_bytes=peak_f, dense_peak_bytes=peak_d))
            print(f"layer vs dense  T={T:>6}  {mode:9s}  fwpkm {T / t_f:>10,.0f} tok/s  dense {T / t_d:>10,.0f} "
                  f"tok/s  ratio {t_d / t_f:.2f}x", flush=True)
    return rows


def markdown(rows: list, d_model: int, config_name: str) -> str:
    lines = [f"FwPKM sub-block vs a dense causal attention + MLP block, d_model {d_model}, the {config_name} FwPKM "
             "config, batch 1 (ratio > 1: FwPKM faster)", "",
             "| tokens | mode | FwPKM tokens/s | dense tokens/s | FwPKM / dense speed |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokens']:,} | {r['mode']} | {r['fwpkm_tokens_per_s']:,.0f} | {r['dense_tokens_per_s']:,.0f} "
                     f"| {r['fwpkm_over_dense']:.2f}x |")
    return "\n".join(lines)
