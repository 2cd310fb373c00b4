"""`fwpkm-rag bench ops`: the FwPKM hot ops and the memory layer's read + write of a chunk, timed against the
naive torch path in the same run, after a correctness check of each against that baseline.

Ops (see docs/kernels.md): (a) product-key scoring + top-k, (b) weighted gather, (c) row update with
read-count normalisation, and "layer" = `memory_chunk` (read + write of one chunk: scoring, gather, value
update, key update, divergence guard, assign). Each in inference (no autograd) and forward+backward (an outer
loss through the read and the written rows). Baseline = the straightforward torch code the project started
from (materialise the read rows, einsum, bincount over all slots, torch.unique + index_add per entry).

On CPU the run also measures the machine's random-row gather bandwidth (bytes/s pulling rows of v_dim fp32
at random from a table of the config's size) and reports the layer's value-row traffic per second as a
fraction of it. On a GPU it measures the card's copy bandwidth instead (a 1 GiB device-to-device copy; the
nominal HBM peak of known cards is printed beside it) and reports the gather's and the row update's bytes/s as
a fraction of both. Triton numbers need a GPU: on CPU the triton backend only runs under the interpreter (a
correctness tool, not a speed one), so they are reported as pending.

It ends with the FwPKM sub-block against a same-width dense attention + MLP block (benchmarks/layer_vs_dense.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fwpkm_rag.benchmarks import layer_vs_dense
from fwpkm_rag.benchmarks.common import commit, machine, measure, write_json, write_text
from fwpkm_rag.kernels import product_key_topk, read_weights, row_update, use_backend, weighted_gather
from fwpkm_rag.memory import FwPKMConfig, SparseValues, initial_fast_weights, memory_chunk

SMALL = dict(name="small", d_model=256, config=FwPKMConfig(n_subkeys=128, k_dim=128, v_dim=128, topk=8, chunk_size=128))
PAPER = dict(name="paper", d_model=768, config=FwPKMConfig())


# ------------------------------------------------------------------------------------ naive torch baseline

def naive_lookup(values: SparseValues, flat: torch.Tensor) -> torch.Tensor:
    """Rows for flat keys by plain indexing of both tables (materialises both candidates per entry)."""
    where = values.slot_map.view(-1)[flat].long()
    base_rows = values.base[flat % values.n_slots]
    if values.rows.shape[0] == 0:
        return base_rows
    return torch.where((where >= 0).unsqueeze(-1), values.rows[where.clamp_min(0)], base_rows)


def naive_gather(values: SparseValues, flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, J) keys, weights -> (M, d): gather every row into an (M, J, d) tensor, then einsum."""
    return torch.einsum("mj,mjd->md", w, naive_lookup(values, flat))


def naive_row_update(values: SparseValues, flat: torch.Tensor, w: torch.Tensor, e: torch.Tensor, scale: float):
    """The starting point: dense bincount over all G*N slots, a per-entry delta, torch.unique + index_add."""
    d = e.shape[-1]
    counts = torch.bincount(flat.reshape(-1), minlength=values.groups * values.n_slots)
    per_entry = scale / counts[flat].clamp_min(1).to(e.dtype)  # (M, J)
    entry_delta = -(per_entry * w).unsqueeze(-1) * e.unsqueeze(1)  # (M, J, d)
    touched, inverse = torch.unique(flat.reshape(-1), return_inverse=True)
    delta = e.new_zeros(touched.numel(), d).index_add(0, inverse, entry_delta.reshape(-1, d))
    return touched, naive_lookup(values, touched) + delta


