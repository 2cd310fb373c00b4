"""`MemoryState`: the fast weights of one FwPKM layer, passed into the layer and returned, never hidden.

Modes (spec §7):
- ``isolated`` (default): one memory per sequence of the batch (a session, a collection). Each keeps its own
  sub-keys (small: H*n*k_dim floats) and only the value rows it rewrote (`SparseValues`), over the layer's
  shared initial table.
- ``shared``: one memory for the whole batch, carried across calls, as in the paper's training.

A state also carries the stream bookkeeping of spec §8: the position in the stream, the queue of tokens of
the current, not yet complete chunk (their projections, so the chunk can be written when it completes), and
the last q_conv-1 query projections for the causal query convolution.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor

from fwpkm_rag.errors import StateError, StateFormatError, check_int
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.memory.values import SparseValues

FORMAT_NAME = "fwpkm-memory-state"
FORMAT_VERSION = 1

TENSOR_NAMES = ("keys", "slot_map", "rows", "pending_q", "pending_v", "pending_g", "pending_mask", "conv_cache", "refused")

_fingerprints: dict = {}


def tensor_fingerprint(x: Tensor) -> str:
    """sha256 of a tensor's bytes (cached per storage version: hashing 512 MiB takes about a second)."""
    key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, str(x.device))
    if key not in _fingerprints:
        data = x.detach().to("cpu").contiguous()
        _fingerprints[key] = hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()
    return _fingerprints[key]


