"""Backend selection for the FwPKM hot ops: ``auto | torch | triton``.

The choice comes from `set_backend` / `use_backend` if called, else from the environment variable
``FWPKM_BACKEND``, else ``auto``. ``auto`` means triton for CUDA tensors when triton imports, triton on CPU
tensors only under ``TRITON_INTERPRET=1`` (the interpreter: how the kernels are tested without a GPU), and
torch otherwise. Triton is imported lazily, inside `backend_module("triton")` only, so `import fwpkm_rag`
never pays for it (or fails without it). Each backend actually used is logged once.
"""
from __future__ import annotations

import importlib
import logging
import os
from contextlib import contextmanager
from types import ModuleType
from typing import Optional

import torch

BACKENDS = ("auto", "torch", "triton")
log = logging.getLogger("fwpkm_rag.kernels")

_override: Optional[str] = None
_logged: set = set()
_triton_ok: Optional[bool] = None


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"FwPKM backend must be one of {BACKENDS}, got {name!r}")
    return name


def requested_backend() -> str:
    """The backend asked for (before resolving auto): set_backend > $FWPKM_BACKEND > auto."""
    return _check(_override or os.environ.get("FWPKM_BACKEND", "auto").strip().lower() or "auto")


def set_backend(name: Optional[str]) -> None:
    """Force a backend for this process (None: back to $FWPKM_BACKEND / auto)."""
    global _override
    _override = None if name is None else _check(name)


@contextmanager
def use_backend(name: Optional[str]):
    """Temporarily force a backend (tests and benchmarks)."""
    global _override
    old = _override
    set_backend(name)
    try:
        yield
    finally:
        _override = old


def triton_available() -> bool:
    global _triton_ok
    if _triton_ok is None:
        try:
            importlib.import_module("triton")
            _triton_ok = True
        except Exception:  # ImportError, or a broken install: fall back to torch under auto
            _triton_ok = False
    return _triton_ok


def _interpreting() -> bool:
    # Read at call time: the interpreter flag only matters for CPU tensors.
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve(device: torch.device, name: Optional[str] = None) -> str:
    """The concrete backend ("torch" or "triton") for tensors on `device`."""
    name = _check(name) if name is not None else requested_backend()
    if name == "auto":
        if device.type == "cuda" and triton_available():
            name = "triton"
        elif device.type == "cpu" and _interpreting() and triton_available():
            name = "triton"
        else:
            name = "torch"
    elif name == "triton":
        if not triton_available():
            raise RuntimeError("FWPKM_BACKEND=triton but triton is not installed (pip install 'fwpkm-rag[triton]')")
        if device.type == "cpu" and not _interpreting():
            raise RuntimeError("the triton backend needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors")
    return name


def backend_module(name: str) -> ModuleType:
    """The namespace of a concrete backend's primitives, `torch_ops` or `triton_ops` (the latter imports triton),
    each gathering the ops' `<backend>_impl.py` under the same names."""
    mod = importlib.import_module(f"fwpkm_rag.kernels.{name}_ops")
    if name not in _logged:
        _logged.add(name)
        log.info("FwPKM kernels: using the %s backend (requested: %s)", name, requested_backend())
    return mod


def get_backend(device: torch.device, name: Optional[str] = None) -> ModuleType:
    return backend_module(resolve(device, name))
