"""Paraphrase retrieval: questions that share no content word with their facts (issue 9), a part of the suite.

`fwpkm-rag bench retrieval --parts paraphrase [--quick]` (or ``run_suite(parts=["paraphrase"])``).

The task (items from :mod:`fwpkm_rag.data.paraphrase`): natural-text haystacks of the benchmark split hold
several facts about subjects named by a description ("The capital's oldest bridge was painted teal."); each
fact is asked in other words ("What colour did the decorators apply to the most ancient river crossing in the
seat of government?"). Three kinds of question: *synonym* (every content word replaced), *definition* (the
fact uses a term, the question its meaning: "the town's cardiologist" / "the heart doctor of the
municipality") and *reordered* (a fronted clause or passive voice, on top of the synonyms). The question shares
**zero** content words (stop words removed, suffixes stripped) with its fact; the BM25 handle is gone. Each
fact comes with near-duplicate facts (its own wording, another subject: "the capital's newest bridge") and trap
sentences that reuse the question's words in another sense ("the ferry office in the seat of government"),
which a lexical retriever ranks first. The other facts of the haystack are distractors too.

Metric: recall@1 / recall@5 of the chunk holding the gold fact, per system and haystack length (default 2K,
8K, 32K tokens; quick: 2K), every system on the same ``paraphrase_chunk_size``-token chunks (128: a fact is
one short sentence, and 2K tokens then make 16 chunks rather than 8, so recall@5 is not near-certain by
chance). The chance level (5 / chunks) is printed beside the numbers. Also: how often each system's top-1 is
a trap or a near-duplicate, and the measured lexical overlaps, so the task's honesty is visible in the output.

Outputs in ``out_dir``: paraphrase.json, paraphrase.md and paraphrase.png (a bar chart). Systems are the
suite's (:class:`fwpkm_rag.benchmarks.systems.SystemSet`); another model joins through ``SystemSet(extra=
{"fwpkm-smollm2": fwpkm_factory(model, chunk_size)})`` / ``run_suite(extra_systems=...)``.
"""
from __future__ import annotations

import os
import time

from fwpkm_rag.benchmarks.common import klabel, mean, percent, rank_of, style, write_json, write_text
from fwpkm_rag.benchmarks.systems import close_all

DEFAULTS_FULL = dict(paraphrase_lengths=(2048, 8192, 32768), paraphrase_items=4, paraphrase_facts=6,
                     paraphrase_near=1, paraphrase_traps=2, paraphrase_chunk_size=128)
DEFAULTS_QUICK = dict(paraphrase_lengths=(2048,), paraphrase_items=3, paraphrase_facts=6,
                      paraphrase_near=1, paraphrase_traps=2, paraphrase_chunk_size=128)
KIND_ORDER = ("synonym", "definition", "reordered")


def _seed(L: int, r: int) -> int:
    return 5_000_011 + 7_919 * (L % 999_983) + r


