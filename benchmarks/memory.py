"""Benchmarks of the bare FwPKM memory: capacity (facts stored vs recall) and per-token CPU cost.

No model is involved: queries, values and gates are synthetic tensors fed to the functional memory, so these
numbers describe the memory itself (spec §11: about N/k associations fit without overlap).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
from fwpkm_rag.memory import FwPKM, FwPKMConfig, MemoryState, initial_fast_weights, stream_memory, zscore
from fwpkm_rag.memory.core import flush_memory


@dataclass
class CapacityResult:
    facts: int
    passes: int
    recall: float  # fraction of facts whose read-back value is nearest (cosine) to its own stored value
    mean_cosine: float  # mean cosine between read-back and stored value
    clean: float  # fraction of facts read back with cosine >= 0.9 to their own value
    n_slots: int
    topk: int

    @property
    def load(self) -> float:
        """Facts stored as a multiple of N/k, the no-overlap capacity."""
        return self.facts * self.topk / self.n_slots


def capacity_recall(config: FwPKMConfig, facts: int, *, passes: int = 1, seed: int = 0) -> CapacityResult:
    """Write `facts` random key -> value pairs, then read every key back.

    Each fact is two tokens with the same query: the first (gate 1) is taught the second's value by the
    lookahead-1 write, the second (gate 0) writes nothing. The stream is read `passes` times, then every key is
    read once more with the memory frozen; recall counts reads whose nearest stored value is their own.
    """
    if config.lookahead != 1:
        raise ValueError("capacity_recall builds lookahead-1 pairs")
    gen = torch.Generator().manual_seed(seed)
    width = config.heads * config.k_dim
    fact_q = torch.randn(facts, width, generator=gen)
    fact_v = zscore(torch.randn(facts, config.v_dim, generator=gen))
    q = fact_q.repeat_interleave(2, 0)[None]  # (1, 2F, width)
    v = fact_v.repeat_interleave(2, 0)[None]
    g = torch.tensor([1.0, 0.0]).repeat(facts)[None]
    keys, values = initial_fast_weights(config)
    state = MemoryState.fresh(config, keys, values, 1, "isolated")
    with torch.no_grad():
        for _ in range(passes):
            state = stream_memory(q, v, g, None, state, inplace=True).state
            state = flush_memory(state, inplace=True).state
        read = stream_memory(fact_q[None], fact_v[None], torch.zeros(1, facts), None, state, read_only=True).vhat[0]
    read_n = torch.nn.functional.normalize(read, dim=-1)
    stored_n = torch.nn.functional.normalize(fact_v, dim=-1)
    sims = read_n @ stored_n.T  # (F, F)
    recall = (sims.argmax(-1) == torch.arange(facts)).float().mean().item()
    own = sims.diagonal()
    return CapacityResult(facts, passes, recall, own.mean().item(), (own >= 0.9).float().mean().item(),
                          config.n_slots, config.topk)


@dataclass
class TimingResult:
    label: str
    tokens: int
    seconds: float
    mode: str

    @property
    def us_per_token(self) -> float:
        return 1e6 * self.seconds / self.tokens


def layer_timing(d_model: int, config: FwPKMConfig, *, tokens: int, batch: int = 1, train: bool = False,
                 repeats: int = 3, label: str = "") -> TimingResult:
    """Median wall time per token of the FwPKM layer (projections + read + write of every chunk).

    train=False: inference (no autograd), memory written in place. train=True: forward and backward of a
    summed output through every unrolled update (the through-update training of spec §6).
    """
    torch.manual_seed(0)
    layer = FwPKM(d_model, config)
    h = torch.randn(batch, tokens, d_model, requires_grad=train)
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocators and caches
        state = layer.init_state(batch)
        start = time.perf_counter()
        if train:
            out = layer(h, state).output
            out.float().pow(2).mean().backward()
        else:
            with torch.no_grad():
                layer(h, state, inplace=True)
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return TimingResult(label, batch * tokens, times[len(times) // 2], "train fwd+bwd" if train else "inference")


SMALL = dict(d_model=256, config=FwPKMConfig(n_subkeys=128, k_dim=128, v_dim=128, topk=8, chunk_size=128))
PAPER = dict(d_model=768, config=FwPKMConfig())  # the spec's defaults: n 512, k_dim = v_dim = 512, C 512


def run_memory_bench(out_dir: str = "results", quick: bool = False, threads: int = 2) -> int:
    """`fwpkm-rag bench memory`: capacity curve and per-token cost; JSON, markdown and a PNG in out_dir."""
    import os

    from tqdm import tqdm

    torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    cfg = SMALL["config"]
    capacity_n = cfg.n_slots // cfg.topk
    loads = [0.25, 1, 2, 4] if quick else [0.125, 0.25, 0.5, 1, 2, 4, 8]
    capacity = []
    for passes in (1, 2):
        for load in tqdm(loads, desc=f"capacity, {passes} pass(es)"):
            r = capacity_recall(cfg, int(load * capacity_n), passes=passes)
            capacity.append(dict(facts=r.facts, load=r.load, passes=passes, recall=r.recall,
                                 mean_cosine=r.mean_cosine, clean=r.clean))
    timing = []
    cases = [("small", SMALL, 1024 if quick else 4096)]
    if not quick:
        cases.append(("paper", PAPER, 2048))
    for name, spec, tokens in tqdm(cases, desc="layer timing"):
        for train in (False, True):
            t = layer_timing(spec["d_model"], spec["config"], tokens=tokens, train=train, label=name,
                             repeats=1 if quick else 3)
            timing.append(dict(config=name, mode=t.mode, tokens=t.tokens, seconds=t.seconds, us_per_token=t.us_per_token))
    meta = dict(machine=machine(threads), commit=commit(), threads=threads, torch=torch.__version__, quick=quick)
    write_json(out_dir, "memory_bench.json", dict(meta=meta, capacity=capacity, timing=timing))
    lines = [f"capacity (n={cfg.n_subkeys}: N={cfg.n_slots:,} slots, k={cfg.topk}, N/k={capacity_n:,})",
             "| facts | x N/k | passes | recall (nearest value is own) | cosine >= 0.9 | mean cosine |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {c['facts']:,} | {c['load']:.3g} | {c['passes']} | {100 * c['recall']:.1f}% | {100 * c['clean']:.1f}% "
              f"| {c['mean_cosine']:.3f} |"
              for c in capacity]
    lines += ["", f"per-token CPU time of the FwPKM layer (projections + read + write), {threads} thread(s)",
              "| config | mode | tokens | µs / token | tokens / s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {t['config']} | {t['mode']} | {t['tokens']:,} | {t['us_per_token']:.1f} | {1e6 / t['us_per_token']:,.0f} |"
              for t in timing]
    table = "\n".join(lines)
    write_text(out_dir, "memory_bench.md", table)
    print(table)
    _plot_capacity(capacity, capacity_n, os.path.join(out_dir, "memory_capacity.png"))
    return 0


def _plot_capacity(capacity: list, capacity_n: int, path: str) -> None:
    from fwpkm_rag.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for passes in sorted({c["passes"] for c in capacity}):
        rows = [c for c in capacity if c["passes"] == passes]
        ax.plot([c["load"] for c in rows], [100 * c["recall"] for c in rows], "o-", label=f"recall, {passes} pass(es)")
        ax.plot([c["load"] for c in rows], [100 * c["clean"] for c in rows], "x--", label=f"cosine >= 0.9, {passes} pass(es)")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"facts stored / (N/k = {capacity_n:,})")
    ax.set_ylabel("%")
    ax.set_title("FwPKM memory capacity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
