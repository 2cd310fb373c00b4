"""`AttachedFwPKMModel`: a frozen pretrained decoder with FwPKM attached, behind FwPKMForCausalLM's interface.

The RAG pipeline (MemoryIndex, retrieval, generation, FwPKMStore, ChatFwPKM) talks to a model through a small
interface: `config.fwpkm_layers`, `config.fwpkm_config`, `config.vocab_size`, `get_tokenizer()`,
`embed_tokens`, `fwpkm_modules`, `init_cache()`, and `model(ids, cache=, read_only=, return_memory=,
logits_to_keep=)` returning logits and the memory reads/writes. This adapter provides it over a transformers
Llama-family CausalLM to which `attach_fwpkm` added FwPKM sub-blocks:

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
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwpkm_rag.errors import ConfigError, InputError, StateError
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.modeling.attach import (
    attach_fwpkm, attachment, decoder_of, fwpkm_blocks, is_attached, load_fwpkm, memory_call, read_fwpkm_meta,
    save_fwpkm,
)
from fwpkm_rag.modeling.cache import FwPKMCache
from fwpkm_rag.modeling.model import FwPKMCausalLMOutput, FwPKMForCausalLM
from fwpkm_rag.tokenizer import FwPKMTokenizer

DEFAULT_WINDOW = 1024


# ---- tokenizer adapter ---------------------------------------------------------------------------------------
def _byte_decoder() -> dict:
    """GPT-2 byte-level BPE: the printable character standing for each byte -> that byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


class HFTokenizer:
    """A transformers tokenizer behind the project tokenizer's interface (encode/decode/decode_bytes, eos_id,
    special ids, chat prompts). Text is always encoded as text: a literal "<|im_end|>" in a document never
    becomes the special token."""

    def __init__(self, hf_tokenizer, *, separator: Optional[str] = None):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        added = getattr(hf_tokenizer, "added_tokens_decoder", {}) or {}
        self._special_ids = {tok.content: int(i) for i, tok in added.items() if getattr(tok, "special", True)}
        for name in ("eos_token", "bos_token", "pad_token", "unk_token"):
            content = getattr(hf_tokenizer, name, None)
            if content and content not in self._special_ids:
                tid = hf_tokenizer.convert_tokens_to_ids(content)
                if tid is not None:
                    self._special_ids[content] = int(tid)
        sep = separator or ("<|endoftext|>" if "<|endoftext|>" in self._special_ids else hf_tokenizer.eos_token)
        if sep is None or sep not in self._special_ids:
            raise ConfigError("the tokenizer has no end-of-text / eos special token to separate documents with")
        self.eos_id = self._special_ids[sep]  # document separator (the project's eos_id meaning)
        self.bos_id = self.eos_id
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.special_token_ids = frozenset(self._special_ids.values())
        self._bytes: Optional[list] = None
        self._lengths: Optional[np.ndarray] = None

    @property
    def special_ids(self) -> dict:
        return dict(self._special_ids)

    @property
    def name(self) -> str:
        return getattr(self.hf, "name_or_path", type(self.hf).__name__)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list:
        text = FwPKMTokenizer._check_text(text)
        ids = list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self) -> list:
        """Bytes of every token id (special tokens: their names' UTF-8 bytes)."""
        if self._bytes is None:
            dec = _byte_decoder()
            pieces = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
            specials = {i: c for c, i in self._special_ids.items()}
            out = []
            for i, piece in enumerate(pieces):
                if i in specials:
                    out.append(specials[i].encode("utf-8"))
                elif piece is not None and all(ch in dec for ch in piece):
                    out.append(bytes(dec[ch] for ch in piece))
                else:  # not a byte-level BPE piece: its decoded text
                    out.append(self.hf.decode([i]).encode("utf-8"))
            self._bytes = out
        return self._bytes

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = np.asarray([len(b) for b in self.token_bytes()], dtype=np.int32)
        return self._lengths

    @property
    def _fwpkm_byte_lengths(self) -> np.ndarray:
        # the attribute under which pipelines.ingest.token_byte_lengths caches a tokenizer's byte lengths
        return self.token_byte_lengths()

    def _check_ids(self, ids) -> list:
        return FwPKMTokenizer._check_ids(self, ids)

    def decode_bytes(self, ids) -> bytes:
        table = self.token_bytes()
        return b"".join(table[i] for i in self._check_ids(ids))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def chat_ids(self, messages) -> list:
        """Token ids of a conversation [(role, text), ...] through the tokenizer's chat template, ending where
        the assistant's answer starts."""
        if not getattr(self.hf, "chat_template", None):
            raise ConfigError("this tokenizer has no chat template: use prompt_format='qa'")
        conv = [{"role": r, "content": t} for r, t in messages]
        out = self.hf.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys") and "input_ids" in out:
            out = out["input_ids"]
        if hasattr(out, "tolist"):
            out = out.tolist()
        if out and isinstance(out[0], list):
            out = out[0]
        return [int(i) for i in out]

    def to_dict(self) -> dict:
        return {"hf_class": type(self.hf).__name__, "name": self.name, "vocab_size": self.vocab_size}


