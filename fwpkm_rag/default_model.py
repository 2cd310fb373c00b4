"""The shipped default model: the tiny preset trained by `fwpkm-rag train --preset tiny` (docs/model-card.md).

It lives inside the package (fwpkm_rag/default_model/: config.json + model.safetensors) and loads offline.
"""
from __future__ import annotations

import os
from functools import lru_cache

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def default_model_path() -> str:
    return DEFAULT_MODEL_DIR


@lru_cache(maxsize=1)
def _load(path: str):
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    return FwPKMForCausalLM.from_pretrained(path).eval()


def load_default_model(fresh: bool = False):
    """The default FwPKMForCausalLM in eval mode, loaded offline from the package.

    The model object is cached and shared (its slow weights are never changed by inference: memories live in
    caches). `fresh=True` loads a private copy, e.g. to fine-tune it.
    """
    if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "model.safetensors")):
        raise FileNotFoundError(
            f"the default model is missing from {DEFAULT_MODEL_DIR}: reinstall fwpkm-rag, or train one with "
            "`fwpkm-rag train --preset tiny` and pass it as model="
        )
    if fresh:
        return _load.__wrapped__(DEFAULT_MODEL_DIR)
    return _load(DEFAULT_MODEL_DIR)
