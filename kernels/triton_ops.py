"""The triton backend: every op's triton primitive under the same names as `torch_ops`.

Imported only by `dispatch.backend_module("triton")` (importing it imports triton and decorates every op's
kernels; under TRITON_INTERPRET=1 they run on CPU tensors). Product-key scoring stays torch on this backend (a
matmul plus torch.topk; no benchmark on a GPU has shown a fused kernel worth its complexity yet).
"""
from fwpkm_rag.kernels.gather.triton_impl import gather_dot_fwd, gather_fwd
from fwpkm_rag.kernels.product_key.torch_impl import product_key_topk, read_weights
from fwpkm_rag.kernels.row_update.triton_impl import segment_fwd

__all__ = ["gather_dot_fwd", "gather_fwd", "product_key_topk", "read_weights", "segment_fwd"]
