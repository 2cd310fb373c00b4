"""`FwPKMConfig`: the frozen, validated hyper-parameters of one FwPKM memory (see docs/fwpkm.md)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Optional

from fwpkm_rag.errors import ConfigError, check_int

SCORES = ("idw", "dot")
INNER_GRADS = ("analytic", "autograd")
MODES = ("isolated", "shared")
WRITE_GATES = ("shared", "separate")


@dataclass(frozen=True)
class FwPKMConfig:
    """Hyper-parameters of one FwPKM layer. Defaults are the paper's (fwpkm-spec.md)."""

    n_subkeys: int = 512  # n: sub-keys per book; the memory has n*n value slots
    k_dim: int = 512  # query width per head (two halves of k_dim/2, one per sub-key book)
    v_dim: int = 512  # value width
    heads: int = 1  # H: query heads, each with its own sub-keys, sharing one value table
    topk: int = 8  # k: slots read per head per token
    chunk_size: int = 512  # C: tokens per fast-weight update
    lookahead: int = 1  # la: token t is taught the value of token t+la
    lr: float = 1.0  # eta: inner SGD step
    addr_weight: float = 1.0  # weight of the marginal-entropy addressing loss on the sub-keys (0 freezes keys)
    score: str = "idw"  # "idw" = -log(eps + squared distance); "dot" = inner product
    eps: float = 1e-3  # IDW epsilon
    inner_grad: str = "analytic"  # inner gradients in closed form, or by torch.autograd.grad (memory/inner_autograd.py)
    mode: str = "isolated"  # default state mode: one memory per sequence, or one shared by the batch
    q_conv: int = 0  # kernel of a depthwise causal conv on the query projection (0 = none, as the paper)
    # "shared": g_t both mixes the read into the output and weights t's write (spec §5-6, the paper).
    # "separate": the write is weighted by its own gate, computed from h_t and the (conv'd) query q_t, so it
    # sees the query's context and can close on filler without starving the output mix (docs/fwpkm.md).
    write_gate: str = "shared"
    max_slot_norm: Optional[float] = None  # refuse updates that push a value row's L2 norm past this
    seed: int = 0  # seed of the initial fast weights (regenerated, never stored in checkpoints)
    check_inputs: bool = True  # validate shapes and finiteness of inputs (one host sync per call)

    def __post_init__(self) -> None:
        # check_int also takes numpy ints; storing them back as int keeps the config JSON-serialisable.
        for name, low in (("n_subkeys", 1), ("k_dim", 1), ("v_dim", 1), ("heads", 1), ("topk", 1), ("chunk_size", 1),
                          ("lookahead", 0), ("q_conv", 0), ("seed", None)):
            object.__setattr__(self, name, check_int(f"FwPKMConfig.{name}", getattr(self, name), low))
        if self.k_dim % 2:
            raise ConfigError(f"FwPKMConfig.k_dim must be even (two sub-key halves), got {self.k_dim}")
        if self.topk > self.n_subkeys:
            raise ConfigError(f"FwPKMConfig.topk ({self.topk}) cannot exceed n_subkeys ({self.n_subkeys})")
        if self.lookahead >= self.chunk_size:
            raise ConfigError(
                f"FwPKMConfig.lookahead ({self.lookahead}) must be smaller than chunk_size ({self.chunk_size}):"
                " otherwise no target pair fits inside a chunk"
            )
        for name in ("lr", "eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value or value == float("inf"):
                raise ConfigError(f"FwPKMConfig.{name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.addr_weight, (int, float)) or not 0 <= self.addr_weight < float("inf"):
            raise ConfigError(f"FwPKMConfig.addr_weight must be a finite number >= 0, got {self.addr_weight!r}")
        if self.score not in SCORES:
            raise ConfigError(f"FwPKMConfig.score must be one of {SCORES}, got {self.score!r}")
        if self.inner_grad not in INNER_GRADS:
            raise ConfigError(f"FwPKMConfig.inner_grad must be one of {INNER_GRADS}, got {self.inner_grad!r}")
        if self.mode not in MODES:
            raise ConfigError(f"FwPKMConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.write_gate not in WRITE_GATES:
            raise ConfigError(f"FwPKMConfig.write_gate must be one of {WRITE_GATES}, got {self.write_gate!r}")
        if self.max_slot_norm is not None and not (
            isinstance(self.max_slot_norm, (int, float)) and 0 < self.max_slot_norm < float("inf")
        ):
            raise ConfigError(f"FwPKMConfig.max_slot_norm must be None or a finite number > 0, got {self.max_slot_norm!r}")

    @property
    def n_slots(self) -> int:
        """Number of value rows, n*n."""
        return self.n_subkeys * self.n_subkeys

    @property
    def half_dim(self) -> int:
        """Width of one sub-key (k_dim / 2)."""
        return self.k_dim // 2

    def replace(self, **changes: Any) -> "FwPKMConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FwPKMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FwPKMConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FwPKMConfig":
        return cls.from_dict(json.loads(text))
