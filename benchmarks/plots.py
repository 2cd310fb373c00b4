"""PNG plots of the retrieval benchmark suite (benchmarks/suite.py); skipped without matplotlib.

Re-draw the plots of a finished run: ``python -m fwpkm_rag.benchmarks.plots suite.json [out_dir]``.
"""
from __future__ import annotations

import os

from fwpkm_rag.benchmarks.common import klabel, mean, style

def plot_all(res: dict, out_dir: str) -> list[str]:
    from fwpkm_rag.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return []
    paths = []
    if res.get("needles"):
        paths.append(plot_hit_vs_length(plt, res, os.path.join(out_dir, "retrieval_hit_vs_length.png")))
        paths.append(plot_heatmaps(plt, res, os.path.join(out_dir, "retrieval_heatmaps.png")))
    if res.get("cost"):
        paths.append(plot_cost(plt, res, "nbytes", "index MiB (documents excluded)",
                               os.path.join(out_dir, "cost_bytes_vs_corpus.png")))
        paths.append(plot_cost(plt, res, "p50_ms", "query latency p50 / p95 (ms)",
                               os.path.join(out_dir, "cost_latency_vs_corpus.png")))
    if res.get("capacity"):
        paths.append(plot_capacity(plt, res, os.path.join(out_dir, "capacity.png")))
    return [p for p in paths if p]


def plot_hit_vs_length(plt, res, path):
    rows = res["needles"]
    systems = res["meta"]["systems"]
    lengths = sorted({r["length_req"] for r in rows})
    dists = sorted({r["distractors"] for r in rows})
    fig, axes = plt.subplots(2, len(dists), figsize=(3.6 * len(dists), 6.2), squeeze=False, sharey=True)
    for i, task in enumerate(("exact", "paraphrase")):
        for j, nd in enumerate(dists):
            ax = axes[i][j]
            for s in systems:
                xs, ys = [], []
                for L in lengths:
                    sel = [r["hit5"] for r in rows if r["system"] == s and r["task"] == task and r["distractors"] == nd
                           and r["length_req"] == L]
                    if sel:
                        xs.append(L)
                        ys.append(100 * mean(sel, float("nan")))
                if xs:
                    st = dict(marker="o", ms=3)
                    st.update(style(s))
                    ax.plot(xs, ys, label=s, **st)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [klabel(L) for L in lengths], fontsize=7)
            ax.minorticks_off()
            ax.set_ylim(-5, 105)
            ax.set_title(f"{task} question, {nd} distractors", fontsize=9)
            ax.set_xlabel("haystack tokens")
            if j == 0:
                ax.set_ylabel("hit@5 of the gold chunk (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Needle retrieval: hit@5 vs haystack length (mean over depths)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmaps(plt, res, path):
    """NIAH-style grids per system: depth x length, hit@5 over all distractor counts (top row exact wording,
    bottom row paraphrase)."""
    import numpy as np

    rows = res["needles"]
    systems = res["meta"]["systems"]
    systems = [s for s in systems if any(r["system"] == s for r in rows)]
    lengths = sorted({r["length_req"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    fig, axes = plt.subplots(2, len(systems), figsize=(2.6 * len(systems) + 1, 6.0), squeeze=False,
                             gridspec_kw=dict(hspace=0.55))
    im = None
    for i, task in enumerate(("exact", "paraphrase")):
        for j, s in enumerate(systems):
            ax = axes[i][j]
            grid = np.full((len(depths), len(lengths)), np.nan)
            for a, d in enumerate(depths):
                for b, L in enumerate(lengths):
                    sel = [r["hit5"] for r in rows if r["system"] == s and r["task"] == task and r["depth"] == d
                           and r["length_req"] == L]
                    if sel:
                        grid[a, b] = 100 * mean(sel, float("nan"))
            im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(lengths)), [klabel(L) for L in lengths], fontsize=6)
            ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
            for a in range(len(depths)):
                for b in range(len(lengths)):
                    if not np.isnan(grid[a, b]):
                        ax.text(b, a, f"{grid[a, b]:.0f}", ha="center", va="center", fontsize=6)
            ax.set_title(f"{s}\n{task}", fontsize=8)
            if j == 0:
                ax.set_ylabel("needle depth")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="hit@5 %")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_cost(plt, res, key, ylabel, path):
    rows = res["cost"]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for s in systems:
        sel = sorted((r for r in rows if r["system"] == s), key=lambda r: r["tokens"])
        xs = [r["tokens"] for r in sel]
        if key == "nbytes":
            st = dict(marker="o")
            st.update(style(s))
            ax.plot(xs, [r["nbytes"] / 2**20 for r in sel], label=s, **st)
        else:
            st = dict(marker="o")
            st.update(style(s))
            ax.plot(xs, [r["p50_ms"] for r in sel], label=f"{s} p50", **st)
            ax.plot(xs, [r["p95_ms"] for r in sel], marker="x", alpha=0.5, color=st.get("color"), ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("corpus tokens")
    ax.set_ylabel(ylabel)
    co = res.get("crossover") or {}
    if key == "nbytes" and co.get("tokens"):
        ax.set_title(f"index size; FwPKM < FAISS flat from ≈ {co['tokens'] / 1e6:.2g}M tokens ({co['kind'].split(' ')[0]})",
                     fontsize=9)
    elif key != "nbytes":
        ax.set_title("query latency incl. query encoding (p95 dotted)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_capacity(plt, res, path):
    cap = res["capacity"]
    fig, ax = plt.subplots(figsize=(6.2, 4))
    b = cap["bare"]
    ax.plot([x["load"] for x in b], [100 * x["recall"] for x in b], "k-o", label="bare memory: recall")
    ax.plot([x["load"] for x in b], [100 * x["clean"] for x in b], "k--x", label="bare memory: cosine ≥ 0.9")
    for s in dict.fromkeys(r["system"] for r in cap["retrieval"]):
        sel = [r for r in cap["retrieval"] if r["system"] == s]
        st = dict(marker="o")
        st.update(style(s))
        ax.plot([r["load"] for r in sel], [100 * r["hit1"] for r in sel], label=f"{s}: hit@1", **st)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"facts stored / (N/k = {cap['n_over_k']:,})")
    ax.set_ylabel("%")
    ax.set_ylim(-5, 105)
    ax.set_title("Capacity: facts stored vs recall", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # re-draw the plots of a finished run (see the module docstring)
    import json
    import sys

    with open(sys.argv[1]) as fh:
        result = json.load(fh)
    for written in plot_all(result, sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(sys.argv[1]) or "."):
        print(written)
