"""The FwPKM language model: transformers config, model, streaming cache (docs/model.md).

Imports transformers: load it through `fwpkm_rag.FwPKMForCausalLM` (lazy) or import this package directly.
"""
from fwpkm_rag.modeling.cache import FwPKMCache
from fwpkm_rag.modeling.config import FwPKMModelConfig
from fwpkm_rag.modeling.model import FwPKMCausalLMOutput, FwPKMForCausalLM

__all__ = ["FwPKMCache", "FwPKMCausalLMOutput", "FwPKMForCausalLM", "FwPKMModelConfig"]
