"""`MemoryLM`: the one interface the RAG pipeline uses to talk to a language model with FwPKM memories.

Both `FwPKMForCausalLM` (the project's own model) and `AttachedFwPKMModel` (FwPKM on a frozen pretrained
decoder) implement it; code that ingests, retrieves or answers takes a `MemoryLM` and calls nothing else on
it — no `hasattr` probes. The tokenizer side is the `Tokenizer` protocol (fwpkm_rag.tokenizer, re-exported
here).

    lm: MemoryLM = fwpkm_rag.load_model()
    cache = lm.init_cache()                                  # a fresh stream
    out = lm(ids, cache=cache, return_memory=True, memory_only=True)
    lm.flush_memory(cache); cache.save(folder)               # and later: cache = lm.load_cache(folder)
    qc = lm.init_cache(memories=cache.memory)                # questions over those memories, read_only=True

This module imports neither transformers nor torch's heavy parts: importing it is cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

from fwpkm_rag.tokenizer import Tokenizer

if TYPE_CHECKING:
    import os

    import torch

    from fwpkm_rag.memory import FwPKM, FwPKMConfig, MemoryState
    from fwpkm_rag.modeling.cache import FwPKMCache
    from fwpkm_rag.modeling.streaming import FwPKMCausalLMOutput

__all__ = ["MemoryLM", "MemoryLMConfig", "TextDecoder", "Tokenizer"]


@runtime_checkable
class TextDecoder(Protocol):
    """What the one decode loop (`pipelines.generation.stream_generate`) needs of a model: every MemoryLM is one,
    and so is a plain pretrained reader without memory (`modeling.reader.ReaderLM`)."""

    @property
    def device(self) -> "torch.device": ...

    def get_tokenizer(self) -> Tokenizer: ...

    def init_cache(self, batch_size: int = 1): ...

    def __call__(self, input_ids: "torch.Tensor", *, cache=None, read_only: bool = False,
                 logits_to_keep: int = 0): ...  # an output with .logits (B, T', vocab)


@runtime_checkable
class MemoryLMConfig(Protocol):
    """What the pipeline reads from `model.config`."""

    fwpkm_layers: list  # list[int]: decoder layers with a FwPKM sub-block, ascending
    fwpkm_config: "FwPKMConfig"  # the memory of every FwPKM layer
    vocab_size: int


@runtime_checkable
class MemoryLM(Protocol):
    """A causal LM whose FwPKM layers are written while it reads (docs/model.md, "The model interface")."""

    config: MemoryLMConfig

    @property
    def device(self) -> "torch.device": ...

    @property
    def fwpkm_modules(self) -> "list[FwPKM]": ...  # in the order of config.fwpkm_layers and cache.memory

    def get_tokenizer(self) -> Tokenizer: ...

    def init_cache(
        self, batch_size: int = 1, *, mode: Optional[str] = None, memories: "Optional[Sequence[MemoryState]]" = None
    ) -> "FwPKMCache":
        """A fresh streaming cache; with `memories` (one MemoryState per FwPKM layer): empty KV over exactly
        those states (not copied: use it with read_only=True, e.g. questions over a store)."""
        ...

    def flush_memory(self, cache: "FwPKMCache") -> list:
        """Write every queued partial chunk now; the write records per FwPKM layer."""
        ...

    def load_cache(self, directory: "str | os.PathLike") -> "FwPKMCache":
        """A cache written by `cache.save(directory)` (StateFormatError when it is damaged or does not fit)."""
        ...

    def __call__(
        self,
        input_ids: "torch.Tensor",
        *,
        cache: "Optional[FwPKMCache]" = None,
        read_only: bool = False,
        return_memory: bool = False,
        logits_to_keep: int = 0,
        memory_only: bool = False,
        attention_mask: "Optional[torch.Tensor]" = None,
        labels: "Optional[torch.Tensor]" = None,
    ) -> "FwPKMCausalLMOutput":
        """forward(): memory_only=True when the caller needs only the memory reads/writes (logits may be None)."""
        ...

    def as_reader(self) -> "MemoryLM":
        """The same weights reading with the memory off and full attention (a classic RAG reader); a model
        with nothing to switch off returns itself."""
        ...
