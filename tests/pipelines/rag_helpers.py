"""A small random FwPKM language model with the real tokenizer, for the RAG pipeline tests (fast: builds in
milliseconds; an untrained memory acts as a hashed n-gram index, enough for exact-wording retrieval)."""
from __future__ import annotations

import torch

from fwpkm_rag.memory import FwPKMConfig
from fwpkm_rag.modeling.config import tokenizer_dict
from fwpkm_rag.modeling import FwPKMForCausalLM, FwPKMModelConfig


def rag_model_config(**over) -> FwPKMModelConfig:
    base = dict(
        tokenizer=tokenizer_dict(), d_model=32, n_layers=2, n_heads=2, window=16, fwpkm_layers=[0, 1],
        fwpkm=FwPKMConfig(n_subkeys=64, k_dim=32, v_dim=16, heads=1, topk=4, chunk_size=64, q_conv=3).to_dict(),
    )
    base.update(over)
    return FwPKMModelConfig(**base)


def rag_model(seed: int = 0, **over) -> FwPKMForCausalLM:
    torch.manual_seed(seed)
    model = FwPKMForCausalLM(rag_model_config(**over)).eval()
    with torch.no_grad():
        for layer in model.fwpkm_modules:
            for lin in (layer.q_proj, layer.v_proj, layer.g_proj, layer.o_proj):
                lin.weight.normal_(0, 0.5)
                lin.bias.normal_(0, 0.1)
            if layer.q_conv is not None:  # query = token + 0.5 x previous token (+ 0.25 x the one before)
                taps = torch.tensor([0.25, 0.5, 1.0])[-layer.q_conv.shape[1]:]
                layer.q_conv.copy_(taps.expand_as(layer.q_conv))
    return model