def adapt_tokenizer(tokenizer):
    """The project tokenizer as is; a transformers tokenizer wrapped in HFTokenizer."""
    if tokenizer is None or isinstance(tokenizer, (FwPKMTokenizer, HFTokenizer)):
        return tokenizer
    if hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "encode"):
        return HFTokenizer(tokenizer)
    raise InputError(f"tokenizer must be a transformers tokenizer or a FwPKMTokenizer, got {type(tokenizer).__name__}")


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
    memory-only calls has no attention context above the last FwPKM layer: it can only go on memory-only."""

    def _setup(self, model, batch_size: int) -> None:
        cfg = model.config
        self.batch_size, self.n_layers = batch_size, cfg.n_layers
        self.fwpkm_layers = list(cfg.fwpkm_layers)
        self.kv = [None] * cfg.n_layers
        self.memory = [b.init_state(batch_size, mode=self.mode) for b in model.fwpkm_modules]
        self.mode = self.memory[0].mode if self.memory else self.mode
        self.key_valid = None
        self.truncated = False

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        past = self.kv[layer_idx]
        if past is not None:
            key_states = torch.cat([past[0], key_states], dim=-2)
            value_states = torch.cat([past[1], value_states], dim=-2)
        self.kv[layer_idx] = (key_states, value_states)
        return key_states, value_states

    def clone(self) -> "AttachedCache":
        other = FwPKMCache.clone(self)
        other.__class__ = type(self)
        other.truncated = getattr(self, "truncated", False)
        return other


# ---- the adapter ---------------------------------------------------------------------------------------------
class AttachedFwPKMModel(nn.Module):
    """A transformers Llama-family CausalLM with FwPKM attached, with FwPKMForCausalLM's streaming interface."""

    supports_memory_only = True

    def __init__(self, backbone: nn.Module, tokenizer=None, *, window: Optional[int] = DEFAULT_WINDOW,
                 name: Optional[str] = None, use_memory: bool = True):
        super().__init__()
        if not is_attached(backbone):
            raise StateError("the backbone has no FwPKM attached: call fwpkm_rag.attach_fwpkm(backbone, ...) first")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 2):
            raise ConfigError(f"window must be None (full attention) or an int >= 2, got {window!r}")
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
        return calibrate_fwpkm(self.backbone, torch.tensor([ids], device=self.embed_tokens.weight.device))

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

    # ---- the pipeline interface ---------------------------------------------------------------------------------
    @property
    def embed_tokens(self) -> nn.Embedding:
        return decoder_of(self.backbone).embed_tokens

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

    def init_cache(self, batch_size: int = 1, *, mode: Optional[str] = None) -> AttachedCache:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        cache = AttachedCache(batch_size, mode)
        cache._setup(self, batch_size)
        return cache

    def flush_memory(self, cache: AttachedCache) -> list:
        if not isinstance(cache, AttachedCache):
            raise InputError(f"cache must be an AttachedCache (model.init_cache()), got {type(cache).__name__}")
        return cache.flush()

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
    def _fit_cache(self, cache, B: int) -> None:
        if not isinstance(cache, AttachedCache):
            raise InputError(f"cache must be an AttachedCache (model.init_cache()), got {type(cache).__name__}")
        if not cache.initialized:
            cache._setup(self, cache.batch_size or B)
        if cache.n_layers != self.config.n_layers or cache.fwpkm_layers != list(self.config.fwpkm_layers):
            raise StateError("this cache was made for a model with other layers")
        if cache.batch_size != B:
            raise StateError(f"the cache holds {cache.batch_size} stream(s) but the input has {B}")

    def forward(self, input_ids: Optional[Tensor] = None, attention_mask: Optional[Tensor] = None,
                cache: Optional[AttachedCache] = None, labels: Optional[Tensor] = None, use_cache: Optional[bool] = None,
                read_only: bool = False, return_memory: bool = False, logits_to_keep: int = 0,
                memory_only: bool = False, output_hidden_states: Optional[bool] = None, **kwargs) -> FwPKMCausalLMOutput:
        """Like FwPKMForCausalLM.forward; plus memory_only=True: run only up to the last FwPKM layer (no logits)."""
        if kwargs.get("inputs_embeds") is not None:
            raise InputError("AttachedFwPKMModel takes input_ids only (no inputs_embeds)")
        ids = FwPKMForCausalLM._check_input_ids(self, input_ids)
        B, T = ids.shape
        mask = FwPKMForCausalLM._call_mask(self, attention_mask, B, T)
        if memory_only and (labels is not None or output_hidden_states):
            raise InputError("memory_only=True computes no logits or final hidden states (it stops after the last "
                             "FwPKM layer): drop labels / output_hidden_states")
        temporary = cache is None
        cache = self.init_cache(B) if temporary else cache
        self._fit_cache(cache, B)
        if not memory_only and (cache.truncated or (cache.position > 0 and any(kv is None for kv in cache.kv))):
            raise StateError("this cache streamed memory-only calls (ingestion): its layers above the last FwPKM "
                             "layer hold no attention context. Use a fresh cache (e.g. retrieval.query_cache) to "
                             "compute logits or generate")
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
        loss = None
        if labels is not None:
            if labels.shape != (B, T):
                raise InputError(f"labels must have shape {(B, T)}, got {tuple(labels.shape)}")
            if logits_t is None or logits_t.shape[1] != T:
                raise InputError("labels need all logits: leave logits_to_keep at 0")
            loss = F.cross_entropy(logits_t[:, :-1].reshape(-1, logits_t.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1).long(), ignore_index=-100)
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
