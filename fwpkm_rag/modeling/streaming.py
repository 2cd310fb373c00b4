"""What both FwPKM language models share: the output type and the streaming interface (`StreamingLM`).

`FwPKMForCausalLM` and `AttachedFwPKMModel` differ in how they run their layers; everything around that —
checking input ids and padding masks, making, fitting, flushing and loading caches, the memory-only rule — is
written once here and is the `MemoryLM` protocol's (fwpkm_rag.modeling.protocol) implementation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from transformers.utils import ModelOutput

from fwpkm_rag.errors import InputError, StateError, check_int
from fwpkm_rag.memory import MemoryState
from fwpkm_rag.modeling.cache import FwPKMCache

_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


@dataclass
class FwPKMCausalLMOutput(ModelOutput):
    loss: Optional[Tensor] = None  # () mean next-token cross-entropy over non-ignored labels
    logits: Optional[Tensor] = None  # (B, T or logits_to_keep, vocab); None for memory_only calls
    cache: Optional[FwPKMCache] = None  # the (updated) streaming cache, when one was used
    memory_reads: Optional[list] = None  # per FwPKM layer: (slots, weights, write gate) of this call's tokens
    memory_writes: Optional[list] = None  # per FwPKM layer: list of write dicts made in this call
    hidden_states: Optional[Tensor] = None  # (B, T, d) final hidden states (output_hidden_states=True)


class StreamingLM:
    """Mixin: the streaming cache interface of a model with `config` (n_layers, fwpkm_layers, vocab_size),
    `device` and `fwpkm_modules`. Subclasses set `cache_class` and say whether a cache may be repeated to a
    larger batch (`repeats_cache_streams`: transformers' generate repeats prompts for beams)."""

    cache_class: type = FwPKMCache
    repeats_cache_streams: bool = False

    # ---- caches -----------------------------------------------------------------------------------------------
    def init_cache(self, batch_size: int = 1, *, mode: Optional[str] = None,
                   memories: Optional[Sequence[MemoryState]] = None) -> FwPKMCache:
        """A fresh streaming cache: empty KV windows and fresh memories (`isolated`: one per stream).

        memories: one MemoryState per FwPKM layer: the cache reads and writes exactly these states (not
        copies) — for questions over a store's memories, pass read_only=True to every call."""
        batch_size = check_int("batch_size", batch_size, 1, error=InputError)
        if memories is not None:
            if mode is not None and any(m.mode != mode for m in memories):
                raise StateError(f"mode={mode!r} but the given memories are {sorted({m.mode for m in memories})}")
            return self.cache_class.from_memories(self, memories, batch_size)
        cache = self.cache_class(batch_size, mode)
        cache._setup(self, batch_size)
        return cache

    def flush_memory(self, cache: FwPKMCache) -> list:
        """Write the queued partial chunk of every memory in `cache` now; returns the writes per FwPKM layer."""
        self._check_cache_type(cache)
        return cache.flush() if cache.initialized else [[] for _ in self.config.fwpkm_layers]

    def load_cache(self, directory) -> FwPKMCache:
        """The cache that `cache.save(directory)` wrote, on this model's device (StateFormatError when it is
        damaged or was made for other layers)."""
        return self.cache_class.load(directory, self)

    def _check_cache_type(self, cache) -> None:
        if not isinstance(cache, self.cache_class):
            raise InputError(f"cache must be a {self.cache_class.__name__} (model.init_cache()), "
                             f"got {type(cache).__name__}")

    def _fit_cache(self, cache: FwPKMCache, B: int) -> None:
        """Size an empty cache for this model, or check that a used one fits it and a batch of B streams."""
        if not cache.initialized:
            cache._setup(self, cache.batch_size or B)
        if cache.n_layers != self.config.n_layers or cache.fwpkm_layers != list(self.config.fwpkm_layers):
            raise StateError("this cache was made for a model with other layers")
        if cache.batch_size != B:
            if self.repeats_cache_streams and B % cache.batch_size == 0 and cache.mode == "isolated":
                # generate() repeats each prompt for beams / return sequences: repeat the streams likewise.
                cache.select_(torch.arange(cache.batch_size).repeat_interleave(B // cache.batch_size))
            else:
                raise StateError(f"the cache holds {cache.batch_size} stream(s) but the input has {B}")

    # ---- inputs -------------------------------------------------------------------------------------------------
    def _check_input_ids(self, input_ids) -> Tensor:
        """input_ids as a (B, T) long tensor on the model's device, or InputError saying what is wrong."""
        if not isinstance(input_ids, Tensor):
            raise InputError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in _ID_DTYPES:
            raise InputError(
                f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}; "
                "token ids come from the tokenizer, e.g. torch.tensor([tok.encode(text)])"
            )
        if input_ids.dim() == 1:
            raise InputError(f"input_ids must have shape (batch, tokens); got 1-D {tuple(input_ids.shape)}: use ids[None]")
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise InputError(f"input_ids must have shape (batch, tokens) with both > 0, got {tuple(input_ids.shape)}")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise InputError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        if input_ids.device != self.device:
            raise InputError(f"input_ids are on {input_ids.device} but the model is on {self.device}")
        return input_ids.long()

    @staticmethod
    def _call_mask(attention_mask, B: int, T: int) -> Optional[Tensor]:
        """(B, T) bool of real tokens for this call, or None when there is no padding."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, Tensor) or attention_mask.dim() != 2 or attention_mask.shape[0] != B:
            raise InputError(f"attention_mask must be a (batch, tokens) tensor with batch {B}")
        if attention_mask.shape[1] < T:
            raise InputError(f"attention_mask covers {attention_mask.shape[1]} tokens but the call has {T}")
        mask = attention_mask[:, -T:].bool()  # generate passes the mask of the whole sequence so far
        return None if bool(mask.all()) else mask

    @staticmethod
    def _check_memory_only(memory_only: bool, labels, output_hidden_states) -> None:
        if memory_only and (labels is not None or output_hidden_states):
            raise InputError("memory_only=True computes no logits or final hidden states (it stops after the last "
                             "FwPKM layer): drop labels / output_hidden_states")

    @staticmethod
    def _next_token_loss(logits: Optional[Tensor], labels: Tensor, B: int, T: int) -> Tensor:
        """() mean cross-entropy of logits (B, T, V) against labels (B, T) shifted by one, -100 ignored."""
        if labels.shape != (B, T):
            raise InputError(f"labels must have shape {(B, T)}, got {tuple(labels.shape)}")
        if logits is None or logits.shape[1] != T:
            raise InputError("labels need all logits: leave logits_to_keep at 0")
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1).long(), ignore_index=-100
        )
