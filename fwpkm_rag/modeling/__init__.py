"""The FwPKM language models: the `MemoryLM` interface (protocol), the project's model (FwPKMForCausalLM, its
config and streaming cache), FwPKM attached to a pretrained decoder (attach, attached) and the plain reader
(`ReaderLM`, SmolLM2-135M-Instruct without memory). docs/model.md.

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
    "TextDecoder": "fwpkm_rag.modeling.protocol",
    "ReaderLM": "fwpkm_rag.modeling.reader",
    "load_reader": "fwpkm_rag.modeling.reader",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag.modeling' has no attribute {name!r}")
