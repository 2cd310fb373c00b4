"""`FwPKMForCausalLM`: a decoder LM whose FwPKM sub-blocks are the retrieval index (docs/model.md).

    model = FwPKMForCausalLM(FwPKMModelConfig.preset("tiny"))
    cache = model.init_cache(batch_size=1)
    out = model(ids_part1, cache=cache)                 # any split of a stream == one call (spec §8)
    out = model(ids_part2, cache=cache, return_memory=True)
    out.memory_reads[i]  -> (slots (B,T,H,k), weights (B,T,H,k), write gate (B,T)) of FwPKM layer i
    out.memory_writes[i] -> the write records of FwPKM layer i made in this call
    writes = model.flush_memory(cache)                  # write the queued partial chunks
    model.generate(question_ids, cache=cache, max_new_tokens=8)   # answers from the memory

It implements the `MemoryLM` interface (modeling/protocol.py); the streaming plumbing it shares with
`AttachedFwPKMModel` lives in modeling/streaming.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel

from fwpkm_rag.errors import InputError
from fwpkm_rag.memory import FwPKM, initial_fast_weights
from fwpkm_rag.modeling.cache import FwPKMCache
from fwpkm_rag.modeling.config import FwPKMModelConfig
from fwpkm_rag.modeling.layers import DecoderLayer, StaticPKM, rope_tables
from fwpkm_rag.modeling.streaming import FwPKMCausalLMOutput, StreamingLM


class FwPKMForCausalLM(StreamingLM, PreTrainedModel, GenerationMixin):
    cache_class = FwPKMCache
    repeats_cache_streams = True  # generate() repeats prompts for beams / return sequences
    config_class = FwPKMModelConfig
    base_model_prefix = "fwpkm"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}
    _is_stateful = True  # generate: no assisted decoding (a written memory cannot be rolled back)
    _supports_cache_class = True

    def __init__(self, config: FwPKMModelConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    # ---- weights ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers.initialization's functions skip tensors already loaded from a checkpoint.
        from transformers import initialization as init

        cfg = self.config
        if isinstance(module, FwPKM):
            module_reset_fwpkm(module, init)
        elif isinstance(module, StaticPKM):
            bound = 1.0 / module.k_dim**0.5
            init.uniform_(module.sub_keys, -bound, bound)
            init.normal_(module.values.weight, 0.0, module.values.weight.shape[1] ** -0.5)
        elif module is self.lm_head and cfg.tie_word_embeddings:
            return  # the tied head is the embedding: initialised there
        elif isinstance(module, nn.Linear) and not _inside_fwpkm(self, module):
            init.normal_(module.weight, 0.0, cfg.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module is self.embed_tokens:
            std = cfg.embedding_init_std if cfg.embedding_init_std is not None else cfg.initializer_range
            init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.RMSNorm) and not _inside_fwpkm(self, module):
            init.constant_(module.weight, cfg.final_norm_gain if module is self.norm else 1.0)

    def _restore_fast_weight_tables(self) -> None:
        """Regenerate every FwPKM layer's seeded initial fast weights (non-persistent: never in checkpoints)."""
        for layer in self.layers:
            if layer.fwpkm is not None:
                keys, values = initial_fast_weights(layer.fwpkm.config)
                dev = layer.fwpkm.q_proj.weight.device
                layer.fwpkm.keys_init = keys.to(dev)
                layer.fwpkm.values_init = values.to(dev)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' from_pretrained (safetensors only), plus the seeded initial fast weights."""
        if kwargs.get("use_safetensors") is False:
            raise InputError("FwPKM checkpoints are safetensors only")
        kwargs["use_safetensors"] = True
        model = super().from_pretrained(*args, **kwargs)
        model._restore_fast_weight_tables()
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        if kwargs.get("safe_serialization") is False:
            raise InputError("FwPKM checkpoints are safetensors only")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_tokenizer(self):
        """The tokenizer recorded in the config (offline)."""
        from fwpkm_rag.tokenizer import tokenizer_from_config

        if self.config.tokenizer is None:
            raise InputError("this model's config records no tokenizer (it was built for raw token ids)")
        return tokenizer_from_config(self.config.tokenizer)

    @property
    def fwpkm_modules(self) -> list[FwPKM]:
        """The FwPKM sub-blocks, in the order of config.fwpkm_layers (and of cache.memory, memory_reads)."""
        return [self.layers[i].fwpkm for i in self.config.fwpkm_layers]

    def as_reader(self) -> "FwPKMForCausalLM":
        """The reader of classic RAG over this model: itself (its memory is part of how it reads)."""
        return self

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        cache: Optional[FwPKMCache] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        read_only: bool = False,
        return_memory: bool = False,
        logits_to_keep: int = 0,
        memory_only: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> FwPKMCausalLMOutput:
        """Run tokens through the model, continuing the stream in `cache` if given.

        input_ids (B, T) int; attention_mask (B, >=T), 0 = padding (its last T columns are used);
        cache: updated in place and returned (a new one is made when None and use_cache=True);
        read_only: every memory is frozen for this call (nothing written or queued; the KV still advances);
        return_memory: fill memory_reads / memory_writes; logits_to_keep: only the last N logits (0 = all);
        memory_only: the caller needs only the memory reads/writes: every layer still runs (the cache stays
        complete and the memories are exactly those of a full call), only the output head is skipped (logits None);
        labels (B, T): next-token loss, labels shifted inside, -100 ignored.
        """
        if cache is None and kwargs.get("past_key_values") is not None:  # older generate() name
            cache = kwargs["past_key_values"]
        if "inputs_embeds" in kwargs and kwargs["inputs_embeds"] is not None:
            raise InputError("FwPKMForCausalLM takes input_ids only (no inputs_embeds)")
        input_ids = self._check_input_ids(input_ids)
        B, T = input_ids.shape
        mask = self._call_mask(attention_mask, B, T)
        self._check_memory_only(memory_only, labels, output_hidden_states)
        if cache is None and use_cache:
            cache = FwPKMCache()
        if cache is not None:
            self._check_cache_type(cache)
            self._fit_cache(cache, B)
        grad = torch.is_grad_enabled()
        inplace = not grad  # without autograd, write the memories in place (no copy per call)

        past_len = cache.position if cache is not None else 0
        positions = torch.arange(past_len, past_len + T, device=input_ids.device)
        h = self.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta, h.dtype)
        real = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=h.device)
        if cache is not None and cache.key_valid is not None:
            key_valid = torch.cat([cache.key_valid, real], dim=1)  # (B, P + T)
        else:
            key_valid = real
        memories = list(cache.memory) if cache is not None else [None] * len(self.config.fwpkm_layers)
        reads, writes, mem_i = [], [], 0
        for li, layer in enumerate(self.layers):
            past = cache.kv[li] if cache is not None else None
            state = None
            if layer.fwpkm is not None:
                state = memories[mem_i] if memories[mem_i] is not None else layer.fwpkm.init_state(B)
            h, new_past, mem_out = layer(h, cos, sin, past, key_valid, state, mask, read_only, inplace, return_memory)
            if cache is not None:
                cache.kv[li] = new_past
            if mem_out is not None:
                memories[mem_i] = mem_out.state
                if return_memory:
                    reads.append((mem_out.slots, mem_out.weights, mem_out.write_gate))
                    writes.append(mem_out.writes)
                mem_i += 1
        if cache is not None:
            cache.memory = memories
            start = max(0, key_valid.shape[1] - (self.config.window - 1))
            cache.key_valid = key_valid[:, start:].clone()  # (B, <= window-1)
            cache.position = past_len + T

        h = self.norm(h)
        hidden = h if output_hidden_states else None
        if logits_to_keep and logits_to_keep < T:
            h = h[:, -logits_to_keep:]
        logits = None if memory_only else self.lm_head(h)  # (B, T', vocab)
        loss = self._next_token_loss(logits, labels, B, T) if labels is not None else None
        return FwPKMCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            memory_reads=reads if return_memory else None,
            memory_writes=writes if return_memory else None,
            hidden_states=hidden,
        )

    # ---- generate ---------------------------------------------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own FwPKMCache on the first forward

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        next_sequence_length: Optional[int] = None,
        cache: Optional[FwPKMCache] = None,
        attention_mask: Optional[Tensor] = None,
        use_cache: bool = True,
        logits_to_keep: Optional[int] = None,
        read_only: bool = False,
        **kwargs,
    ) -> dict:
        """Feed the tokens the cache has not seen: the whole prompt first (with a prefilled cache the prompt is
        only the new tokens: the memory holds the rest), then one token per step."""
        if cache is None and kwargs.get("past_key_values") is not None:
            cache = kwargs["past_key_values"]
        ids = input_ids[:, -next_sequence_length:] if (next_sequence_length and use_cache) else input_ids
        inputs = {"input_ids": ids.contiguous(), "cache": cache, "use_cache": use_cache, "read_only": read_only}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def _reorder_cache(self, cache: FwPKMCache, beam_idx: Tensor) -> FwPKMCache:
        cache.reorder_cache(beam_idx)
        return cache


