"""The FwPKM memory as pure functions on tensors: read a chunk, write it, stream many chunks.

`memory_chunk` is one read (+ optional write) of one chunk against one memory snapshot; `fwpkm_forward` is the
paper's training forward as a pure function (the contract independent implementations are checked against);
`stream_memory` runs a `MemoryState` over tokens arriving in calls of any length (spec §8).

Shapes: B batch, L tokens in the chunk, T tokens in a call, H heads, k top-k, n sub-keys, N = n*n slots,
G memory groups (1 when the batch shares one memory, B when each sequence has its own).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor

from fwpkm_rag.errors import InputError, check_int
from fwpkm_rag.kernels import product_key_topk, read_weights, row_update, weighted_gather
from fwpkm_rag.memory.addressing import addressing_key_grad, addressing_loss
from fwpkm_rag.memory.chunk import ChunkRead, ChunkStep
from fwpkm_rag.memory.config import FwPKMConfig
from fwpkm_rag.memory.inner_autograd import autograd_step
from fwpkm_rag.memory.values import SparseValues

if TYPE_CHECKING:
    from fwpkm_rag.memory.state import MemoryState


@dataclass
class ChunkResult:
    vhat: Tensor  # (B, L, v_dim) the reads, before the gate mix
    keys: Tensor  # (G, 2Hn, k_dim/2) keys after the chunk (unchanged if not written)
    values: SparseValues  # values after the chunk
    slots: Tensor  # (B, L, H, k) slots read
    weights: Tensor  # (B, L, H, k) read weights
    write_gate: Optional[Tensor] = None  # (B, L) g_t where t had a target and was written, else 0
    value_loss: Optional[Tensor] = None  # (G,) inner value loss before the write
    addr_loss: Optional[Tensor] = None  # (G,) addressing loss before the write
    pairs: Optional[Tensor] = None  # () number of (t, t+la) pairs written
    refused: Optional[Tensor] = None  # (G,) bool, write refused by the divergence guard


def lookahead_pairs(v: Tensor, g: Tensor, mask: Optional[Tensor], lookahead: int) -> tuple[Tensor, Tensor]:
    """Targets v_{t+la} and write weights g_t * [t and t+la inside the chunk and not padded]: (B,L,d), (B,L)."""
    B, L, d = v.shape
    valid = torch.zeros(B, L, dtype=torch.bool, device=v.device)
    if lookahead == 0:
        target = v
        valid[:] = True if mask is None else mask
    else:
        target = torch.cat([v[:, lookahead:], v.new_zeros(B, min(lookahead, L), d)], dim=1)
        if L > lookahead:
            valid[:, : L - lookahead] = True if mask is None else mask[:, : L - lookahead] & mask[:, lookahead:]
    return target, g * valid


def _to_groups(x: Tensor, shared: bool) -> Tensor:
    """(B, L, ...) -> (1, B*L, ...) when the batch shares one memory, else unchanged."""
    return x.reshape(1, -1, *x.shape[2:]) if shared else x


def read_chunk(q: Tensor, keys: Tensor, values: SparseValues, cfg: FwPKMConfig, shared: bool) -> ChunkRead:
    """Score, select and read: q (B, L, H*k_dim) against keys (G, 2Hn, k_dim/2) and the value table."""
    B, L, _ = q.shape
    H, k = cfg.heads, cfg.topk
    queries = _to_groups(q.reshape(B, L, H, cfg.k_dim), shared)  # (G, R, H, k_dim)
    slots, scores, sub = product_key_topk(queries, keys, topk=k, score=cfg.score, eps=cfg.eps)
    weights = read_weights(scores)  # (G, R, H, k)
    row_keys, index = values.resolve(slots)  # (G, R, H, k) each
    G, R = slots.shape[:2]
    vhat = weighted_gather(values.base, values.rows, index.reshape(G * R, H * k), weights.reshape(G * R, H * k))
    return ChunkRead(queries, slots, sub, weights, row_keys, index, vhat.reshape(G, R, cfg.v_dim))


def analytic_step(read: ChunkRead, err: Tensor, usage_probs: tuple[Tensor, Tensor], keys: Tensor,
                  values: SparseValues, cfg: FwPKMConfig) -> ChunkStep:
    """One SGD step on the value loss and the addressing loss with both gradients written in closed form.

    err (G, R, v_dim) is d(value loss)/d(v̂_t) = g_t * (v̂_t - target_t) per token (0 without a target);
    usage_probs = (p (G,R,H,2,n), usage (G,2,n)) from `addressing_loss`. Only first-order ops, so an outer
    loss back-propagates through the step with plain autograd.
    """
    G, R, H, k = read.slots.shape
    M, J = G * R, H * k
    # d(value loss)/d(row read by entry (t, h, j)) = w_thj * err_t: the row update sums it per touched row
    # (sorted segments, deterministic) and divides by the row's read count, then steps by lr * k * H.
    upd = row_update(values.base, values.rows, read.index.reshape(M, J), read.row_keys.reshape(M, J),
                     read.weights.reshape(M, J), err.reshape(M, -1), scale=cfg.lr * k * H)
    new_keys = keys
    if cfg.addr_weight > 0:
        p, usage = usage_probs
        grad_keys = addressing_key_grad(read.queries, keys, read.sub, p, usage, score=cfg.score)  # (G, 2Hn, k_dim/2)
        new_keys = keys - (cfg.lr * cfg.addr_weight) * grad_keys
    return ChunkStep(upd.keys, upd.rows, new_keys)


def divergence_guard(step: ChunkStep, keys: Tensor, values: SparseValues, cfg: FwPKMConfig) -> tuple[ChunkStep, Tensor]:
    """Drop the step of every group whose new rows or keys are non-finite (or a row is past max_slot_norm).

    Returns the step restricted to the accepted groups (refused groups keep `keys`) and ok (G,) bool.
    isfinite of the row sum: NaN/Inf propagate through it, and it is one pass instead of isfinite's four
    (measured 40x faster on CPU at 1000 x 128). A finite row whose sum overflows (entries near 1e36) is
    refused too, which is the point of the guard.
    """
    row_ok = torch.isfinite(step.rows.detach().sum(-1))  # (U,)
    if cfg.max_slot_norm is not None:
        row_ok &= step.rows.detach().norm(dim=-1) <= cfg.max_slot_norm
    group = torch.div(step.touched, values.n_slots, rounding_mode="floor")  # (U,) memory group of each row
    ok = torch.ones(values.groups, dtype=torch.int32, device=keys.device)
    ok = ok.scatter_reduce(0, group, row_ok.int(), reduce="amin")  # (G,) every row of the group is fine
    if cfg.addr_weight > 0:
        ok &= torch.isfinite(step.keys.detach().flatten(1).sum(1)).int()
    ok = ok.bool()
    if bool(ok.all()):
        return step, ok
    keep = ok[group]
    new_keys = torch.where(ok[:, None, None], step.keys, keys) if cfg.addr_weight > 0 else step.keys
    return ChunkStep(step.touched[keep], step.rows[keep], new_keys), ok


def memory_chunk(
    q: Tensor,
    v: Tensor,
    g: Tensor,
    mask: Optional[Tensor],
    keys: Tensor,
    values: SparseValues,
    cfg: FwPKMConfig,
    *,
    shared: bool,
    write: bool,
    inplace: bool = False,
) -> ChunkResult:
    """Read one chunk from (keys, values) and, if `write`, apply the chunk's fast-weight update.

    q (B,L,H*k_dim), v (B,L,v_dim), g (B,L), mask (B,L) bool or None; keys (G,2Hn,k_dim/2).
    Every token reads the memory as it was before the chunk; the update is one SGD step (spec §6) with the
    inner gradients in closed form. `cfg.inner_grad == "autograd"` takes them with torch.autograd.grad
    instead (memory/inner_autograd.py); memory/naive.py is the independent oracle tests hold this to.
    """
    B, L, _ = q.shape
    H, k = cfg.heads, cfg.topk
    read = read_chunk(q, keys, values, cfg, shared)
    result = ChunkResult(read.vhat.reshape(B, L, -1), keys, values, read.slots.reshape(B, L, H, k),
                         read.weights.reshape(B, L, H, k))
    if not write:
        return result
    target, pair_w = lookahead_pairs(v, g, mask, cfg.lookahead)
    target, pair_w = _to_groups(target, shared), _to_groups(pair_w, shared)  # (G, R, v_dim), (G, R)
    value_loss = 0.5 * (pair_w * (read.vhat - target).pow(2).sum(-1)).sum(-1)  # (G,)
    addr_loss, p, usage = addressing_loss(read.sub, k)  # (G,), (G, R, H, 2, n), (G, 2, n)
    if cfg.inner_grad == "autograd":
        step = autograd_step(read, target, pair_w, keys, values, cfg)
    else:
        err = pair_w.unsqueeze(-1) * (read.vhat - target)  # (G, R, v_dim)
        step = analytic_step(read, err, (p, usage), keys, values, cfg)
    step, ok = divergence_guard(step, keys, values, cfg)
    result.keys = step.keys
    result.values = values.assign(step.touched, step.rows, inplace=inplace) if step.touched.numel() else values
    result.write_gate = pair_w.reshape(B, L).detach()
    result.value_loss, result.addr_loss = value_loss.detach(), addr_loss.detach()
    result.pairs = (pair_w.detach() > 0).sum()
    result.refused = ~ok
    return result


def _check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf")


def _check_forward_inputs(q: Tensor, v: Tensor, g: Tensor, keys: Tensor, values: Tensor, heads: int,
                          mask: Optional[Tensor]) -> tuple[int, int]:
    """Validate `fwpkm_forward`'s tensors against each other; returns (n sub-keys, k_dim)."""
    if q.dim() != 3 or v.dim() != 3 or g.dim() != 2:
        raise InputError(f"expected q (B,T,H*k_dim), v (B,T,v_dim), g (B,T); got {tuple(q.shape)}, {tuple(v.shape)}, {tuple(g.shape)}")
    B, T, qd = q.shape
    heads = check_int("heads", heads, 1, error=InputError)
    if qd % heads or (qd // heads) % 2:
        raise InputError(f"q width {qd} must be heads ({heads}) x an even k_dim")
    k_dim = qd // heads
    if keys.dim() != 2 or keys.shape[1] != k_dim // 2 or keys.shape[0] % (2 * heads):
        raise InputError(f"keys must be (2*heads*n, k_dim/2) = (2*{heads}*n, {k_dim // 2}), got {tuple(keys.shape)}")
    n = keys.shape[0] // (2 * heads)
    if values.dim() != 2 or values.shape[0] != n * n:
        raise InputError(f"values must be (n*n, v_dim) with n = {n}, got {tuple(values.shape)}")
    if v.shape[:2] != (B, T) or g.shape != (B, T) or v.shape[2] != values.shape[1]:
        raise InputError(f"v must be (B,T,v_dim) = ({B},{T},{values.shape[1]}) and g (B,T); got {tuple(v.shape)}, {tuple(g.shape)}")
    if mask is not None and (mask.shape != (B, T) or mask.dtype != torch.bool):
        raise InputError(f"mask must be a bool tensor of shape ({B},{T}), got {mask.dtype} {tuple(mask.shape)}")
    for name, x in (("q", q), ("v", v), ("g", g), ("keys", keys), ("values", values)):
        if not x.is_floating_point():
            raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.device != q.device:
            raise InputError(f"{name} is on {x.device} but q is on {q.device}")
        _check_finite(name, x)
    return n, k_dim


def fwpkm_forward(
    q: Tensor,
    v: Tensor,
    g: Tensor,
    keys: Tensor,
    values: Tensor,
    *,
    chunk_size: int,
    topk: int,
    heads: int = 1,
    lookahead: int = 1,
    lr: float = 1.0,
    addr_weight: float = 1.0,
    score: str = "idw",
    eps: float = 1e-3,
    mask: Optional[Tensor] = None,
    inner_grad: str = "analytic",
):
    """The paper's training forward of one FwPKM memory shared by the batch, as a pure function.

    q (B,T,H*k_dim), v (B,T,v_dim), g (B,T), keys (2*H*n, k_dim/2), values (n*n, v_dim), mask (B,T) bool.
    Chunks of `chunk_size` positions read the memory left by the previous chunk, then write it; every chunk
    is written, the trailing partial one included. Returns (out, new_keys, new_values, aux) with out (B,T,v_dim)
    the reads v̂ before the gate mix and aux a dict of diagnostics and the read slots/weights.
    Inputs are never modified; outputs carry the autograd graph through every update.
    """
    n, k_dim = _check_forward_inputs(q, v, g, keys, values, heads, mask)
    B, T, _ = q.shape
    cfg = FwPKMConfig(
        n_subkeys=n, k_dim=k_dim, v_dim=values.shape[1], heads=heads, topk=topk, chunk_size=chunk_size,
        lookahead=lookahead, lr=lr, addr_weight=addr_weight, score=score, eps=eps, inner_grad=inner_grad,
        mode="shared", check_inputs=False,
    )
    table = SparseValues.fresh(values, 1)
    K = keys.unsqueeze(0)
    outs, slots, weights, gates, vloss, aloss, pairs = [], [], [], [], [], [], []
    for start in range(0, T, chunk_size):
        part = slice(start, min(start + chunk_size, T))
        res = memory_chunk(
            q[:, part], v[:, part], g[:, part], None if mask is None else mask[:, part], K, table, cfg,
            shared=True, write=True, inplace=start > 0 and not torch.is_grad_enabled(),
        )
        K, table = res.keys, res.values
        outs.append(res.vhat), slots.append(res.slots), weights.append(res.weights), gates.append(res.write_gate)
        vloss.append(res.value_loss), aloss.append(res.addr_loss), pairs.append(res.pairs)
    out = torch.cat(outs, 1) if outs else v.new_zeros(B, 0, values.shape[1])
    aux = {
        "slots": torch.cat(slots, 1) if slots else None,
        "weights": torch.cat(weights, 1) if weights else None,
        "write_gate": torch.cat(gates, 1) if gates else None,
        "value_loss": torch.stack(vloss).sum() / torch.stack(pairs).sum().clamp_min(1) if vloss else None,
        "addr_loss": torch.stack(aloss).mean() if aloss else None,
    }
    return out, K[0], table.dense(0), aux


@dataclass
class StreamResult:
    vhat: Tensor  # (B, T, v_dim) reads of the call's tokens
    state: "MemoryState"
    slots: Tensor  # (B, T, H, k) slots each token read
    weights: Tensor  # (B, T, H, k) read weights
    writes: list  # one dict per chunk written in this call: chunk, slots, strength (B, L, H, k)
    value_loss: Optional[Tensor]  # () mean inner value loss per written pair, over the call's writes
    addr_loss: Optional[Tensor]  # () mean addressing loss over the call's writes
    refused: int  # writes refused by the divergence guard in this call (groups x chunks)


def _write_record(chunk: int, start: int, res: ChunkResult) -> dict:
    """What one write did: the chunk index, the stream positions [start, start + L) of its tokens, the slots
    each token read (B, L, H, k) and how strongly it wrote them (gate x read weight; 0 for tokens without a
    target), and which memories refused the write."""
    strength = res.weights * res.write_gate[..., None, None]
    return {"chunk": chunk, "start": start, "slots": res.slots, "strength": strength, "refused": res.refused}


def stream_memory(
    q: Tensor,
    v: Tensor,
    g: Tensor,
    mask: Optional[Tensor],
    state: "MemoryState",
    *,
    read_only: bool = False,
    inplace: bool = False,
) -> StreamResult:
    """Run a call's tokens through a memory state under the fixed chunk schedule of spec §8.

    Token t of the stream reads the memory left by all complete chunks before ⌊t/C⌋. When a chunk completes
    (queued tokens + this call's) it is written; an incomplete tail is queued in the returned state. So one
    call, calls of any split, and token-by-token calls give the same reads and the same memory.
    With `read_only` nothing is written or queued and the memory part of the state is returned unchanged.
    With `inplace` (only without autograd) the state's tensors are updated in place instead of copied.
    """
    cfg = state.config
    C = cfg.chunk_size
    B, T, _ = q.shape
    shared = state.mode == "shared"
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=q.device)
    keys, values = state.keys, state.values
    grad = torch.is_grad_enabled()
    private = inplace and not grad  # may this call write into the state's own tensors?
    outs, slots, weights, writes, vloss, aloss, pairs, refused = [], [], [], [], [], [], [], []
    pq, pv, pg, pm = state.pending_q, state.pending_v, state.pending_g, state.pending_mask
    position, updates = state.position, state.updates
    refused_total = state.refused
    cursor = 0
    while cursor < T:
        need = C - (position % C) if not read_only else C
        take = min(need, T - cursor)
        part = slice(cursor, cursor + take)
        if read_only or take < need:
            res = memory_chunk(q[:, part], v[:, part], g[:, part], mask[:, part], keys, values, cfg, shared=shared, write=False)
            if not read_only:
                pq, pv = torch.cat([pq, q[:, part]], 1), torch.cat([pv, v[:, part]], 1)
                pg, pm = torch.cat([pg, g[:, part]], 1), torch.cat([pm, mask[:, part]], 1)
        else:
            if not grad and not private:
                values = SparseValues(values.base, values.slot_map.clone(), values.rows.clone())
                private = True
            res = memory_chunk(
                torch.cat([pq, q[:, part]], 1), torch.cat([pv, v[:, part]], 1), torch.cat([pg, g[:, part]], 1),
                torch.cat([pm, mask[:, part]], 1), keys, values, cfg, shared=shared, write=True,
                inplace=private and not grad,
            )
            keys, values = res.keys, res.values
            writes.append(_write_record(position // C, position - pq.shape[1], res))
            vloss.append(res.value_loss.sum()), aloss.append(res.addr_loss.mean()), pairs.append(res.pairs)
            refused.append(res.refused)
            refused_total = refused_total + res.refused.long()
            updates += 1
            res.vhat, res.slots, res.weights = res.vhat[:, -take:], res.slots[:, -take:], res.weights[:, -take:]
            pq, pv, pg, pm = pq[:, :0], pv[:, :0], pg[:, :0], pm[:, :0]
        outs.append(res.vhat), slots.append(res.slots), weights.append(res.weights)
        position += take if not read_only else 0
        cursor += take
    H, k = cfg.heads, cfg.topk
    new_state = state if read_only else replace(
        state, keys=keys, values=values, position=position, pending_q=pq, pending_v=pv, pending_g=pg,
        pending_mask=pm, updates=updates, refused=refused_total,
    )
    return StreamResult(
        vhat=torch.cat(outs, 1) if outs else v.new_zeros(B, 0, cfg.v_dim),
        state=new_state,
        slots=torch.cat(slots, 1) if slots else torch.zeros(B, 0, H, k, dtype=torch.long, device=q.device),
        weights=torch.cat(weights, 1) if weights else q.new_zeros(B, 0, H, k),
        writes=writes,
        value_loss=torch.stack(vloss).sum() / torch.stack(pairs).sum().clamp_min(1) if vloss else None,
        addr_loss=torch.stack(aloss).mean() if aloss else None,
        refused=int(torch.stack(refused).sum()) if refused else 0,
    )


def flush_memory(state: "MemoryState", *, inplace: bool = False) -> StreamResult:
    """Write the queued tokens of an incomplete chunk now (end of a document, before a question).

    The stream position is unchanged, so later chunk boundaries stay at multiples of C from the stream start.
    """
    cfg = state.config
    B, P = state.batch_size, state.pending
    H, k = cfg.heads, cfg.topk
    empty = StreamResult(
        state.pending_v.new_zeros(B, 0, cfg.v_dim), state,
        torch.zeros(B, 0, H, k, dtype=torch.long, device=state.device), state.pending_v.new_zeros(B, 0, H, k),
        [], None, None, 0,
    )
    if P == 0:
        return empty
    values = state.values
    grad = torch.is_grad_enabled()
    if not grad and not inplace:
        values = SparseValues(values.base, values.slot_map.clone(), values.rows.clone())
    res = memory_chunk(
        state.pending_q, state.pending_v, state.pending_g, state.pending_mask, state.keys, values, cfg,
        shared=state.mode == "shared", write=True, inplace=not grad,
    )
    new_state = replace(
        state, keys=res.keys, values=res.values, pending_q=state.pending_q[:, :0], pending_v=state.pending_v[:, :0],
        pending_g=state.pending_g[:, :0], pending_mask=state.pending_mask[:, :0], updates=state.updates + 1,
        refused=state.refused + res.refused.long(),
    )
    empty.state = new_state
    empty.writes = [_write_record(state.position // cfg.chunk_size, state.position - P, res)]
    empty.value_loss = res.value_loss.sum() / res.pairs.clamp_min(1)
    empty.addr_loss = res.addr_loss.mean()
    empty.refused = int(res.refused.sum())
    return empty
