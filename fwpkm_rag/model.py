"""Public home of the FwPKM language model (the code lives in fwpkm_rag/modeling/).

    from fwpkm_rag.model import FwPKMForCausalLM, FwPKMModelConfig, FwPKMCache
"""
from fwpkm_rag.modeling import FwPKMCache, FwPKMCausalLMOutput, FwPKMForCausalLM, FwPKMModelConfig

__all__ = ["FwPKMCache", "FwPKMCausalLMOutput", "FwPKMForCausalLM", "FwPKMModelConfig"]
