"""`FwPKMModelConfig`: the transformers configuration of the FwPKM language model (docs/model.md).

It is a `PreTrainedConfig` (a dataclass in transformers 5), so it saves to / loads from `config.json` with the
checkpoint. The FwPKM memory hyper-parameters are stored as a plain dict (`FwPKMConfig.to_dict()`) and the
tokenizer as `FwPKMTokenizer.to_dict()`, so a checkpoint always rebuilds its own memory layers and tokenizer.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from transformers import PretrainedConfig

from fwpkm_rag.errors import ConfigError, check_int
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.tokenizer import BASE_NAME, DEFAULT_K_RANKS, SPECIAL_TOKENS

STATIC_PKM_DEFAULTS = {"n_subkeys": 128, "k_dim": 128, "topk": 8, "heads": 1}

# FwPKM of the tiny preset (also the class default, so that `FwPKMModelConfig()` is small): measured on the
# 2-core CPU of this workplace, see docs/model.md.
TINY_FWPKM = dict(n_subkeys=128, k_dim=128, v_dim=128, heads=1, topk=8, chunk_size=128, lookahead=1, q_conv=4)


V2_K_RANKS = 32768  # tokenizer of the tiny-v2 preset (and of `paper`)
PRESETS = ("tiny", "tiny-v2", "tiny-v3", "paper")


def tokenizer_dict(k_ranks: int = DEFAULT_K_RANKS) -> dict:
    """The record `get_tokenizer(k_ranks).to_dict()` gives, without loading tiktoken."""
    return {"k_ranks": k_ranks, "special_tokens": list(SPECIAL_TOKENS), "base": BASE_NAME}


def _tokenizer_ids(tok: dict) -> tuple[int, dict]:
    """(vocab size, {special token: id}) of a tokenizer record (specials sit at ids K, K+1, ...)."""
    k = int(tok["k_ranks"])
    specials = list(tok.get("special_tokens", SPECIAL_TOKENS))
    return k + len(specials), {t: k + i for i, t in enumerate(specials)}


class FwPKMModelConfig(PretrainedConfig):
    """Configuration of `FwPKMForCausalLM`.

    Layers: h = h + FwPKM(h) (layers in `fwpkm_layers` only); h = h + Attn(norm(h)) (sliding window of
    `window` tokens, the token itself included); h = h + MLP(norm(h)) (a static PKM in `static_pkm_layer`).
    """

    model_type = "fwpkm"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}

    vocab_size: Optional[int] = None  # None: the tokenizer's vocabulary size
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0  # SwiGLU hidden width = mlp_ratio * d_model, rounded up to a multiple of 16
    window: int = 128  # sliding-window attention: each token sees itself and the window-1 tokens before it
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    fwpkm_layers: Optional[list] = None  # indices of the layers with a FwPKM sub-block (None: [0])
    fwpkm: Optional[dict] = None  # FwPKMConfig.to_dict() (None: the tiny preset's memory)
    static_pkm_layer: Optional[int] = None  # layer whose MLP is replaced by a static (slow-weight) PKM
    static_pkm: Optional[dict] = None  # n_subkeys, k_dim, topk, heads of the static PKM
    tokenizer: Optional[dict] = None  # FwPKMTokenizer.to_dict(); None for models fed raw ids (tests)
    tie_word_embeddings: bool = True
    final_norm_gain: float = 1.0  # initial gain of the final RMSNorm (0.1 with N(0,1) tied embeddings)
    initializer_range: float = 0.02  # std of the N(0, std) init of every linear layer
    embedding_init_std: Optional[float] = None  # std of the token embedding init (None: initializer_range)
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    use_cache: bool = True

    def __post_init__(self, **kwargs):
        if self.fwpkm_layers is None:
            self.fwpkm_layers = [0]
        if self.fwpkm is None:
            self.fwpkm = FwPKMConfig(**TINY_FWPKM).to_dict()
        if isinstance(self.fwpkm, FwPKMConfig):
            self.fwpkm = self.fwpkm.to_dict()
        if self.static_pkm_layer is not None:
            self.static_pkm = {**STATIC_PKM_DEFAULTS, **(self.static_pkm or {})}
        if self.tokenizer is not None:
            if hasattr(self.tokenizer, "to_dict"):
                self.tokenizer = self.tokenizer.to_dict()
            vocab, ids = _tokenizer_ids(self.tokenizer)
            if self.vocab_size is None:
                self.vocab_size = vocab
            if self.vocab_size < vocab:
                raise ConfigError(f"vocab_size {self.vocab_size} is smaller than the tokenizer's {vocab} tokens")
            eot = ids.get("<|endoftext|>")
            self.bos_token_id = eot if self.bos_token_id is None else self.bos_token_id
            self.eos_token_id = eot if self.eos_token_id is None else self.eos_token_id
            self.pad_token_id = ids.get("<|pad|>") if self.pad_token_id is None else self.pad_token_id
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        if self.vocab_size is None:
            raise ConfigError("FwPKMModelConfig needs vocab_size or a tokenizer record (get_tokenizer().to_dict())")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "window"):
            check_int(f"FwPKMModelConfig.{name}", getattr(self, name), 1)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"d_model ({self.d_model}) must be n_heads ({self.n_heads}) x an even head width (RoPE rotates pairs)"
            )
        for name in ("mlp_ratio", "rope_theta", "norm_eps", "final_norm_gain", "initializer_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"FwPKMModelConfig.{name} must be a finite number > 0, got {value!r}")
        layers = self.fwpkm_layers
        if not isinstance(layers, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ConfigError(f"fwpkm_layers must be a list of layer indices, got {layers!r}")
        if len(set(layers)) != len(layers) or any(not 0 <= i < self.n_layers for i in layers):
            raise ConfigError(f"fwpkm_layers {list(layers)} must be distinct indices in [0, {self.n_layers})")
        self.fwpkm_layers = sorted(layers)
        try:
            FwPKMConfig.from_dict(dict(self.fwpkm))
        except TypeError as exc:
            raise ConfigError(f"fwpkm is not a valid FwPKMConfig dict: {exc}") from exc
        if self.static_pkm_layer is not None:
            if not isinstance(self.static_pkm_layer, int) or not 0 <= self.static_pkm_layer < self.n_layers:
                raise ConfigError(f"static_pkm_layer must be None or a layer index in [0, {self.n_layers})")
            unknown = sorted(set(self.static_pkm) - set(STATIC_PKM_DEFAULTS))
            if unknown:
                raise ConfigError(f"unknown static_pkm fields {unknown}; known: {sorted(STATIC_PKM_DEFAULTS)}")
            s = self.static_pkm
            if s["k_dim"] % 2 or s["topk"] > s["n_subkeys"] or min(s.values()) <= 0:
                raise ConfigError(f"static_pkm needs an even k_dim, topk <= n_subkeys and positive sizes, got {s}")

    # ---- derived sizes ------------------------------------------------------------------------------------------
    @property
    def fwpkm_config(self) -> FwPKMConfig:
        """The FwPKMConfig of every FwPKM sub-block."""
        return FwPKMConfig.from_dict(dict(self.fwpkm))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return int(math.ceil(self.mlp_ratio * self.d_model / 16) * 16)

    # ---- presets ------------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "FwPKMModelConfig":
        """`tiny` (CPU-trainable, about 6.5M parameters), `tiny-v2` (tiny with 32,768 ranks and n = 256), `tiny-v3`
        (tiny-v2 with a separate write gate) or `paper` (the spec's sizes); fields can be overridden.

        A `fwpkm` override may be a dict of FwPKMConfig fields to change (merged into the preset's).
        """
        if name in ("tiny", "tiny-v2", "tiny-v3"):
            base = dict(
                d_model=256, n_layers=4, n_heads=4, mlp_ratio=4.0, window=128, fwpkm_layers=[0, 2],
                fwpkm=dict(TINY_FWPKM), tokenizer=tokenizer_dict(DEFAULT_K_RANKS), tie_word_embeddings=True,
                # training-notes.md: tied N(0,1) embeddings with final-norm gain 0.1 give logits near +-10.
                embedding_init_std=1.0, final_norm_gain=0.1,
            )
            if name in ("tiny-v2", "tiny-v3"):
                # issue 15: 32,768 ranks make benchmark values ~4.7 tokens instead of 5.6 (docs/model-card.md);
                # n = 256 sub-keys (65,536 slots) so long haystacks overwrite fewer facts. Every other
                # shape equals `tiny`: v2 is warm-started from the shipped v1 (fwpkm_rag.training.warm_start).
                base.update(tokenizer=tokenizer_dict(V2_K_RANKS), fwpkm={**TINY_FWPKM, "n_subkeys": 256})
            if name == "tiny-v3":
                # issue 15, after v2: layer 0's gate sees one token and also mixes the output, so it could not
                # close on filler (0.54 vs 0.62 at the end of v2); a separate write gate over the token and its
                # conv'd query can (memory/layer.py `write_weight`). Warm-started from v2.
                base["fwpkm"] = {**base["fwpkm"], "write_gate": "separate"}
        elif name == "paper":
            base = dict(
                d_model=768, n_layers=12, n_heads=12, mlp_ratio=4.0, window=512, fwpkm_layers=[2, 10],
                fwpkm=dict(n_subkeys=512, k_dim=512, v_dim=512, heads=1, topk=8, chunk_size=512, lookahead=1),
                tokenizer=tokenizer_dict(V2_K_RANKS), tie_word_embeddings=True,
            )
        else:
            raise ConfigError(f"unknown preset {name!r}; known: {list(PRESETS)}")
        if isinstance(overrides.get("fwpkm"), dict):
            overrides["fwpkm"] = {**base["fwpkm"], **overrides["fwpkm"]}
        base.update(overrides)
        return cls(**base)
