"""`FwPKMCache`: the bounded streaming state of a `FwPKMForCausalLM`.

Per layer it holds the attention keys/values of the last `window - 1` positions (all a future token can
see), and per FwPKM layer the `MemoryState` (fast weights, the queued partial chunk, the query-conv tail).
Its size does not grow with the stream, except for the memory's rewritten value rows, which are bounded by
the n*n slots of each memory (SparseValues).

The cache is updated in place by every `model(..., cache=cache)` call (and returned as `out.cache`). Without
autograd the memories are written in place too: take `cache.clone()` before a call to keep a snapshot.

The cache builds itself (`_setup` for a fresh stream, `from_memories` for questions over given memories) and
saves / loads itself (`save`, `load`): the files a store snapshot holds (pipelines/persistence.py).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from fwpkm_rag.errors import StateError, StateFormatError
from fwpkm_rag.memory import MemoryState, flush_memory

KV_FILE = "kv.safetensors"
MEMORY_FILE = "memory-{}.safetensors"  # one per FwPKM layer, in the order of config.fwpkm_layers


class FwPKMCache:
    """Streaming state of a FwPKM language model (sliding-window KV + fast-weight memories).

    Make one with `model.init_cache(batch_size)`, or pass an empty `FwPKMCache()` and the first call sizes it.
    """

    is_compileable = False  # transformers' generate: never auto-compile around this cache
    is_croppable = False  # cannot roll back a forward (the memories were written)

    # kv / position / key_valid / memory are the cache's own state: the models update them, and the cache
    # builds (from_memories), saves and loads them itself; callers read them but do not set them.
    def __init__(self, batch_size: Optional[int] = None, mode: Optional[str] = None):
        self.batch_size = batch_size
        self.mode = mode  # memory mode for lazily created states (None: the FwPKMConfig's)
        self.position = 0  # tokens consumed so far (all streams of the batch advance together)
        self.kv: list = []  # per layer: (k, v) each (B, h, <= window-1, dh), or None before the first call
        self.key_valid: Optional[Tensor] = None  # (B, <= window-1) bool: False where the input was padding
        self.memory: list[MemoryState] = []  # one per FwPKM layer, in the order of config.fwpkm_layers
        self.fwpkm_layers: list[int] = []
        self.n_layers = 0
        # True once a memory-only call stopped after the last FwPKM layer: the layers above hold no attention
        # context, so the cache can only go on memory-only (AttachedFwPKMModel; FwPKMForCausalLM runs fully).
        self.truncated = False

    # ---- creation -------------------------------------------------------------------------------------------
    def _setup(self, model, batch_size: int) -> None:
        """Size an empty cache for `model` (called by the model on first use): fresh memories, empty KV."""
        self._size_for(model, batch_size)
        self.memory = [layer.init_state(batch_size, mode=self.mode) for layer in model.fwpkm_modules]
        self.mode = self.memory[0].mode if self.memory else self.mode

    def _size_for(self, model, batch_size: int) -> None:
        cfg = model.config
        self.batch_size, self.n_layers = batch_size, cfg.n_layers
        self.fwpkm_layers = list(cfg.fwpkm_layers)
        self.kv = [None] * cfg.n_layers
        self.key_valid = None
        self.truncated = False

    @classmethod
    def from_memories(cls, model, memories: Sequence[MemoryState], batch_size: Optional[int] = None) -> "FwPKMCache":
        """Empty KV over exactly `memories` (one MemoryState per FwPKM layer of `model`; not copied).

        For questions over a store's memories, with read_only=True so they are never written. StateError when
        the states do not fit the model's FwPKM layers, its device or `batch_size` (default: theirs)."""
        memories = list(memories)
        layers = model.fwpkm_modules
        if len(memories) != len(layers) or not all(isinstance(m, MemoryState) for m in memories):
            raise StateError(f"memories must be {len(layers)} MemoryState(s), one per FwPKM layer of the model, "
                             f"got {len(memories)} item(s)")
        if batch_size is None:
            batch_size = memories[0].batch_size if memories else 1
        for state, layer in zip(memories, layers):
            state.check_compatible(layer.config, layer.keys_init, batch_size, model.device)
        cache = cls(batch_size, memories[0].mode if memories else None)
        cache._size_for(model, batch_size)
        cache.memory = memories
        return cache

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
        """An independent copy of the same class (a snapshot: later calls on either do not change the other)."""
        other = type(self)(self.batch_size, self.mode)
        other.position, other.fwpkm_layers, other.n_layers = self.position, list(self.fwpkm_layers), self.n_layers
        other.truncated = self.truncated
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

    # ---- persistence ----------------------------------------------------------------------------------------
    def save(self, directory) -> None:
        """Write the cache into the existing folder `directory`: memory-{i}.safetensors per FwPKM layer (the
        MemoryState format, atomic) and kv.safetensors (the attention windows, stream position, key validity)."""
        from safetensors.torch import save_file

        if not self.initialized:
            raise StateError("the cache is empty: run the model on it (or make it with model.init_cache()) first")
        directory = os.fspath(directory)
        for i, state in enumerate(self.memory):
            state.save(os.path.join(directory, MEMORY_FILE.format(i)))
        tensors, meta = {}, {"position": str(self.position), "n_layers": str(self.n_layers)}
        for i, kv in enumerate(self.kv):
            if kv is not None:
                tensors[f"k.{i}"] = kv[0].detach().cpu().contiguous()  # (B, h, <= window-1, dh)
                tensors[f"v.{i}"] = kv[1].detach().cpu().contiguous()
        if self.key_valid is not None:
            tensors["key_valid"] = self.key_valid.detach().cpu().contiguous()  # (B, <= window-1)
        if not tensors:
            tensors["empty"] = torch.zeros(0)  # safetensors needs at least one tensor
        save_file(tensors, os.path.join(directory, KV_FILE), metadata=meta)

    @classmethod
    def load(cls, directory, model) -> "FwPKMCache":
        """The cache `save` wrote into `directory`, for `model` (on its device). StateFormatError when a file
        is missing, damaged, or does not fit the model's layers."""
        from safetensors import safe_open

        directory = os.fspath(directory)
        memories = []
        for i, layer in enumerate(model.fwpkm_modules):
            path = os.path.join(directory, MEMORY_FILE.format(i))
            if not os.path.exists(path):
                raise StateFormatError(f"{directory} has no {MEMORY_FILE.format(i)}: the model has "
                                       f"{len(model.fwpkm_modules)} FwPKM layer(s)")
            try:
                memories.append(layer.load_state(path))
            except StateError as exc:  # a readable file made by another layer
                raise StateFormatError(f"{path} does not fit FwPKM layer {i} of this model: {exc}") from None
        extra = os.path.join(directory, MEMORY_FILE.format(len(memories)))
        if os.path.exists(extra):
            raise StateFormatError(f"{directory} holds more memories than the model's {len(memories)} FwPKM layer(s)")
        if len({m.batch_size for m in memories}) > 1:
            raise StateFormatError(f"the memories in {directory} hold different numbers of streams")
        path = os.path.join(directory, KV_FILE)
        if not os.path.exists(path):
            raise StateFormatError(f"{directory} has no {KV_FILE}")
        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
            n_layers, position = int(meta.get("n_layers", -1)), int(meta["position"])
        except Exception as exc:  # safetensors raises its own types for truncated or garbled files
            raise StateFormatError(f"{path} is not a readable KV cache (truncated or corrupt): {exc}") from None
        if n_layers != model.config.n_layers:
            raise StateFormatError(f"{path} holds the KV of {meta.get('n_layers')} layers, the model has "
                                   f"{model.config.n_layers}")
        batch = memories[0].batch_size if memories else 1
        cache = cls(batch, memories[0].mode if memories else None)
        cache._size_for(model, batch)
        cache.memory = memories
        dev = model.device
        cache.position = position
        cache.kv = [(tensors[f"k.{i}"].to(dev), tensors[f"v.{i}"].to(dev)) if f"k.{i}" in tensors else None
                    for i in range(n_layers)]
        cache.key_valid = tensors["key_valid"].to(dev) if "key_valid" in tensors else None
        return cache

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