def naive_chunk(q, v, g, keys, values: SparseValues, cfg: FwPKMConfig):
    """Read + value write of one chunk (isolated groups, lookahead pairs, no mask) on the naive path."""
    from fwpkm_rag.memory.addressing import addressing_key_grad, addressing_loss
    from fwpkm_rag.memory.core import lookahead_pairs

    B, L, _ = q.shape
    H, k, d = cfg.heads, cfg.topk, cfg.v_dim
    qg = q.reshape(B, L, H, cfg.k_dim)
    slots, scores, sub = product_key_topk(qg, keys, topk=k, score=cfg.score, eps=cfg.eps, backend="torch")
    w = read_weights(scores).reshape(B * L, H * k)
    flat = values.flat_keys(slots).reshape(B * L, H * k)
    vhat = naive_gather(values, flat, w).reshape(B, L, d)
    target, pair_w = lookahead_pairs(v, g, None, cfg.lookahead)
    e = (pair_w.unsqueeze(-1) * (vhat - target)).reshape(B * L, d)
    touched, rows = naive_row_update(values, flat, w, e, cfg.lr * k * H)
    _, p, usage = addressing_loss(sub, k)
    new_keys = keys - cfg.lr * cfg.addr_weight * addressing_key_grad(qg, keys, sub, p, usage, score=cfg.score)
    # The same divergence check and copy-on-write store as memory_chunk, so the layer rows compare like with like.
    if not bool(torch.isfinite(rows).all() and torch.isfinite(new_keys).all()):
        raise FloatingPointError("naive chunk diverged")
    values.assign(touched, rows)
    return vhat, new_keys, touched, rows


# -------------------------------------------------------------------------------------------- measurement

