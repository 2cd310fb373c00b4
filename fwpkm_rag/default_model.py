"""Loading models: the shipped default model and `load_model(path)`, the one way to get a MemoryLM from a folder.

The default model is the tiny preset trained by `fwpkm-rag train --preset tiny` (docs/model-card.md); it lives
inside the package (fwpkm_rag/default_model/: config.json + model.safetensors) and loads offline.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

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


def load_model(path: Optional[str | os.PathLike] = None):
    """The MemoryLM in `path`, in eval mode: a `save_pretrained` folder of FwPKMForCausalLM (config.json), or the
    FwPKM weights of an attached backbone (fwpkm.json: AttachedFwPKMModel.load, which loads the named offline
    backbone). None: the shipped default model (`load_default_model()`, shared and cached)."""
    if path is None:
        return load_default_model()
    from fwpkm_rag.modeling.attach import META_FILE

    path = os.fspath(path)
    # save_fwpkm writes fwpkm.json + fwpkm.safetensors and never a config.json: that tells the two apart.
    if os.path.exists(os.path.join(path, META_FILE)) and not os.path.exists(os.path.join(path, "config.json")):
        from fwpkm_rag.modeling.attached import AttachedFwPKMModel

        return AttachedFwPKMModel.load(path).eval()
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    return FwPKMForCausalLM.from_pretrained(path).eval()
