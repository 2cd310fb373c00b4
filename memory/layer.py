"""`FwPKM`: the fast-weight product-key memory sub-block (spec §2-§6) as a torch module.

Slow weights (projections, norms, gate, optional query convolution) are ordinary parameters learned by the
outer optimiser. The fast weights live in a `MemoryState` that the caller passes in and gets back; the module
only holds their seeded initial values as non-persistent buffers (regenerated from `config.seed`, so
checkpoints stay small).

    out, state = layer(h, state)             # h (B, T, d_model) -> out (B, T, d_model)
    h = h + out                              # the caller adds the residual
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fwpkm_rag.errors import InputError, check_int
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.memory.core import StreamResult, flush_memory, stream_memory
from fwpkm_rag.memory.state import MemoryState


def zscore(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise over the last dim: (x - mean) / (unbiased std + eps)."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=True) + eps)


def initial_fast_weights(config: FwPKMConfig) -> tuple[Tensor, Tensor]:
    """Seeded initial keys U(±1/sqrt(k_dim)) (2Hn, k_dim/2) and values N(0, 1/v_dim) (n*n, v_dim), on CPU."""
    gen = torch.Generator().manual_seed(config.seed)
    bound = 1.0 / math.sqrt(config.k_dim)
    keys = (torch.rand(2 * config.heads * config.n_subkeys, config.half_dim, generator=gen) * 2 - 1) * bound
    values = torch.randn(config.n_slots, config.v_dim, generator=gen) / math.sqrt(config.v_dim)
    return keys, values


@dataclass
class FwPKMOutput:
    output: Tensor  # (B, T, d_model) the sub-block's output, to be added to the residual stream
    state: MemoryState  # the memory after this call
    slots: Optional[Tensor] = None  # (B, T, H, k) slots read per token (return_reads=True)
    weights: Optional[Tensor] = None  # (B, T, H, k) read weights
    gate: Optional[Tensor] = None  # (B, T) g_t, the output mix
    write_gate: Optional[Tensor] = None  # (B, T) the weight of t's write (g_t itself unless write_gate="separate")
    writes: list = field(default_factory=list)  # per chunk written: chunk, slots, strength (B, L, H, k)
    diagnostics: Optional[dict] = None  # (diagnostics=True) losses, usage, gate statistics

    def __iter__(self):  # allows `out, state = layer(h, state)`
        return iter((self.output, self.state))


class FwPKM(nn.Module):
    """Fast-weight Product Key Memory sub-block (see docs/fwpkm.md)."""

    def __init__(self, d_model: int, config: Optional[FwPKMConfig] = None):
        super().__init__()
        config = config or FwPKMConfig()
        if not isinstance(config, FwPKMConfig):
            raise TypeError(f"config must be a FwPKMConfig, got {type(config).__name__}")
        d_model = check_int("d_model", d_model, 1, error=InputError)
        self.config, self.d_model = config, d_model
        width = config.heads * config.k_dim
        self.q_norm, self.v_norm, self.g_norm = (nn.RMSNorm(d_model, eps=1e-6) for _ in range(3))
        self.q_proj = nn.Linear(d_model, width)
        self.v_proj = nn.Linear(d_model, config.v_dim)
        self.g_proj = nn.Linear(d_model, 1)
        self.o_norm = nn.RMSNorm(config.v_dim, eps=1e-6)
        self.o_proj = nn.Linear(config.v_dim, d_model)
        # Depthwise causal conv over the query projection (taps t-K+1 .. t); starts as the identity.
        self.q_conv = nn.Parameter(torch.zeros(width, config.q_conv)) if config.q_conv else None
        if config.write_gate == "separate":
            # g_w = sigmoid(W_w RMSNorm_w(h_t) + U_w q_t + b_w); U_w starts at 0 (g_w then reads h_t only)
            self.w_norm = nn.RMSNorm(d_model, eps=1e-6)
            self.w_proj = nn.Linear(d_model, 1)
            self.w_ctx = nn.Linear(width, 1, bias=False)
        keys, values = initial_fast_weights(config)
        self.register_buffer("keys_init", keys, persistent=False)
        self.register_buffer("values_init", values, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.q_proj, self.v_proj, self.g_proj, self.o_proj):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        if self.q_conv is not None:
            with torch.no_grad():
                self.q_conv.zero_()
                self.q_conv[:, -1] = 1.0
        if self.config.write_gate == "separate":
            nn.init.normal_(self.w_proj.weight, std=0.02)
            nn.init.zeros_(self.w_proj.bias)
            nn.init.zeros_(self.w_ctx.weight)

    def _apply(self, fn, recurse=True):
        # The initial fast weights stay fp32 whatever dtype the slow weights are cast to (spec §4).
        super()._apply(fn, recurse)
        for name in ("keys_init", "values_init"):
            buf = getattr(self, name)
            if buf.dtype != torch.float32:
                setattr(self, name, buf.float())
        return self

    # ---- state ----------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1, *, mode: Optional[str] = None) -> MemoryState:
        """A fresh memory: `isolated` (one per sequence, default) or `shared` (one for the batch)."""
        return MemoryState.fresh(self.config, self.keys_init, self.values_init, batch_size, mode)

    def load_state(self, path) -> MemoryState:
        """Read a state saved with `state.save(path)` by this layer (same config and initial weights)."""
        return MemoryState.load(path, base_keys=self.keys_init, base_values=self.values_init, config=self.config)

    # ---- projections ----------------------------------------------------------------------------------------
    def project(self, hidden: Tensor, conv_cache: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q (B,T,H*k_dim), v (B,T,v_dim), g (B,T) in fp32, and the new conv cache."""
        q = self.q_proj(self.q_norm(hidden)).float()
        if self.q_conv is not None:
            kernel = self.q_conv.shape[1]
            padded = torch.cat([conv_cache.to(q.dtype), q], dim=1)  # (B, K-1+T, width)
            q_new = F.conv1d(padded.transpose(1, 2), self.q_conv.float().unsqueeze(1), groups=q.shape[-1])
            conv_cache = padded[:, padded.shape[1] - (kernel - 1) :]
            q = q_new.transpose(1, 2)
        v = zscore(self.v_proj(self.v_norm(hidden)).float())
        g = torch.sigmoid(self.g_proj(self.g_norm(hidden)).float()).squeeze(-1)
        return q, v, g, conv_cache

    def write_weight(self, hidden: Tensor, q: Tensor, g: Tensor) -> Tensor:
        """(B, T) the gate that weights each token's write: g itself ("shared"), or the separate write gate
        over the token and its query q (B, T, H*k_dim), whose causal conv gives it the last q_conv tokens."""
        if self.config.write_gate == "shared":
            return g
        logit = self.w_proj(self.w_norm(hidden)).float() + self.w_ctx(q.to(self.w_ctx.weight.dtype)).float()
        return torch.sigmoid(logit).squeeze(-1)

    def _check(self, hidden: Tensor, mask: Optional[Tensor], state: MemoryState) -> None:
        if not isinstance(hidden, Tensor):
            raise InputError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
        if hidden.dim() != 3 or hidden.shape[-1] != self.d_model:
            raise InputError(f"hidden must have shape (batch, tokens, {self.d_model}), got {tuple(hidden.shape)}")
        if not hidden.is_floating_point():
            raise InputError(f"hidden must be a floating-point tensor, got {hidden.dtype}")
        if hidden.device != self.keys_init.device:
            raise InputError(f"hidden is on {hidden.device} but the layer is on {self.keys_init.device}")
        if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != hidden.shape[:2]):
            raise InputError(f"mask must be a bool tensor of shape {tuple(hidden.shape[:2])}")
        if self.config.check_inputs and not bool(torch.isfinite(hidden).all()):
            raise InputError("hidden contains NaN or Inf; refusing to write it into the memory")
        if not isinstance(state, MemoryState):
            raise InputError(f"state must be a MemoryState, got {type(state).__name__}")
        state.check_compatible(self.config, self.keys_init, hidden.shape[0], hidden.device)

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        hidden: Tensor,
        state: Optional[MemoryState] = None,
        *,
        mask: Optional[Tensor] = None,
        read_only: bool = False,
        inplace: bool = False,
        return_reads: bool = False,
        diagnostics: bool = False,
    ) -> FwPKMOutput:
        """Read (and write) the memory for hidden (B, T, d_model); returns the output and the next state.

        mask (B, T) bool marks real tokens (False = padding: left out of the value loss).
        read_only: the memory is frozen (no write, nothing queued); only the conv cache advances.
        inplace: update the state's tensors in place (no autograd); the passed state is then consumed.
        """
        if state is None:
            state = self.init_state(hidden.shape[0])
        self._check(hidden, mask, state)
        q, v, g, conv_cache = self.project(hidden, state.conv_cache)
        g_write = self.write_weight(hidden, q, g)
        res = stream_memory(q, v, g_write, mask, state, read_only=read_only, inplace=inplace)
        res.state = _replace_conv(res.state, conv_cache)
        mixed = g.unsqueeze(-1) * res.vhat + (1 - g.unsqueeze(-1)) * v
        out = self.o_proj(self.o_norm(mixed.to(hidden.dtype)))
        return FwPKMOutput(
            output=out,
            state=res.state,
            slots=res.slots if return_reads else None,
            weights=res.weights if return_reads else None,
            gate=g if return_reads else None,
            write_gate=g_write if return_reads else None,
            writes=res.writes,
            diagnostics=self._diagnostics(res, g, mask) if diagnostics else None,
        )

    def flush(self, state: MemoryState, *, inplace: bool = False) -> FwPKMOutput:
        """Write the queued incomplete chunk now (end of a document, before a question)."""
        res = flush_memory(state, inplace=inplace)
        empty = state.pending_v.new_zeros(state.batch_size, 0, self.d_model)
        return FwPKMOutput(output=empty, state=res.state, writes=res.writes)

    def _diagnostics(self, res: StreamResult, g: Tensor, mask: Optional[Tensor]) -> dict:
        n_slots = self.config.n_slots
        counts = torch.bincount(res.slots.reshape(-1), minlength=n_slots).float()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        real = g if mask is None else g[mask]
        return {
            "memory_loss": res.value_loss,  # mean inner value loss per written pair (None if nothing written)
            "addressing_loss": res.addr_loss,  # -H(p̄1) - H(p̄2), mean over chunks written
            "usage_entropy": entropy,  # entropy (nats) of this call's slot reads
            "usage_entropy_fraction": entropy / math.log(n_slots) if n_slots > 1 else entropy,
            "written_fraction": res.state.written_fraction(),  # (G,) slots ever rewritten
            "gate_mean": real.mean() if real.numel() else g.new_tensor(float("nan")),
            "refused_updates": res.refused,
            "chunks_written": len(res.writes),
        }


def _replace_conv(state: MemoryState, conv_cache: Tensor) -> MemoryState:
    from dataclasses import replace

    return replace(state, conv_cache=conv_cache)
