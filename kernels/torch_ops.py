"""The torch backend: every op's torch primitive under one name, as `dispatch.get_backend` hands it out.

CPU, any GPU, and the reference the triton backend is tested against. The implementations live in the per-op
folders (product_key/, gather/, row_update/ `torch_impl.py`); `triton_ops` exposes the same names.
"""
from fwpkm_rag.kernels.gather.torch_impl import gather_dot_fwd, gather_fwd, lookup_rows
from fwpkm_rag.kernels.product_key.torch_impl import product_key_topk, read_weights
from fwpkm_rag.kernels.row_update.torch_impl import segment_fwd

__all__ = ["gather_dot_fwd", "gather_fwd", "lookup_rows", "product_key_topk", "read_weights", "segment_fwd"]
