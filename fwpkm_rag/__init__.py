"""fwpkm-rag: a language model with Fast-weight Product Key Memory as the retrieval index.

`import fwpkm_rag` stays light (torch only): heavier parts load on first use.
"""
from __future__ import annotations

from fwpkm_rag.errors import ConfigError, FwPKMError, InputError, StateError, StateFormatError
from fwpkm_rag.memory.config import FwPKMConfig

__version__ = "0.1.0"

_LAZY = {
    "FwPKM": "fwpkm_rag.memory",
    "MemoryState": "fwpkm_rag.memory",
    "fwpkm_forward": "fwpkm_rag.memory",
    "get_tokenizer": "fwpkm_rag.tokenizer",
    "FwPKMForCausalLM": "fwpkm_rag.modeling.model",
    "FwPKMModelConfig": "fwpkm_rag.modeling.config",
    "FwPKMCache": "fwpkm_rag.modeling.cache",
    "MemoryLM": "fwpkm_rag.modeling.protocol",
    "Tokenizer": "fwpkm_rag.tokenizer",
    "load_model": "fwpkm_rag.default_model",
    "load_default_model": "fwpkm_rag.default_model",
    "attach_fwpkm": "fwpkm_rag.modeling.attach",
    "detach_fwpkm": "fwpkm_rag.modeling.attach",
    "AttachedFwPKMModel": "fwpkm_rag.modeling.attached",
    "load_backbone": "fwpkm_rag.backbone",
    "load_reader": "fwpkm_rag.modeling.reader",
}

__all__ = [
    "ConfigError",
    "FwPKMConfig",
    "FwPKMError",
    "InputError",
    "StateError",
    "StateFormatError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fwpkm_rag' has no attribute {name!r}")