def run_paraphrase(sset, cfg: dict, k: int, log) -> dict:
    """Every system over the same chunks of every item; one row per (question, system)."""
    from fwpkm_rag.data.paraphrase import chunk_paraphrase_item, content_overlap, make_item

    c = {**DEFAULTS_FULL, **{key: v for key, v in cfg.items() if key.startswith("paraphrase_")}}
    size = c["paraphrase_chunk_size"]
    rows, items = [], []
    grid = [(L, r) for L in c["paraphrase_lengths"] for r in range(c["paraphrase_items"])]
    for n, (L, r) in enumerate(grid, 1):
        start = time.perf_counter()
        # about 2.5 chunks per fact leave room for its near-duplicates and traps (short haystacks get fewer facts)
        n_facts = max(1, min(c["paraphrase_facts"], int(L / size / 2.5)))
        item = make_item(L, seed=_seed(L, r), n_facts=n_facts, near=c["paraphrase_near"],
                         traps=c["paraphrase_traps"], chunk_size=size)
        ch = chunk_paraphrase_item(item)
        items.append(dict(length_req=L, length=item.length, seed=item.seed, n_chunks=len(ch.chunks),
                          facts=[dict(kind=f.kind, concept=f.concept, relation=f.relation, fact=f.fact,
                                      question=f.question, answer=f.answer, near=f.near, traps=f.traps,
                                      gold_chunk=g, gold_overlap=content_overlap(f.question, f.fact),
                                      trap_overlaps=[content_overlap(f.question, t) for t in f.traps],
                                      near_overlaps=[content_overlap(f.question, x) for x in f.near])
                                 for f, g in zip(item.facts, ch.gold_chunks)]))
        built = sset.build(ch.chunks)
        for name, b in built.items():
            for fi, (f, gold) in enumerate(zip(item.facts, ch.gold_chunks)):
                t0 = time.perf_counter()
                hits = [i for i, _ in b.system.search(f.question, k)]
                ms = 1000 * (time.perf_counter() - t0)
                rank = rank_of(hits, {gold})
                top = hits[0] if hits else None
                rows.append(dict(length_req=L, length=item.length, seed=item.seed, fact=fi, kind=f.kind,
                                 concept=f.concept, relation=f.relation, n_chunks=len(ch.chunks), system=name,
                                 rank=rank, hit1=rank == 1, hit5=rank is not None and rank <= 5,
                                 top1_trap=top is not None and top != gold and top in ch.trap_chunks[fi],
                                 top1_near=top is not None and top != gold and top in ch.near_chunks[fi],
                                 query_ms=ms, ingest_s=b.ingest_s))
        close_all(built)
        last = rows[-len(built) * len(item.facts):]
        log(f"paraphrase {n}/{len(grid)}: {L} tokens, {len(item.facts)} facts, {len(ch.chunks)} chunks, "
            f"{time.perf_counter() - start:.1f} s; recall@5: " + ", ".join(
                f"{s}={sum(r_['hit5'] for r_ in last if r_['system'] == s)}/{len(item.facts)}" for s in built))
    return dict(rows=rows, items=items, config={key: list(v) if isinstance(v, tuple) else v for key, v in c.items()},
                k=k)


# ----------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------
def chance(rows, L, k: int = 5) -> float:
    sel = {(r["seed"], r["n_chunks"]) for r in rows if r["length_req"] == L}
    return sum(min(k, n) / n for _, n in sel) / len(sel) if sel else float("nan")


def paraphrase_table(par: dict, systems) -> str:
    rows = par["rows"]
    if not rows:
        return ""
    systems = [s for s in systems if any(r["system"] == s for r in rows)]
    lengths = sorted({r["length_req"] for r in rows})
    kinds = [kd for kd in KIND_ORDER if any(r["kind"] == kd for r in rows)]
    n_q = {L: len({(r["seed"], r["fact"]) for r in rows if r["length_req"] == L}) for L in lengths}
    out = ["\n#### Paraphrase retrieval (question shares no content word with the fact): recall@5 (recall@1) "
           f"of the gold chunk, {par['config']['paraphrase_chunk_size']}-token chunks, k = {par['k']}\n",
           "| system | " + " | ".join(f"{klabel(L)} ({n_q[L]} q)" for L in lengths) + " | all | "
           + " | ".join(kinds) + " | top-1 is a trap | top-1 is a near-duplicate |",
           "|---|" + "---:|" * (len(lengths) + 1 + len(kinds) + 2)]
    for s in systems:
        sel = [r for r in rows if r["system"] == s]
        cells = []
        for L in lengths:
            x = [r for r in sel if r["length_req"] == L]
            cells.append(f"{percent(r['hit5'] for r in x)} ({percent(r['hit1'] for r in x)})")
        cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})")
        for kd in kinds:
            x = [r for r in sel if r["kind"] == kd]
            cells.append(f"{percent(r['hit5'] for r in x)} ({percent(r['hit1'] for r in x)})")
        cells += [percent(r["top1_trap"] for r in sel), percent(r["top1_near"] for r in sel)]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("| chance (k / chunks) | " + " | ".join(
        f"{100 * chance(rows, L):.0f}% ({100 * chance(rows, L, 1):.0f}%)" for L in lengths) + " | | "
        + " | ".join("" for _ in kinds) + " | | |")
    facts = [f for it in par.get("items", []) for f in it["facts"]]
    if facts:
        gold = [f["gold_overlap"] for f in facts]
        traps = [o for f in facts for o in f["trap_overlaps"]]
        out.append(f"\nLexical overlap with the question (content-word stems shared): gold fact max {max(gold)}, "
                   f"mean {sum(gold) / len(gold):.2f}; trap sentences mean {sum(traps) / max(len(traps), 1):.2f} "
                   f"(min {min(traps) if traps else '–'}). Questions by kind: "
                   + ", ".join(f"{kd} {sum(f['kind'] == kd for f in facts)}" for kd in kinds) + ".")
    out.append("\n" + _verdict(rows, systems))
    return "\n".join(out)


