"""Hot ops of FwPKM behind one signature per op, with a torch and a triton backend (docs/kernels.md).

One folder per op, each with its loop reference beside the torch and triton versions:
product_key/ (scoring + top-k, read weights), gather/ (weighted gather), row_update/ (normalised row update).
`dispatch` picks the backend; `autograd` makes the raw primitives differentiable to any order.
The memory core calls these functions and nothing else touches raw FwPKM indexing. Importing this package
never imports triton: the triton backend is loaded on first use (dispatch.py).
"""
from fwpkm_rag.kernels.dispatch import BACKENDS, requested_backend, resolve, set_backend, use_backend
from fwpkm_rag.kernels.gather import gather_dot, weighted_gather
from fwpkm_rag.kernels.product_key import product_key_topk, read_weights
from fwpkm_rag.kernels.row_update import RowUpdate, group_entries, row_update

__all__ = [
    "BACKENDS",
    "RowUpdate",
    "gather_dot",
    "group_entries",
    "product_key_topk",
    "read_weights",
    "requested_backend",
    "resolve",
    "row_update",
    "set_backend",
    "use_backend",
    "weighted_gather",
]
