"""Differentiable FwPKM gather / scatter ops built from a backend's raw primitives.

Three autograd Functions, each of whose backward is made of the other two (so every backward is itself
differentiable, to any order — `inner_grad="autograd"` takes a gradient through the gradient of the read):

  Gather      out[m]    = sum_j w[m,j] T[i[m,j]]      backward: dw = GatherDot(g),  dT = ScatterRows(w, g)
  GatherDot   out[m,j]  = <x[m], T[i[m,j]]>           backward: dx = Gather(gg),    dT = ScatterRows(gg, x)
  SegmentSum  out[u]    = sum_{e in u} w[e] x[e//J]   backward: dw = GatherDot(x, gS[inv]), dx = Gather(gS, w)

ScatterRows (the row scatter-add of the gather's gradient to the table) sorts the entries by row once and
runs SegmentSum over the segments: deterministic, no float atomics. T is the virtual table [base; pool]
(see gather/torch_impl.py). `be` is the backend module (torch_ops or triton_ops) whose primitives do the work.
These Functions live outside the per-op folders because each one's backward is made of the other ops.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fwpkm_rag.kernels.segments import segments


def _empty_pool(like: Tensor) -> Tensor:
    return like.new_zeros(0, like.shape[-1])


def scatter_rows(be, w: Tensor, x: Tensor, index: Tensor, base: Tensor, pool: Tensor, need_base: bool = True,
                 need_pool: bool = True) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """dT for T = [base; pool]: dT[r] = sum over entries (m, j) with index r of w[m, j] * x[m] (differentiable).

    Returns (dbase (N, d) or None, dpool (P, d) or None); rows nobody read get 0.
    """
    seg = segments(index)
    S = SegmentSum.apply(be, w, x, seg, base.shape[-1])  # (U, d)
    N = base.shape[0]
    is_base = seg.keys < N
    dbase = dpool = None
    if need_base:
        dbase = S.new_zeros(base.shape).index_copy(0, seg.keys[is_base], S[is_base])
    if need_pool:
        dpool = S.new_zeros(pool.shape).index_copy(0, seg.keys[~is_base] - N, S[~is_base])
    return dbase, dpool


class Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, be, base, pool, index, w):
        ctx.be = be
        ctx.save_for_backward(base, pool, index, w)
        return be.gather_fwd(base, pool, index, w)

    @staticmethod
    def backward(ctx, g):
        base, pool, index, w = ctx.saved_tensors
        need_base, need_pool, _, need_w = ctx.needs_input_grad[1:]
        dw = GatherDot.apply(ctx.be, g, base, pool, index) if need_w else None
        dbase = dpool = None
        if need_base or need_pool:
            dbase, dpool = scatter_rows(ctx.be, w, g, index, base, pool, need_base, need_pool)
        return None, dbase, dpool, None, dw


class GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, be, x, base, pool, index):
        ctx.be = be
        ctx.save_for_backward(x, base, pool, index)
        return be.gather_dot_fwd(x, base, pool, index)

    @staticmethod
    def backward(ctx, gg):
        x, base, pool, index = ctx.saved_tensors
        need_x, need_base, need_pool = ctx.needs_input_grad[1:4]
        dx = Gather.apply(ctx.be, base, pool, index, gg) if need_x else None
        dbase = dpool = None
        if need_base or need_pool:
            dbase, dpool = scatter_rows(ctx.be, gg, x, index, base, pool, need_base, need_pool)
        return None, dx, dbase, dpool, None


class SegmentSum(torch.autograd.Function):
    """S[u] = sum over entries e of segment u (sorted order) of w[e] * x[e // J]; (M, J), (M, d) -> (U, d)."""

    @staticmethod
    def forward(ctx, be, w, x, seg, d):
        ctx.be = be
        ctx.save_for_backward(w, x, seg.inverse)
        empty = x.new_zeros(0, d)
        return be.segment_fwd(w, x, seg, None, x.new_zeros(1, d), empty, 1.0, False)

    @staticmethod
    def backward(ctx, gS):
        w, x, inverse = ctx.saved_tensors
        need_w, need_x = ctx.needs_input_grad[1:3]
        # The segments' rows form a small local table gS; entry (m, j) reads its row inverse[m, j].
        empty = _empty_pool(gS)
        dw = GatherDot.apply(ctx.be, x, gS, empty, inverse) if need_w else None
        dx = Gather.apply(ctx.be, gS, empty, inverse, w) if need_x else None
        return None, dw, dx, None, None
