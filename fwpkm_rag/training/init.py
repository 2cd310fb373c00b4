"""Recall-ready initialisation of a FwPKM language model (training-notes.md).

From random projections a tiny model does not learn to use its memory in a CPU budget; from projections
that already recall, it does in minutes. For the FwPKM sub-block of layer 0 (its input is the token
embedding itself):

    q = 0.25 P (ĥ_t + taps over the previous tokens)     P: fixed orthonormal (k_dim x d)
    v = zscore(P_v ĥ_t)                                    P_v: another orthonormal (v_dim x d)
    out = c P_vᵀ RMSNorm(g v̂ + (1-g) v),  c ≈ 10         a read value maps back to its token's embedding
    gate bias 3.0 (g ≈ 0.95)                               the memory path must outweigh the residual

With the LM head tied to N(0, 1) embeddings and a final-norm gain of 0.1 (the tiny preset's defaults), the
stored next token is decoded from the read at step 0: the memory recalls before any training.
"""
from __future__ import annotations

import torch

from fwpkm_rag.errors import ConfigError


def _orthonormal_rows(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, cols) with orthonormal rows (rows <= cols)."""
    q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=gen))
    return q.T.contiguous()


@torch.no_grad()
def recall_ready_init(
    model,
    *,
    layer: int = 0,
    q_scale: float = 0.25,
    out_scale: float = 10.0,
    gate_bias: float = 3.0,
    conv_taps=(0.0, 0.5, 0.5, 1.0),
    seed: int = 0,
) -> None:
    """Initialise the FwPKM sub-block of decoder `layer` so that the model recalls at step 0 (in place).

    conv_taps: weights of tokens t-K+1 .. t in the query's causal convolution (needs q_conv == len(taps)).
    """
    block = model.layers[layer].fwpkm
    if block is None:
        raise ConfigError(f"decoder layer {layer} has no FwPKM sub-block (fwpkm_layers = {model.config.fwpkm_layers})")
    if not model.config.tie_word_embeddings:
        raise ConfigError("recall_ready_init decodes reads through the embedding: it needs tie_word_embeddings=True")
    cfg = block.config
    d = block.d_model
    width = cfg.heads * cfg.k_dim
    if width > d or cfg.v_dim > d:
        raise ConfigError(f"recall_ready_init needs heads*k_dim ({width}) and v_dim ({cfg.v_dim}) <= d_model ({d})")
    gen = torch.Generator().manual_seed(seed)
    P = _orthonormal_rows(width, d, gen)  # (H*k_dim, d)
    Pv = _orthonormal_rows(cfg.v_dim, d, gen)  # (v_dim, d)
    dev = block.q_proj.weight.device
    block.q_proj.weight.copy_(q_scale * P.to(dev))
    block.q_proj.bias.zero_()
    block.v_proj.weight.copy_(Pv.to(dev))
    block.v_proj.bias.zero_()
    block.o_proj.weight.copy_(out_scale * Pv.T.to(dev))
    block.o_proj.bias.zero_()
    block.g_proj.bias.fill_(gate_bias)
    for norm in (block.q_norm, block.v_norm, block.g_norm, block.o_norm):
        norm.weight.fill_(1.0)
    if block.q_conv is not None:
        taps = torch.tensor(conv_taps, dtype=block.q_conv.dtype)
        if taps.numel() != block.q_conv.shape[1]:
            raise ConfigError(f"conv_taps has {taps.numel()} taps but the query conv has {block.q_conv.shape[1]}")
        block.q_conv.copy_(taps.to(dev).expand_as(block.q_conv))
