"""The FwPKM language models: the `MemoryLM` interface (protocol), the project's model (FwPKMForCausalLM, its
config and streaming cache) and FwPKM attached to a pretrained decoder (attach, attached). docs/model.md.

Names load on first use, so `fwpkm_rag.modeling.protocol` can be imported without transformers.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "FwPKMCache": "fwpkm_rag.modeling.cache",
    "FwPKMModelConfig": "fwpkm_rag.modeling.config",
    "FwPKMCausalLMOutput": "fwpkm_rag.modeling.streaming",
    "FwPKMForCausalLM": "fwpkm_rag.modeling.model",
    "MemoryLM": "fwpkm_rag.modeling.protocol",
    "Tokenizer": "fwpkm_rag.modeling.protocol",
    "AttachedFwPKMModel": "fwpkm_rag.modeling.attached",
    "AttachedCache": "fwpkm_rag.modeling.attached",
    "HFTokenizer": "fwpkm_rag.modeling.hf_tokenizer",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag.modeling' has no attribute {name!r}")
