"""`load_model`: the one way to get a `MemoryLM` from a folder (or the shipped default model)."""
from __future__ import annotations

import os
from typing import Optional

from fwpkm_rag.modeling.attach import META_FILE


def load_model(path: Optional[str | os.PathLike] = None):
    """The model in `path`, in eval mode: a `save_pretrained` folder of FwPKMForCausalLM (config.json), or the
    FwPKM weights of an attached backbone (fwpkm.json: AttachedFwPKMModel.load, which loads the named offline
    backbone). None: the shipped default model (`load_default_model()`, shared and cached)."""
    if path is None:
        from fwpkm_rag.default_model import load_default_model

        return load_default_model()
    path = os.fspath(path)
    # save_fwpkm writes fwpkm.json + fwpkm.safetensors and never a config.json: that tells the two apart.
    if os.path.exists(os.path.join(path, META_FILE)) and not os.path.exists(os.path.join(path, "config.json")):
        from fwpkm_rag.modeling.attached import AttachedFwPKMModel

        return AttachedFwPKMModel.load(path).eval()
    from fwpkm_rag.modeling.model import FwPKMForCausalLM

    return FwPKMForCausalLM.from_pretrained(path).eval()