def _inside_fwpkm(model: FwPKMForCausalLM, module: nn.Module) -> bool:
    """Is `module` part of a FwPKM sub-block (initialised by the layer's own rule)?"""
    return any(module is m for layer in model.layers if layer.fwpkm is not None for m in layer.fwpkm.modules())


def module_reset_fwpkm(layer: FwPKM, init) -> None:
    """The FwPKM layer's own init (N(0, 0.02), zero bias, identity query conv), skipping loaded tensors, and its
    seeded initial fast weights (non-persistent buffers, regenerated rather than loaded)."""
    for lin in (layer.q_proj, layer.v_proj, layer.g_proj, layer.o_proj):
        init.normal_(lin.weight, 0.0, 0.02)
        init.zeros_(lin.bias)
    for norm in (layer.q_norm, layer.v_norm, layer.g_norm, layer.o_norm):
        init.ones_(norm.weight)
    if layer.q_conv is not None:
        identity = torch.zeros_like(layer.q_conv)
        identity[:, -1] = 1.0  # taps (t-K+1 .. t) = (0, ..., 0, 1): the conv starts as the identity
        init.copy_(layer.q_conv, identity)
    keys, values = initial_fast_weights(layer.config)
    if layer.keys_init.device.type != "meta":
        layer.keys_init.copy_(keys.to(layer.keys_init.device))
        layer.values_init.copy_(values.to(layer.values_init.device))