def _verdict(rows, systems) -> str:
    """Best system in words, and issue 9's paraphrase target for every FwPKM system present."""
    score = {s: sum(r["hit5"] for r in rows if r["system"] == s) / max(1, sum(r["system"] == s for r in rows))
             for s in systems}
    best = max(score.values())
    lines = [f"Best recall@5 overall: {', '.join(s for s, v in score.items() if v == best)} ({100 * best:.0f}%)."]
    ref = score.get("minilm-faiss-flat")
    for s in systems:
        if s.startswith("fwpkm") and ref is not None:
            ok = score[s] >= ref
            lines.append(f"Issue 9 target, {s} recall@5 ≥ MiniLM + FAISS flat's: {100 * score[s]:.0f}% vs "
                         f"{100 * ref:.0f}% — {'met' if ok else '**not met**'}.")
    return " ".join(lines)


def write_outputs(par: dict, meta: dict, out_dir: str, plots: bool = True) -> list[str]:
    """paraphrase.json (rows, items, run metadata), paraphrase.md and paraphrase.png in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "paraphrase.json"), os.path.join(out_dir, "paraphrase.md")]
    write_json(out_dir, "paraphrase.json", dict(meta=meta, **par), indent=1)
    head = [f"### Paraphrase retrieval ({'quick' if meta.get('quick') else 'full'} run)\n",
            f"- machine: {meta.get('machine')}", f"- commit: {meta.get('commit')}",
            f"- command: `{meta.get('command')}`", f"- FwPKM model: {meta.get('model')}",
            f"- chunks: {par['config']['paraphrase_chunk_size']} tokens; k = {par['k']}; "
            f"{par['config']['paraphrase_facts']} facts per haystack, each with {par['config']['paraphrase_near']} "
            f"near-duplicate(s) and {par['config']['paraphrase_traps']} trap(s)"]
    write_text(out_dir, "paraphrase.md", "\n".join(head) + "\n" + paraphrase_table(par, meta.get("systems") or _systems(par)))
    if plots:
        p = plot_paraphrase(par, meta.get("systems") or _systems(par), os.path.join(out_dir, "paraphrase.png"))
        if p:
            paths.append(p)
    return paths


def _systems(par):
    return list(dict.fromkeys(r["system"] for r in par["rows"]))


def plot_paraphrase(par: dict, systems, path: str):
    """Grouped bars: recall@5 per system (solid) with recall@1 (hatched, inside), one group per length."""
    from fwpkm_rag.plotting import pyplot

    plt = pyplot()
    rows = par["rows"]
    if plt is None or not rows:
        return None
    systems = [s for s in systems if any(r["system"] == s for r in rows)]
    lengths = sorted({r["length_req"] for r in rows})
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(4.2 + 1.5 * len(lengths) * max(1, len(systems) / 3), 4.0))
    for j, s in enumerate(systems):
        xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(lengths))]
        r5 = [100 * mean((r["hit5"] for r in rows if r["system"] == s and r["length_req"] == L), float("nan")) for L in lengths]
        r1 = [100 * mean((r["hit1"] for r in rows if r["system"] == s and r["length_req"] == L), float("nan")) for L in lengths]
        color = style(s).get("color")
        ax.bar(xs, r5, width * 0.92, label=f"{s} recall@5", color=color, alpha=0.55)
        ax.bar(xs, r1, width * 0.92, color=color, hatch="//", edgecolor="black", lw=0.4, alpha=0.9)
    for i, L in enumerate(lengths):
        ax.hlines(100 * chance(rows, L), i - 0.42, i + 0.42, colors="black", linestyles="--", lw=1)
    ax.plot([], [], "k--", lw=1, label="chance recall@5")
    ax.bar([0], [0], color="white", hatch="//", edgecolor="black", label="recall@1 (hatched)")
    ax.set_xticks(range(len(lengths)), [klabel(L) for L in lengths])
    ax.set_xlabel("haystack tokens")
    ax.set_ylabel("gold chunk retrieved (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(-0.6, len(lengths) - 0.4)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Paraphrase retrieval (no content word shared with the fact)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