def gather_bandwidth(n_rows: int, v_dim: int, *, entries: int = 1 << 18, repeats: int = 5) -> float:
    """Bytes/s of gathering rows of v_dim fp32 at random from an (n_rows, v_dim) table (best of two ways:
    index_select into a preallocated buffer, and a fused embedding_bag sum of 8 rows per output)."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(n_rows, v_dim, generator=gen)
    idx = torch.randint(0, n_rows, (entries,), generator=gen)
    out = torch.empty(entries, v_dim)
    bag_idx = idx.view(-1, 8)
    (t_sel, _), (t_bag, _) = measure([lambda: torch.index_select(table, 0, idx, out=out),
                                       lambda: torch.nn.functional.embedding_bag(bag_idx, table, mode="sum")],
                                      repeats, table.device)
    return entries * v_dim * 4 / min(t_sel, t_bag)


# Nominal HBM bandwidth (bytes/s) of cards these sessions may be lent, from the vendors' data sheets; the
# measured copy bandwidth is reported beside it because the nominal peak is not reachable in practice.
NOMINAL_HBM = {"H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}


def nominal_hbm(device: torch.device) -> Optional[float]:
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in NOMINAL_HBM.items() if key in name), None)


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes/s moved (read + write) by a device-to-device copy of n_bytes: the achievable HBM peak."""
    src = torch.empty(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    (t, _), = measure([lambda: dst.copy_(src)], repeats, device)
    return 2 * n_bytes / t


def op_bytes(op: str, info: dict) -> Optional[int]:
    """Minimum fp32 value-row traffic of one call: the gather reads E rows and writes M sums; the row update
    reads E per-entry contributions and U current rows and writes U rows."""
    d, E, M, U = info["d"], info["entries"], info["tokens"], info["touched"]
    if op.startswith("(b)"):
        return 4 * d * (E + M)
    if op.startswith("(c)"):
        return 4 * d * (E + 2 * U)
    return None


@dataclass
class Case:
    op: str
    mode: str  # "inference" | "fwd+bwd"
    tokens: int
    fast: Callable[[], object]
    base: Callable[[], object]
    check: Callable[[], Optional[str]]  # None if the fast op agrees with the baseline, else what differs


def _close(a, b, what, rtol=1e-4, atol=1e-5) -> Optional[str]:
    try:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        return None
    except AssertionError as exc:
        return f"{what}: {str(exc).splitlines()[0]}"


def _cases(spec: dict, batch: int, device: torch.device, backend: str) -> tuple[list, dict]:
    cfg: FwPKMConfig = spec["config"]
    B, L, H, k, d = batch, cfg.chunk_size, cfg.heads, cfg.topk, cfg.v_dim
    keys0, values0 = initial_fast_weights(cfg)
    keys0, values0 = keys0.to(device), values0.to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, L, H * cfg.k_dim, generator=gen).to(device) * 0.5
    v = torch.randn(B, L, d, generator=gen).to(device)
    g = torch.rand(B, L, generator=gen).to(device)
    keys = keys0.unsqueeze(0).expand(B, -1, -1).contiguous()
    # A memory that has already been written once (non-empty pool), as in a running stream.
    values = SparseValues.fresh(values0, B)
    with torch.no_grad(), use_backend(backend):
        values = memory_chunk(q.flip(1), v, g, None, keys, values, cfg, shared=False, write=True).values
    M, J = B * L, H * k
    slots, scores, _ = product_key_topk(q.reshape(B, L, H, cfg.k_dim), keys, topk=k, score=cfg.score, eps=cfg.eps,
                                        backend="torch")
    w = read_weights(scores).reshape(M, J).detach()
    flat, index = values.resolve(slots)
    flat, index = flat.reshape(M, J), index.reshape(M, J)
    e = torch.randn(M, d, generator=gen).to(device) * 0.1
    scale = cfg.lr * k * H
    qk = q.reshape(B, L, H, cfg.k_dim)
    info = dict(entries=M * J, tokens=M, touched=int(torch.unique(flat).numel()), d=d, n_slots=cfg.n_slots)
    pool_g = values.rows.clone().requires_grad_()
    w_g, e_g, q_g = w.clone().requires_grad_(), e.clone().requires_grad_(), qk.clone().requires_grad_()
    values_g = SparseValues(values.base, values.slot_map, pool_g)

    def fb(fn):  # forward + backward of a random-weighted sum of the outputs
        def run():
            outs = fn()
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
            loss = sum(o.float().sum() for o in outs if o.is_floating_point() and o.requires_grad)
            loss.backward()
        return run

    def inf(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    def topk_fast(x):
        return product_key_topk(x, keys, topk=k, score=cfg.score, eps=cfg.eps, backend=backend)[1:]

    def gather_fast(pool, ww):
        return weighted_gather(values.base, pool, index, ww, backend=backend)

    def gather_base(vals, ww):
        return naive_gather(vals, flat, ww)

    def update_fast(pool, ww, ee):
        return row_update(values.base, pool, index, flat, ww, ee, scale=scale, backend=backend).rows

    def update_base(vals, ww, ee):
        return naive_row_update(vals, flat, ww, ee, scale)[1]

    def chunk_fast(qq, vv, gg, grad):
        with use_backend(backend):
            res = memory_chunk(qq, vv, gg, None, keys, values if not grad else values_g, cfg, shared=False, write=True)
        return res.vhat, res.values.rows[-res.values.rows.shape[0]:], res.keys

    def chunk_base(qq, vv, gg, grad):
        vhat, nk, _, rows = naive_chunk(qq, vv, gg, keys, values if not grad else values_g, cfg)
        return vhat, rows, nk

    qv = q.clone().requires_grad_()
    vv = v.clone().requires_grad_()
    gv = g.clone().requires_grad_()

    def check_chunk():
        with torch.no_grad(), use_backend(backend):
            res = memory_chunk(q, v, g, None, keys, values, cfg, shared=False, write=True)
            vhat, nk, touched, rows = naive_chunk(q, v, g, keys, values, cfg)
            problems = [_close(res.vhat, vhat, "vhat"), _close(res.keys, nk, "keys"),
                        _close(res.values.lookup(touched), rows, "written rows")]
        return next((p for p in problems if p), None)

    def check_grads(fast, base, leaves):
        fo, bo = fast(), base()
        fo = fo if isinstance(fo, (tuple, list)) else (fo,)
        bo = bo if isinstance(bo, (tuple, list)) else (bo,)
        for i, (a, b) in enumerate(zip(fo, bo)):
            bad = _close(a.detach(), b.detach(), f"output {i}")
            if bad:
                return bad
        probes = [torch.randn(a.shape, generator=torch.Generator().manual_seed(i)).to(a) for i, a in enumerate(fo)]
        ga = torch.autograd.grad(sum((a * p).sum() for a, p in zip(fo, probes)), leaves, allow_unused=True,
                                 materialize_grads=True)
        gb = torch.autograd.grad(sum((b * p).sum() for b, p in zip(bo, probes)), leaves, allow_unused=True,
                                 materialize_grads=True)
        for i, (a, b) in enumerate(zip(ga, gb)):
            bad = _close(a, b, f"gradient {i}", rtol=1e-3, atol=1e-4)
            if bad:
                return bad
        return None

    T = B * L
    cases = [
        Case("(a) product_key_topk", "inference", T, inf(lambda: topk_fast(qk)), inf(lambda: topk_fast(qk)),
             lambda: None),
        Case("(a) product_key_topk", "fwd+bwd", T, fb(lambda: topk_fast(q_g)), fb(lambda: topk_fast(q_g)),
             lambda: None),
        Case("(b) weighted_gather", "inference", T, inf(lambda: gather_fast(values.rows, w)),
             inf(lambda: gather_base(values, w)), lambda: _close(gather_fast(values.rows, w), gather_base(values, w), "out")),
        Case("(b) weighted_gather", "fwd+bwd", T, fb(lambda: gather_fast(pool_g, w_g)),
             fb(lambda: gather_base(values_g, w_g)),
             lambda: check_grads(lambda: gather_fast(pool_g, w_g), lambda: gather_base(values_g, w_g), [pool_g, w_g])),
        Case("(c) row_update", "inference", T, inf(lambda: update_fast(values.rows, w, e)),
             inf(lambda: update_base(values, w, e)),
             lambda: _close(update_fast(values.rows, w, e), update_base(values, w, e), "rows")),
        Case("(c) row_update", "fwd+bwd", T, fb(lambda: update_fast(pool_g, w_g, e_g)),
             fb(lambda: update_base(values_g, w_g, e_g)),
             lambda: check_grads(lambda: update_fast(pool_g, w_g, e_g), lambda: update_base(values_g, w_g, e_g),
                                 [pool_g, w_g, e_g])),
        Case("layer read+write", "inference", T, inf(lambda: chunk_fast(q, v, g, False)),
             inf(lambda: chunk_base(q, v, g, False)), check_chunk),
        Case("layer read+write", "fwd+bwd", T, fb(lambda: chunk_fast(qv, vv, gv, True)),
             fb(lambda: chunk_base(qv, vv, gv, True)),
             lambda: check_grads(lambda: chunk_fast(qv, vv, gv, True)[:1], lambda: chunk_base(qv, vv, gv, True)[:1],
                                 [qv, vv, gv, pool_g])),
    ]
    return cases, info


def run_ops_bench(out_dir: str = "results", quick: bool = False, threads: int = 1) -> int:
    """`fwpkm-rag bench ops`: per-op and layer timings vs the naive torch path; JSON + markdown in out_dir."""
    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["torch"] + (["triton"] if device.type == "cuda" else [])
    repeats = 3 if quick else 11
    specs = [SMALL, PAPER]
    rows, bandwidth, notes = [], {}, []
    hbm = None
    if device.type == "cuda":
        hbm = dict(device=torch.cuda.get_device_name(device), copy=copy_bandwidth(device), nominal=nominal_hbm(device))
    for spec in specs:
        cfg = spec["config"]
        batch = 1
        if device.type == "cpu":
            bandwidth[spec["name"]] = gather_bandwidth(cfg.n_slots, cfg.v_dim, repeats=3 if quick else 5)
        for backend in backends:
            cases, info = _cases(spec, batch, device, backend)
            for case in cases:
                problem = case.check()
                (t_fast, mem_fast), (t_base, mem_base) = measure([case.fast, case.base], repeats, device)
                row = dict(config=spec["name"], backend=backend, op=case.op, mode=case.mode, tokens=case.tokens,
                           seconds=t_fast, tokens_per_s=case.tokens / t_fast, peak_bytes=mem_fast,
                           baseline_seconds=t_base, baseline_tokens_per_s=case.tokens / t_base,
                           baseline_peak_bytes=mem_base, correct=problem is None, problem=problem,
                           speedup=(t_base / t_fast) if problem is None else None)
                if case.op.startswith("layer") and device.type == "cpu":
                    # Value-row traffic of a chunk's read + write: the gather reads E rows; the update reads
                    # E per-entry error rows, U current rows, and writes U rows (fp32, d wide).
                    moved = 4 * info["d"] * (2 * info["entries"] + 2 * info["touched"])
                    row["bytes_moved"] = moved
                    row["gather_bw_fraction"] = moved / t_fast / bandwidth[spec["name"]]
                    row["baseline_gather_bw_fraction"] = moved / t_base / bandwidth[spec["name"]]
                moved = op_bytes(case.op, info)
                if hbm is not None and moved is not None and case.mode == "inference":
                    row["bytes_moved"] = moved
                    row["hbm_fraction_of_copy"] = moved / t_fast / hbm["copy"]
                    if hbm["nominal"]:
                        row["hbm_fraction_of_nominal"] = moved / t_fast / hbm["nominal"]
                rows.append(row)
                print(_fmt(row), flush=True)
    # The layer against a dense block: on a GPU at the paper's width and 4K/32K tokens (the ask); on a
    # CPU at the small width and 4K (1K quick), because 32K tokens of full attention take minutes there.
    dense_spec = PAPER if device.type == "cuda" else SMALL
    dense_lengths = (4096, 32768) if device.type == "cuda" else ((1024,) if quick else (4096,))
    dense_rows = layer_vs_dense.layer_vs_dense(dense_spec["d_model"], dense_spec["config"], dense_lengths,
                                                     device, repeats=repeats if device.type == "cuda" else 3)
    if device.type == "cpu":
        notes.append("triton backend: needs a GPU (TRITON_INTERPRET=1 on CPU is a correctness tool): GPU numbers pending")
    meta = dict(machine=machine(threads), commit=commit(), device=str(device), threads=threads,
                torch=torch.__version__, quick=quick, repeats=repeats, batch=1, gather_bandwidth_bytes_per_s=bandwidth,
                hbm=hbm, notes=notes)
    write_json(out_dir, "ops_bench.json", dict(meta=meta, rows=rows, layer_vs_dense=dense_rows))
    table = markdown(rows, bandwidth, threads, hbm) + "\n\n" + layer_vs_dense.markdown(
        dense_rows, dense_spec["d_model"], dense_spec["name"])
    write_text(out_dir, "ops_bench.md", table)
    print(table)
    for note in notes:
        print(note)
    return 0 if all(r["correct"] for r in rows) else 1


def _mib(x: Optional[int]) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _fmt(r: dict) -> str:
    speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else f"NO SPEED-UP: check failed ({r['problem']})"
    return f"{r['config']:5s} {r['backend']:6s} {r['op']:22s} {r['mode']:9s} {r['tokens_per_s']:>12,.0f} tok/s  {speed}"


def markdown(rows: list, bandwidth: dict, threads: int, hbm: Optional[dict] = None) -> str:
    lines = [f"torch threads: {threads}; tokens/s of one chunk (batch 1); peak = memory growth during the op (MiB)",
             "", "| config | backend | op | mode | tokens/s | baseline tokens/s | speed-up | peak MiB | baseline peak MiB | check |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "— (check failed)"
        lines.append(f"| {r['config']} | {r['backend']} | {r['op']} | {r['mode']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['baseline_tokens_per_s']:,.0f} | {speed} | {_mib(r['peak_bytes'])} | "
                     f"{_mib(r['baseline_peak_bytes'])} | {'ok' if r['correct'] else r['problem']} |")
    if bandwidth:
        lines += ["", "| config | random-row gather bandwidth | layer bytes moved / chunk | layer (inference) fraction "
                  "of gather bw | baseline fraction | layer (fwd+bwd) fraction |", "|---|---:|---:|---:|---:|---:|"]
        for name, bw in bandwidth.items():
            inf = next(r for r in rows if r["config"] == name and r["op"].startswith("layer") and r["mode"] == "inference")
            fb = next(r for r in rows if r["config"] == name and r["op"].startswith("layer") and r["mode"] == "fwd+bwd")
            lines.append(f"| {name} | {bw / 1e9:.2f} GB/s | {inf['bytes_moved'] / 2**20:.2f} MiB | "
                         f"{100 * inf['gather_bw_fraction']:.1f}% | {100 * inf['baseline_gather_bw_fraction']:.1f}% | "
                         f"{100 * fb['gather_bw_fraction']:.1f}% |")
    if hbm:
        nominal = f"{hbm['nominal'] / 1e12:.2f} TB/s" if hbm["nominal"] else "unknown card"
        lines += ["", f"{hbm['device']}: measured copy bandwidth {hbm['copy'] / 1e12:.2f} TB/s, nominal HBM {nominal}",
                  "", "| config | backend | op | bytes moved | fraction of copy bw | fraction of nominal |",
                  "|---|---|---|---:|---:|---:|"]
        for r in rows:
            if "hbm_fraction_of_copy" in r:
                nom = r.get("hbm_fraction_of_nominal")
                lines.append(f"| {r['config']} | {r['backend']} | {r['op']} | {r['bytes_moved'] / 2**20:.2f} MiB | "
                             f"{100 * r['hbm_fraction_of_copy']:.1f}% | {'—' if nom is None else f'{100 * nom:.1f}%'} |")
    return "\n".join(lines)
