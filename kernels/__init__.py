"""Hot ops of FwPKM behind one signature per op, with a torch and a triton backend (docs/kernels.md).

The memory core calls these functions and nothing else touches raw FwPKM indexing. Importing this package
never imports triton: the triton backend is loaded on first use (dispatch.py).
"""
from fwpkm_rag.kernels.dispatch import BACKENDS, requested_backend, resolve, set_backend, use_backend
from fwpkm_rag.kernels.ops import (
    RowUpdate,
    gather_dot,
    group_entries,
    product_key_topk,
    read_weights,
    row_update,
    weighted_gather,
)

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
