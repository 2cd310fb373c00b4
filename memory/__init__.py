"""FwPKM math: the layer, its explicit memory state, the functional core and the naive oracle."""
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.memory.core import flush_memory, fwpkm_forward, memory_chunk, stream_memory
from fwpkm_rag.memory.layer import FwPKM, FwPKMOutput, initial_fast_weights, zscore
from fwpkm_rag.memory.state import MemoryState
from fwpkm_rag.memory.values import SparseValues

__all__ = [
    "FwPKM",
    "FwPKMConfig",
    "FwPKMOutput",
    "MemoryState",
    "SparseValues",
    "flush_memory",
    "fwpkm_forward",
    "initial_fast_weights",
    "memory_chunk",
    "stream_memory",
    "zscore",
]
