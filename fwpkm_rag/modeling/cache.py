"""`FwPKMCache`: the bounded streaming state of a `FwPKMForCausalLM`.

Per layer it holds the attention keys/values of the last `window - 1` positions (all a future token can
see), and per FwPKM layer the `MemoryState` (fast weights, the queued partial chunk, the query-conv tail).
Its size does not grow with the stream, except for the memory's rewritten value rows, which are bounded by
the n*n slots of each memory (SparseValues).

The cache is updated in place by every `model(..., cache=cache)` call (and returned as `out.cache`). Without
autograd the memories are written in place too: take `cache.clone()` before a call to keep a snapshot.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fwpkm_rag.errors import StateError
from fwpkm_rag.memory import MemoryState, flush_memory


class FwPKMCache:
    """Streaming state of a FwPKM language model (sliding-window KV + fast-weight memories).

    Make one with `model.init_cache(batch_size)`, or pass an empty `FwPKMCache()` and the first call sizes it.
    """

    is_compileable = False  # transformers' generate: never auto-compile around this cache
    is_croppable = False  # cannot roll back a forward (the memories were written)

    def __init__(self, batch_size: Optional[int] = None, mode: Optional[str] = None):
        self.batch_size = batch_size
        self.mode = mode  # memory mode for lazily created states (None: the FwPKMConfig's)
        self.position = 0  # tokens consumed so far (all streams of the batch advance together)
        self.kv: list = []  # per layer: (k, v) each (B, h, <= window-1, dh), or None before the first call
        self.key_valid: Optional[Tensor] = None  # (B, <= window-1) bool: False where the input was padding
        self.memory: list[MemoryState] = []  # one per FwPKM layer, in the order of config.fwpkm_layers
        self.fwpkm_layers: list[int] = []
        self.n_layers = 0

    # ---- creation -------------------------------------------------------------------------------------------
    def _setup(self, model, batch_size: int) -> None:
        """Size an empty cache for `model` (called by the model on first use)."""
        cfg = model.config
        self.batch_size, self.n_layers = batch_size, cfg.n_layers
        self.fwpkm_layers = list(cfg.fwpkm_layers)
        self.kv = [None] * cfg.n_layers
        self.memory = [model.layers[i].fwpkm.init_state(batch_size, mode=self.mode) for i in self.fwpkm_layers]
        self.mode = self.memory[0].mode if self.memory else self.mode
        self.key_valid = None

    @property
    def initialized(self) -> bool:
        return self.n_layers > 0

    # ---- transformers' generate protocol --------------------------------------------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.position

    @property
    def is_linear(self) -> list:
        # Reported as a recurrent ("linear") cache so that generate never slices the prompt by the cache
        # length: with a prefilled FwPKMCache, generate's input_ids are the new tokens only.
        return [True] * max(self.n_layers, 1)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Reorder the batch in place (beam search): every stream keeps its own memory and KV."""
        self.select_(beam_idx)

    # ---- batch plumbing -------------------------------------------------------------------------------------
    def select_(self, index) -> "FwPKMCache":
        """Keep / reorder / repeat streams of the batch in place (isolated memories only)."""
        if not self.initialized:
            raise StateError("the cache is empty: run the model on it first")
        index = torch.as_tensor(index, dtype=torch.long)
        dev = self.memory[0].device if self.memory else (self.key_valid.device if self.key_valid is not None else None)
        if dev is not None:
            index = index.to(dev)
        self.memory = [m.select(index) for m in self.memory]
        self.kv = [None if kv is None else (kv[0][index], kv[1][index]) for kv in self.kv]
        self.key_valid = None if self.key_valid is None else self.key_valid[index]
        self.batch_size = index.numel()
        return self

    def clone(self) -> "FwPKMCache":
        """An independent copy (a snapshot: later calls on either do not change the other)."""
        other = FwPKMCache(self.batch_size, self.mode)
        other.position, other.fwpkm_layers, other.n_layers = self.position, list(self.fwpkm_layers), self.n_layers
        other.kv = [None if kv is None else (kv[0].clone(), kv[1].clone()) for kv in self.kv]
        other.key_valid = None if self.key_valid is None else self.key_valid.clone()
        other.memory = [m.clone() for m in self.memory]
        return other

    def detach_(self) -> "FwPKMCache":
        """Cut the autograd history in place (truncated back-propagation through time)."""
        self.kv = [None if kv is None else (kv[0].detach(), kv[1].detach()) for kv in self.kv]
        self.memory = [m.detach() for m in self.memory]
        return self

    def to(self, device) -> "FwPKMCache":
        self.kv = [None if kv is None else (kv[0].to(device), kv[1].to(device)) for kv in self.kv]
        self.key_valid = None if self.key_valid is None else self.key_valid.to(device)
        self.memory = [m.to(device) for m in self.memory]
        return self

    # ---- memory ---------------------------------------------------------------------------------------------
    def flush(self) -> list:
        """Write every memory's queued partial chunk now (end of a document, before a question).

        Returns one list per FwPKM layer of the write records made (same format as `out.memory_writes`).
        Stream positions do not move, so later chunk boundaries stay at multiples of C.
        """
        writes = []
        for i, state in enumerate(self.memory):
            res = flush_memory(state, inplace=not torch.is_grad_enabled())
            self.memory[i] = res.state
            writes.append(res.writes)
        return writes

    @property
    def pending(self) -> list:
        """Tokens queued (not yet written) per FwPKM layer."""
        return [m.pending for m in self.memory]

    def nbytes(self) -> int:
        """Bytes held by this cache: KV windows + memory states (the layers' shared initial tables excluded)."""
        kv = sum(t.numel() * t.element_size() for pair in self.kv if pair is not None for t in pair)
        valid = 0 if self.key_valid is None else self.key_valid.numel()
        return kv + valid + sum(m.nbytes() for m in self.memory)

    def __repr__(self) -> str:
        return (
            f"FwPKMCache(batch_size={self.batch_size}, position={self.position}, mode={self.mode!r}, "
            f"fwpkm_layers={self.fwpkm_layers}, pending={self.pending}, nbytes={self.nbytes()})"
        )
