"""`AttachedFwPKMModel`: a frozen pretrained decoder with FwPKM attached, behind the MemoryLM interface.

The RAG pipeline (MemoryIndex, retrieval, generation, FwPKMStore, ChatFwPKM) talks to a model through the
`MemoryLM` interface (modeling/protocol.py). This adapter provides it over a transformers Llama-family
CausalLM to which `attach_fwpkm` added FwPKM sub-blocks; the cache plumbing and input checks it shares with
FwPKMForCausalLM come from `StreamingLM` (modeling/streaming.py):

    model = AttachedFwPKMModel.from_backbone("smollm2", layers=[7])      # offline SmolLM2-135M-Instruct
    store = FwPKMStore(model=model)                                      # ingests, retrieves, answers

It runs the backbone's own decoder layers (so the attached hooks fire) with its own streaming cache
(`AttachedCache`, a FwPKMCache): a sliding attention window of `window` tokens (the token itself included;
None = full attention), rotary angles formed in float64 (exact at millions of positions), and any split of
a stream giving the same outputs and memories as one call. `memory_only=True` stops after the last FwPKM
layer: what ingestion and retrieval need (their logits are never used), at a fraction of the cost.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from fwpkm_rag.errors import ConfigError, InputError, StateError, check_int
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.modeling.attach import (
    attach_fwpkm, attachment, decoder_of, fwpkm_blocks, is_attached, load_fwpkm, memory_call, read_fwpkm_meta,
    save_fwpkm,
)
from fwpkm_rag.modeling.cache import FwPKMCache
from fwpkm_rag.modeling.hf_tokenizer import HFTokenizer, adapt_tokenizer
from fwpkm_rag.modeling.streaming import FwPKMCausalLMOutput, StreamingLM

# HFTokenizer and adapt_tokenizer were defined here before hf_tokenizer.py: still importable from here
__all__ = ["DEFAULT_WINDOW", "AttachedCache", "AttachedConfig", "AttachedFwPKMModel", "HFTokenizer", "adapt_tokenizer"]

DEFAULT_WINDOW = 1024


# ---- config and cache ----------------------------------------------------------------------------------------
@dataclass
class AttachedConfig:
    """What the pipelines read from `model.config`."""

    fwpkm_layers: list
    fwpkm_config: FwPKMConfig
    vocab_size: int
    n_layers: int
    d_model: int
    window: Optional[int]
    backbone_name: str
    backbone_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model_type": "fwpkm-attached", "fwpkm_layers": list(self.fwpkm_layers),
                "fwpkm": self.fwpkm_config.to_dict(), "vocab_size": self.vocab_size, "n_layers": self.n_layers,
                "d_model": self.d_model, "window": self.window, "backbone_name": self.backbone_name,
                "backbone": self.backbone_config}


class AttachedCache(FwPKMCache):
    """Streaming state of an AttachedFwPKMModel: per decoder layer the rotated keys/values of the last
    window-1 positions (all of them with window=None), per FwPKM layer its MemoryState.

    Also the transformers cache interface the decoder layers call (`update`). A cache that streamed
    memory-only calls has no attention context above the last FwPKM layer (`truncated`): it can only go on
    memory-only."""

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        past = self.kv[layer_idx]
        if past is not None:
            key_states = torch.cat([past[0], key_states], dim=-2)  # (B, h, P + t, dh)
            value_states = torch.cat([past[1], value_states], dim=-2)
        self.kv[layer_idx] = (key_states, value_states)
        return key_states, value_states


# ---- the adapter ---------------------------------------------------------------------------------------------
class AttachedFwPKMModel(StreamingLM, nn.Module):
    """A transformers Llama-family CausalLM with FwPKM attached, behind the MemoryLM interface."""

    cache_class = AttachedCache

    def __init__(self, backbone: nn.Module, tokenizer=None, *, window: Optional[int] = DEFAULT_WINDOW,
                 name: Optional[str] = None, use_memory: bool = True):
        super().__init__()
        if not is_attached(backbone):
            raise StateError("the backbone has no FwPKM attached: call fwpkm_rag.attach_fwpkm(backbone, ...) first")
        window = check_int("window", window, 2, optional=True)  # None: full attention
        self.backbone = backbone
        self.window = window
        self.use_memory = use_memory
        self._tok = adapt_tokenizer(tokenizer)
        dec = decoder_of(backbone)
        rope_type = getattr(getattr(dec, "rotary_emb", None), "rope_type", "default")
        if not hasattr(dec, "rotary_emb") or rope_type in ("dynamic", "longrope"):
            raise ConfigError(f"unsupported rotary embedding ({rope_type!r}): the adapter needs fixed RoPE frequencies")
        att = attachment(backbone)
        hf_cfg = getattr(backbone, "config", None)
        cfg_dict = hf_cfg.to_dict() if hasattr(hf_cfg, "to_dict") else {}
        for drop in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures",
                     "quantization_config", "_model_name_or_path"):
            cfg_dict.pop(drop, None)
        vocab = int(dec.embed_tokens.weight.shape[0])
        self.config = AttachedConfig(list(att.layers), att.config, vocab, len(dec.layers),
                                     int(dec.embed_tokens.weight.shape[1]), window,
                                     name or getattr(hf_cfg, "model_type", type(backbone).__name__), cfg_dict)
        params = inspect.signature(dec.layers[0].forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._check_rope()

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, name: str = "smollm2", *, layers=None, config: Optional[FwPKMConfig] = None,
                      window: Optional[int] = DEFAULT_WINDOW, calibrate: bool = True,
                      calibration_tokens: int = 1024) -> "AttachedFwPKMModel":
        """Load a named offline backbone (fwpkm_rag.backbone), attach FwPKM and wrap it.

        calibrate: standardise the blocks' projections on `calibration_tokens` tokens of the corpus's train
        split (attach.calibrate_fwpkm; a second or two), so that queries spread over the slots."""
        from fwpkm_rag.backbone import load_backbone

        backbone, tok = load_backbone(name)
        attach_fwpkm(backbone, layers, config)
        model = cls(backbone, tok, window=window, name=name)
        if calibrate:
            model.calibrate(calibration_tokens)
        return model

    def calibrate(self, n_tokens: int = 1024, text: Optional[str] = None) -> dict:
        """attach.calibrate_fwpkm on `text` (default: `n_tokens` of the corpus's train split)."""
        from fwpkm_rag.modeling.attach import calibrate_fwpkm

        tok = self.get_tokenizer()
        if text is None:
            from fwpkm_rag.data.corpora import iter_paragraphs

            parts, count = [], 0
            for par in iter_paragraphs("train", sources=("pydoc",), seed=0):
                parts.append(par)
                count += len(tok.encode(par))
                if count >= n_tokens:
                    break
            text = "\n\n".join(parts)
        ids = tok.encode(text)[:n_tokens]
        return calibrate_fwpkm(self.backbone, torch.tensor([ids], device=self.device))

    def save_pretrained(self, directory, **_ignored) -> str:
        """Only the FwPKM weights + fwpkm.json (layers, memory config, backbone name and fingerprint, window)."""
        return save_fwpkm(self.backbone, directory, backbone_name=self.config.backbone_name,
                          extra={"window": self.window})

    @classmethod
    def load(cls, directory, backbone: Optional[nn.Module] = None, tokenizer=None, *,
             check_backbone: bool = True) -> "AttachedFwPKMModel":
        """FwPKM weights saved by `save_pretrained`, on `backbone` (default: load the named offline backbone)."""
        meta = read_fwpkm_meta(directory)
        name = meta.get("backbone", {}).get("name", "smollm2")
        if backbone is None:
            from fwpkm_rag.backbone import load_backbone

            backbone, tokenizer = load_backbone(name)
        load_fwpkm(backbone, directory, check_backbone=check_backbone)
        return cls(backbone, tokenizer, window=meta.get("window", DEFAULT_WINDOW), name=name)

    def as_reader(self) -> "AttachedFwPKMModel":
        """The same backbone without its memories and with full attention: a classic RAG reader."""
        return AttachedFwPKMModel(self.backbone, self._tok, window=None, name=self.config.backbone_name,
                                  use_memory=False)

    # ---- the MemoryLM interface (init_cache, flush_memory, load_cache: StreamingLM) ----------------------------
    @property
    def device(self) -> torch.device:
        return decoder_of(self.backbone).embed_tokens.weight.device

    @property
    def lm_head(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    @property
    def fwpkm_modules(self) -> list:
        return fwpkm_blocks(self.backbone)

    def get_tokenizer(self):
        if self._tok is None:
            raise InputError("this model was built without a tokenizer: pass tokenizer= to AttachedFwPKMModel")
        return self._tok

    # ---- rotary angles in float64 ---------------------------------------------------------------------------
    def _rope(self, positions: Tensor, dtype) -> tuple:
        rot = decoder_of(self.backbone).rotary_emb
        inv = rot.inv_freq.to(device=positions.device, dtype=torch.float64)
        ang = torch.remainder(positions.to(torch.float64)[:, None] * inv[None, :], 2 * math.pi)
        emb = torch.cat([ang, ang], dim=-1)
        scale = float(getattr(rot, "attention_scaling", 1.0))
        return (emb.cos() * scale).to(dtype)[None], (emb.sin() * scale).to(dtype)[None]

    def _check_rope(self) -> None:
        """Our angles must equal the backbone's own rotary embedding (same layout): checked once, on 8 positions."""
        dec = decoder_of(self.backbone)
        ref = dec.embed_tokens.weight
        pos = torch.arange(8, device=ref.device)
        with torch.no_grad():
            cos_ref, sin_ref = dec.rotary_emb(ref.new_zeros(1, 8, 1), pos[None])
        cos, sin = self._rope(pos, cos_ref.dtype)
        if cos.shape != cos_ref.shape or not torch.allclose(cos, cos_ref, atol=1e-4) or not torch.allclose(sin, sin_ref, atol=1e-4):
            raise ConfigError("this backbone's rotary embedding has another layout than Llama's: not supported")

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                cache: Optional[AttachedCache] = None, labels: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                read_only: bool = False, return_memory: bool = False, logits_to_keep: int = 0,
                memory_only: bool = False, output_hidden_states: Optional[bool] = None, **kwargs) -> FwPKMCausalLMOutput:
        """Like FwPKMForCausalLM.forward; memory_only=True runs only up to the last FwPKM layer (no logits)."""
        if kwargs.get("inputs_embeds") is not None:
            raise InputError("AttachedFwPKMModel takes input_ids only (no inputs_embeds)")
        ids = self._check_input_ids(input_ids)
        B, T = ids.shape
        mask = self._call_mask(attention_mask, B, T)
        self._check_memory_only(memory_only, labels, output_hidden_states)
        temporary = cache is None
        cache = self.init_cache(B) if temporary else cache
        self._check_cache_type(cache)
        self._fit_cache(cache, B)
        if not memory_only and (cache.truncated or (cache.position > 0 and any(kv is None for kv in cache.kv))):
            raise StateError("this cache streamed memory-only calls (ingestion): its layers above the last FwPKM "
                             "layer hold no attention context. Use a fresh cache (e.g. model.init_cache(memories=cache.memory)) "
                             "to compute logits or generate")
        if memory_only:
            cache.truncated = True
        needed = T if not logits_to_keep else min(int(logits_to_keep), T)
        step = T if self.window is None else max(self.window, 1)
        logits, hidden, reads, writes = [], [], None, None
        for s in range(0, T, step):
            e = min(s + step, T)
            keep = max(0, min(e - s, e - (T - needed)))
            out = self._block(ids[:, s:e], None if mask is None else mask[:, s:e], cache, read_only=read_only,
                              collect=return_memory, keep=keep, memory_only=memory_only,
                              want_hidden=bool(output_hidden_states))
            if out["logits"] is not None:
                logits.append(out["logits"])
            if out["hidden"] is not None:
                hidden.append(out["hidden"])
            if return_memory:
                if reads is None:
                    reads, writes = out["reads"], out["writes"]
                else:
                    reads = [tuple(torch.cat([a, b], dim=1) for a, b in zip(r0, r1)) for r0, r1 in zip(reads, out["reads"])]
                    writes = [w0 + w1 for w0, w1 in zip(writes, out["writes"])]
        logits_t = torch.cat(logits, dim=1) if logits else None
        loss = self._next_token_loss(logits_t, labels, B, T) if labels is not None else None
        return FwPKMCausalLMOutput(loss=loss, logits=logits_t, cache=None if (temporary and not use_cache) else cache,
                                   memory_reads=reads, memory_writes=writes,
                                   hidden_states=torch.cat(hidden, dim=1) if hidden else None)

    def _block(self, ids: Tensor, mask: Optional[Tensor], cache: AttachedCache, *, read_only: bool, collect: bool,
               keep: int, memory_only: bool, want_hidden: bool) -> dict:
        dec = decoder_of(self.backbone)
        B, t = ids.shape
        P = cache.position
        dev = ids.device
        positions = torch.arange(P, P + t, device=dev)
        h = dec.embed_tokens(ids)
        cos, sin = self._rope(positions, h.dtype)
        real = mask if mask is not None else torch.ones(B, t, dtype=torch.bool, device=dev)
        key_valid = torch.cat([cache.key_valid, real], dim=1) if cache.key_valid is not None else real
        Pk = key_valid.shape[1] - t
        kpos = torch.arange(P - Pk, P + t, device=dev)
        allowed = kpos[None, :] <= positions[:, None]
        if self.window is not None:
            allowed &= kpos[None, :] > positions[:, None] - self.window
        allowed = allowed[None, None] & key_valid[:, None, None, :]
        own = torch.zeros(t, Pk + t, dtype=torch.bool, device=dev)
        own[torch.arange(t, device=dev), Pk + torch.arange(t, device=dev)] = True  # no fully masked row (padding)
        allowed = allowed | own[None, None]
        attn = torch.zeros(allowed.shape, dtype=h.dtype, device=dev).masked_fill(~allowed, torch.finfo(h.dtype).min)
        att = attachment(self.backbone)
        n_run = att.layers[-1] + 1 if memory_only else len(dec.layers)
        layer_kwargs = {"attention_mask": attn, "position_ids": positions[None], "position_embeddings": (cos, sin),
                        "use_cache": True, self._cache_kw: cache}
        with memory_call(list(cache.memory), mask=mask, read_only=read_only, inplace=not torch.is_grad_enabled(),
                         collect=collect, use_memory=self.use_memory) as call:
            for li in range(n_run):
                h = dec.layers[li](h, **layer_kwargs)
                if isinstance(h, tuple):
                    h = h[0]
        if self.use_memory:
            cache.memory = call.states
        cache.position = P + t
        limit = None if self.window is None else self.window - 1
        for li in range(n_run):
            k, v = cache.kv[li]
            if limit is not None and k.shape[-2] > limit:
                cache.kv[li] = (k[..., k.shape[-2] - limit:, :].clone(), v[..., v.shape[-2] - limit:, :].clone())
        cache.key_valid = key_valid if limit is None else key_valid[:, max(0, key_valid.shape[1] - limit):].clone()
        out = {"logits": None, "hidden": None, "reads": None, "writes": None}
        if collect:
            n = len(att.layers)
            if self.use_memory:
                out["reads"] = [call.reads[j] for j in range(n)]
                out["writes"] = [call.writes[j] for j in range(n)]
            else:
                out["reads"], out["writes"] = [], []
        if not memory_only:
            h = dec.norm(h)
            if want_hidden:
                out["hidden"] = h
            if keep:
                out["logits"] = self.lm_head(h[:, t - keep:])
        return out

    def extra_repr(self) -> str:
        return f"fwpkm_layers={self.config.fwpkm_layers}, window={self.window}, use_memory={self.use_memory}"
