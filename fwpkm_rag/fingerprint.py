"""sha256 fingerprints of model weights: which model a saved store or a set of FwPKM weights belongs to."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, Optional

import torch

# config keys that name or place a model rather than define it
NAME_KEYS = ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures", "quantization_config",
             "_model_name_or_path")
_cache: dict = {}


def weights_fingerprint(owner, config: Optional[Mapping], state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of `config` (JSON, naming keys dropped) and every tensor of `state` (names, shapes, dtypes, bytes).

    Cached per `owner` while the tensors are unchanged (same storage, same version counters)."""
    key = (id(owner), tuple((n, t.data_ptr(), t._version) for n, t in state.items()))
    if key in _cache:
        return _cache[key]
    h = hashlib.sha256()
    if config is not None:
        cfg = {k: v for k, v in config.items() if k not in NAME_KEYS}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    if len(_cache) >= 4:
        _cache.clear()
    _cache[key] = h.hexdigest()
    return _cache[key]


def sha256_file(path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks: checkpoints and saved store files."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