@dataclass(frozen=True)
class MemoryState:
    config: FwPKMConfig
    mode: str
    batch_size: int
    base_keys: Tensor  # (2Hn, k_dim/2) the layer's initial keys (for reset)
    keys: Tensor  # (G, 2Hn, k_dim/2) current keys per group
    values: SparseValues  # current values per group, over the layer's initial table
    position: int  # tokens of the stream consumed so far, the queued ones included
    pending_q: Tensor  # (B, P, H*k_dim) projections of the queued tokens of the current chunk
    pending_v: Tensor  # (B, P, v_dim)
    pending_g: Tensor  # (B, P)
    pending_mask: Tensor  # (B, P) bool
    conv_cache: Tensor  # (B, q_conv-1, H*k_dim) last query projections before the convolution
    updates: int = 0  # chunks written
    refused: Optional[Tensor] = None  # (G,) int64 writes refused by the divergence guard

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def fresh(
        cls, config: FwPKMConfig, base_keys: Tensor, base_values: Tensor, batch_size: int, mode: Optional[str] = None
    ) -> "MemoryState":
        mode = mode or config.mode
        if mode not in ("isolated", "shared"):
            raise StateError(f"memory mode must be 'isolated' or 'shared', got {mode!r}")
        batch_size = check_int("batch_size", batch_size, 1, error=StateError)
        groups = batch_size if mode == "isolated" else 1
        width = config.heads * config.k_dim
        f32 = dict(dtype=torch.float32, device=base_values.device)
        return cls(
            config=config,
            mode=mode,
            batch_size=batch_size,
            base_keys=base_keys,
            keys=base_keys.detach().unsqueeze(0).expand(groups, -1, -1).clone(),
            values=SparseValues.fresh(base_values.detach(), groups),
            position=0,
            pending_q=torch.zeros(batch_size, 0, width, **f32),
            pending_v=torch.zeros(batch_size, 0, config.v_dim, **f32),
            pending_g=torch.zeros(batch_size, 0, **f32),
            pending_mask=torch.zeros(batch_size, 0, dtype=torch.bool, device=base_values.device),
            conv_cache=torch.zeros(batch_size, max(config.q_conv - 1, 0), width, **f32),
            updates=0,
            refused=torch.zeros(groups, dtype=torch.int64, device=base_values.device),
        )

    def reset(self) -> "MemoryState":
        """A fresh state of the same layer, batch size and mode: as if nothing had been read."""
        return MemoryState.fresh(self.config, self.base_keys, self.values.base, self.batch_size, self.mode)

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def groups(self) -> int:
        return self.keys.shape[0]

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def pending(self) -> int:
        """Tokens queued in the current, incomplete chunk."""
        return self.pending_q.shape[1]

    def dense_values(self, group: int = 0) -> Tensor:
        """(N, v_dim) value table of one group."""
        return self.values.dense(group)

    def written_fraction(self) -> Tensor:
        """(G,) fraction of value slots each group has rewritten at least once."""
        return self.values.touched().float().mean(-1)

    def nbytes(self) -> int:
        """Bytes this state owns (the layer's shared initial table excluded)."""
        own = [self.keys, self.pending_q, self.pending_v, self.pending_g, self.pending_mask, self.conv_cache]
        return self.values.nbytes() + sum(t.numel() * t.element_size() for t in own)

    # ---- tensor plumbing ----------------------------------------------------------------------------------
    def _map(self, fn: Callable[[Tensor], Tensor], *, base: bool = True) -> "MemoryState":
        keep = (lambda t: t) if not base else fn
        values = SparseValues(keep(self.values.base), fn(self.values.slot_map), fn(self.values.rows))
        return replace(
            self,
            base_keys=keep(self.base_keys),
            keys=fn(self.keys),
            values=values,
            pending_q=fn(self.pending_q),
            pending_v=fn(self.pending_v),
            pending_g=fn(self.pending_g),
            pending_mask=fn(self.pending_mask),
            conv_cache=fn(self.conv_cache),
            refused=fn(self.refused),
        )

    def detach(self) -> "MemoryState":
        """Cut the autograd history (truncated back-propagation through time)."""
        return self._map(lambda t: t.detach(), base=False)

    def clone(self) -> "MemoryState":
        """An independent copy (the layer's initial tables stay shared: nothing ever writes them)."""
        return self._map(lambda t: t.clone(), base=False)

    def to(self, device) -> "MemoryState":
        return self._map(lambda t: t.to(device))

    def select(self, index: Tensor) -> "MemoryState":
        """Reorder or pick sequences of the batch (isolated mode), e.g. for beam search."""
        if self.mode != "isolated":
            raise StateError("select() reorders per-sequence memories; a shared state has one memory for the batch")
        index = torch.as_tensor(index, device=self.device, dtype=torch.long)
        return replace(
            self,
            batch_size=index.numel(),
            keys=self.keys[index],
            values=self.values.select_groups(index),
            pending_q=self.pending_q[index],
            pending_v=self.pending_v[index],
            pending_g=self.pending_g[index],
            pending_mask=self.pending_mask[index],
            conv_cache=self.conv_cache[index],
            refused=self.refused[index],
        )

    def check_compatible(self, config: FwPKMConfig, base_keys: Tensor, batch_size: int, device) -> None:
        """Raise StateError if this state cannot be used with a layer of `config` on a batch of `batch_size`."""
        if self.config != config:
            raise StateError("memory state was made by a layer with another configuration")
        if self.base_keys is not base_keys and not torch.equal(self.base_keys.to(base_keys.device), base_keys):
            raise StateError("memory state was made over other initial fast weights (different layer or seed)")
        if self.batch_size != batch_size:
            raise StateError(f"memory state holds {self.batch_size} sequence(s) but the input has {batch_size}")
        if self.keys.device != torch.device(device):
            raise StateError(f"memory state is on {self.keys.device} but the input is on {device}; use state.to()")

    # ---- persistence --------------------------------------------------------------------------------------
    def _tensors(self) -> dict:
        return {
            "keys": self.keys,
            "slot_map": self.values.slot_map,
            "rows": self.values.rows,
            "pending_q": self.pending_q,
            "pending_v": self.pending_v,
            "pending_g": self.pending_g,
            "pending_mask": self.pending_mask,
            "conv_cache": self.conv_cache,
            "refused": self.refused,
        }

    def save(self, path) -> None:
        """Write the state to a safetensors file, atomically (temp file + rename)."""
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous() for name, t in self._tensors().items()}
        meta = {
            "format": FORMAT_NAME,
            "version": str(FORMAT_VERSION),
            "mode": self.mode,
            "batch_size": str(self.batch_size),
            "position": str(self.position),
            "updates": str(self.updates),
            "config": self.config.to_json(),
            "base_keys_sha256": tensor_fingerprint(self.base_keys),
            "base_values_sha256": tensor_fingerprint(self.values.base),
            "content_sha256": _content_digest(tensors),
        }
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".fwpkm-state-", dir=folder)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, *, base_keys: Tensor, base_values: Tensor, config: Optional[FwPKMConfig] = None) -> "MemoryState":
        """Read a state written by `save`, over the given initial tables (those of the layer that made it)."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no memory state at {path}")
        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}
        except Exception as exc:  # safetensors raises its own types for truncated or garbled headers
            raise StateFormatError(f"{path} is not a readable memory state (truncated or corrupt): {exc}") from exc
        if meta.get("format") != FORMAT_NAME:
            raise StateFormatError(f"{path} is not an fwpkm memory state (format {meta.get('format')!r})")
        if meta.get("version") != str(FORMAT_VERSION):
            raise StateFormatError(
                f"{path} was written in memory-state format version {meta.get('version')!r}; "
                f"this library reads version {FORMAT_VERSION}"
            )
        expected = set(TENSOR_NAMES)
        if set(tensors) != expected:
            raise StateFormatError(f"{path} lacks tensors {sorted(expected - set(tensors))}")
        if meta.get("content_sha256") != _content_digest(tensors):
            raise StateFormatError(f"{path} failed its checksum: the file was modified or corrupted")
        saved_config = FwPKMConfig.from_json(meta["config"])
        if config is not None and config != saved_config:
            raise StateError("the saved memory state was made by a layer with another configuration")
        if meta.get("base_keys_sha256") != tensor_fingerprint(base_keys) or meta.get(
            "base_values_sha256"
        ) != tensor_fingerprint(base_values):
            raise StateError(f"{path} was written over other initial fast weights (different layer or seed)")
        device = base_values.device
        t = {name: x.to(device) for name, x in tensors.items()}
        return cls(
            config=saved_config,
            mode=meta["mode"],
            batch_size=int(meta["batch_size"]),
            base_keys=base_keys,
            keys=t["keys"],
            values=SparseValues(base_values, t["slot_map"], t["rows"]),
            position=int(meta["position"]),
            pending_q=t["pending_q"],
            pending_v=t["pending_v"],
            pending_g=t["pending_g"],
            pending_mask=t["pending_mask"],
            conv_cache=t["conv_cache"],
            updates=int(meta["updates"]),
            refused=t["refused"],
        )


def _content_digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        x = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(x.shape)).encode() + str(x.dtype).encode())
        digest.update(x.view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return digest.hexdigest()
