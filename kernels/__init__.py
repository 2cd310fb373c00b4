"""Hot ops of FwPKM behind one signature per op.

Only the ``torch`` backend exists so far (it runs on CPU and GPU and is the reference); the memory core calls
these functions and nothing else touches raw FwPKM indexing.
"""
from fwpkm_rag.kernels.torch_ops import product_key_topk, read_weights, weighted_gather

__all__ = ["product_key_topk", "read_weights", "weighted_gather"]
