"""How the chunk semantic layer joins the store's fusion (issue 17: one store for exact keys and other words).

    python -m fwpkm_rag.benchmarks.semantic_fusion dev      # dev sources, the settings grid, the choice
    python -m fwpkm_rag.benchmarks.semantic_fusion bench    # paraphrase, entries and 128K needles, every needle

Why: the fusion divides each source by its maximum for the question, so the semantic layer's best chunk always
adds the whole `semantic_weight`. Among look-alike facts ("The meeting with Ines Ibarra is scheduled ..." and
sixteen more meetings) MiniLM barely tells the keys apart, and where the needle's own sentence embeds poorly (cut by
a chunk boundary, or run into filler) the look-alike it ranks first outvotes the chunk that holds the question's
exact key by more than the lexical sources can make up. Three settings shape the semantic source's part:
`semantic_weight`; `semantic_power` p, which counts the normalised score x as 1 - (1 - x)^p (`word_layer.flat_top`:
chunks near the semantic best count almost fully and the exact words decide among them); and
`semantic_exact_first`, which gives the best chunk of the exact-words fusion (lexical store + word layer) the
largest fused score there is, so it ranks first and the semantic source orders the rest.

Dev (never a test item; `dev`): per question, the three sources of the store's fusion (`store_sources`: the
lexical top 50 per segment, the word layer, the chunk semantic layer of `FwPKMStore(semantic_layer=True)`) for (a)
the 372 dev queries of the training pairs among the dev passages (recall@5), (b) the addressing task's dev entries
asked three ways (recall@1), and (c) train-split needle items at 32K and 128K with 16 and 64 distractors, every
needle of each item asked (hit@1 and hit@5). The grid (exact first or not, power, weight) is evaluated by the
store's own rule (`fused_top`, which tests hold to the store); the choice maximises the dev pairs' recall@5 among
the settings whose needle hit@1 and hit@5 and entry recall@1 are at least the fusion's without the layer; ties:
the smaller weight, then power, then without exact first.

Bench (`bench`): the paraphrase task (its default items and seeds), the addressing task's entries (test split:
verbatim, shuffled, reordered) and the segments bench's 128K needle items (16 and 64 distractors, every needle
asked), for `FwPKMStore(semantic_layer=True)` with the chosen setting and with `semantic_exact_first` turned the
other way, the default store (no semantic layer), BM25, MiniLM + FAISS and LangChain's `EnsembleRetriever` over
both.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from fwpkm_rag.errors import ConfigError

POWERS = (1, 2, 3, 4, 6, 8, 12, 16)
WEIGHTS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
PLOTTED_POWERS = (1, 2, 4, 8)
DEV_NEEDLES = ((32768, 16, 910_001), (131072, 16, 910_002), (131072, 64, 910_003), (32768, 64, 910_004),
               (131072, 16, 910_005))  # (tokens, distractors, item seed) of train-split items
BENCH_NEEDLES = (16, 64)  # distractors of the segments bench's 128K items
NEEDLE_TOKENS = 131072
CHUNK_SIZE = 256  # the needles' chunks (as the segments bench)
ENTRY_CHUNK_SIZE = 128  # the entries' chunks (as the addressing bench): an entry is one chunk


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---- the rule ---------------------------------------------------------------------------------------------------
def fused_top(sources: tuple, weight: float, power: int, k: int, word_weight: float | None = None,
              exact_first: bool = False) -> list[int]:
    """The top k chunk ids of one memory's (lexical, word, semantic) score dicts by the store's rule
    (`word_layer.fuse_sources` over one segment: each source over its maximum, the semantic one shaped by
    `flat_top` with `power`; weights 1, word_weight, weight; with `exact_first` the best of the lexical + word
    sum gets 1 + word_weight + weight more, as `segments.fuse_words_reference`); ties by chunk id."""
    from fwpkm_rag.pipelines.settings import DEFAULT_WORD_WEIGHT
    from fwpkm_rag.pipelines.word_layer import fuse_sources

    ww = DEFAULT_WORD_WEIGHT if word_weight is None else word_weight
    fused = fuse_sources([[s] for s in sources], [1.0, ww, weight], None, [1, 1, power])[0]
    if exact_first:
        exact = fuse_sources([[s] for s in sources[:2]], [1.0, ww])[0]
        best = max(exact.values(), default=0.0)
        for c, v in exact.items():
            if best > 0 and v == best:
                fused[c] += 1.0 + ww + weight
    return sorted(fused, key=lambda c: (-fused[c], c))[:k]


# ---- dev --------------------------------------------------------------------------------------------------------
def train_needle_queries(item, ch) -> list[tuple[str, set]]:
    """(question, chunks holding its needle) for the gold needle and every distractor of a train-split item."""
    from fwpkm_rag.data.needles import templates_for

    tmpl = next(t for t in templates_for("train") if t.name == item.template)
    return [(item.question, set(ch.gold_chunks))] + [
        (tmpl.question.format(key=key), set(cs)) for key, cs in zip(item.distractor_keys, ch.distractor_chunks)]


def store_sources(store, query: str) -> tuple[dict, dict, dict]:
    """The three sources of the store's fusion for `query` (`segments.fusion_sources` on the store's published
    view: the lexical top 50 per segment, the word layer with the store-wide word idf, the chunk semantic layer),
    each as {document id as int: score} over the whole store: the benchmark's documents are one chunk each, so
    `fused_top` over them ranks as the store does."""
    from fwpkm_rag.pipelines.segments import fusion_sources, rank_segments
    from fwpkm_rag.pipelines.word_layer import CANDIDATES

    with store.index.snapshot() as (view, dbs):
        segments = view.segments
        sources = fusion_sources(segments, query, rank_segments(segments, query, CANDIDATES))
        out = []
        for per_segment in sources:
            merged: dict = {}
            for sv, db, scores in zip(segments, dbs, per_segment):
                records = sv.view.docs.get_chunks(list(scores), db)
                for c, v in scores.items():
                    doc = int(records[c].doc_id)
                    if doc in merged:
                        raise ConfigError(f"document {doc} holds more than one chunk; the benchmark's are one each")
                    merged[doc] = v
            out.append(merged)
    return out[0], out[1], out[2] if len(out) > 2 else {}


def semantic_store(model, chunk_size: int = CHUNK_SIZE):
    """The store the sources are read from: `FwPKMStore(semantic_layer=True)`, its defaults otherwise (segments of
    65,536 tokens, word layer on), chunk tokens twice the benchmark's chunks."""
    return StoreWithSettings(model, chunk_size, semantic_layer=True)


def dev_sources(model, needles=DEV_NEEDLES, n_entries: int = 1000, log=_log) -> dict:
    """{"pairs": [(sources, gold)], "entries": [(sources, gold)], "needles": [(sources, gold, tokens,
    distractors)]}: every dev question's three sources (`store_sources`) in a store holding its haystack: the dev
    passages of the training pairs, the addressing task's entries (dev split, asked three ways), or a train-split
    needle item."""
    from fwpkm_rag.benchmarks.addressing import TASKS
    from fwpkm_rag.benchmarks.semantic_train import load_pairs
    from fwpkm_rag.data.entries import make_entries
    from fwpkm_rag.data.needles import chunk_item, make_item

    pairs = load_pairs(split="dev")
    s = semantic_store(model)
    s.add([p["passage"] for p in pairs])
    out = {"pairs": [(store_sources(s.store, p["query"]), {i}) for i, p in enumerate(pairs)], "needles": []}
    s.close()
    log(f"dev pairs: {len(pairs)} questions")
    entries = make_entries(n_entries)
    s = semantic_store(model, ENTRY_CHUNK_SIZE)
    s.add([e.text for e in entries])
    out["entries"] = [(store_sources(s.store, e.question(task)), {e.index}) for e in entries if e.split == "dev"
                      for task in TASKS]
    s.close()
    log(f"dev entries: {len(out['entries'])} questions")
    for L, D, seed in needles:
        start = time.perf_counter()
        item = make_item(L, 0.5, D, split="train", seed=seed, chunk_size=CHUNK_SIZE)
        ch = chunk_item(item)
        s = semantic_store(model)
        s.add(ch.chunks)
        out["needles"] += [(store_sources(s.store, q), gold, L, D) for q, gold in train_needle_queries(item, ch)]
        s.close()
        log(f"dev needles {L} tokens, {D} distractors: {1 + D} questions, {time.perf_counter() - start:.0f} s")
    return out


def dev_grid(dev: dict, powers=POWERS, weights=WEIGHTS, exact_firsts=(False, True)) -> list[dict]:
    """Dev pair recall@5, dev entry recall@1 and dev needle hit@1 / hit@5 for each (exact first, power, weight),
    and for weight 0 (no layer) first."""
    def hits(questions, power, weight, first):
        tops = [(fused_top(src, weight, power, 5, exact_first=first), gold) for src, gold, *_ in questions]
        n = max(len(tops), 1)
        return (sum(bool(top) and top[0] in gold for top, gold in tops) / n,
                sum(bool(set(top) & gold) for top, gold in tops) / n)

    rows = []
    for first, power, weight in [(False, 1, 0.0)] + [(f, p, w) for f in exact_firsts for p in powers for w in weights]:
        needle1, needle5 = hits(dev["needles"], power, weight, first)
        rows.append(dict(exact_first=first, power=power, weight=weight,
                         pairs_recall5=hits(dev["pairs"], power, weight, first)[1],
                         entries_recall1=hits(dev.get("entries", []), power, weight, first)[0],
                         needles_hit1=needle1, needles_hit5=needle5))
    return rows


def choose(rows: list[dict]) -> dict:
    """The setting with the best dev pair recall@5 among those whose dev needle hit@1 and hit@5 and dev entry
    recall@1 are the fusion's without the layer (weight 0, the first row) or better; ties: the smaller weight,
    then power, then without exact first."""
    base = rows[0]
    keys = ("needles_hit1", "needles_hit5", "entries_recall1")
    ok = [r for r in rows[1:] if all(r.get(key, 0.0) >= base.get(key, 0.0) for key in keys)]
    if not ok:
        raise ConfigError("no setting keeps the dev needles and entries; widen the grid")
    return max(ok, key=lambda r: (r["pairs_recall5"], -r["weight"], -r["power"], not r.get("exact_first")))


def plot_grid(rows: list[dict], chosen: dict, path: str) -> str:
    """Dev pair recall@5 against dev needle hit@5, one point per setting, a line per (exact first, power) for the
    powers in PLOTTED_POWERS (and the chosen one): the whole grid is in dev.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    shown = [p for p in sorted({r["power"] for r in rows[1:]}) if p in PLOTTED_POWERS or p == chosen["power"]]
    for first in (False, True):
        for i, p in enumerate(shown):
            pts = [r for r in rows[1:] if r["power"] == p and bool(r.get("exact_first")) == first]
            if pts:
                ax.plot([100 * r["needles_hit5"] for r in pts], [100 * r["pairs_recall5"] for r in pts],
                        "s--" if first else "o-", ms=3, color=f"C{i}",
                        label=f"{'exact first, ' if first else 'one ranking, '}power {p}")
    ax.axvline(100 * rows[0]["needles_hit5"], color="grey", ls=":", label="needles without the layer")
    ax.plot([100 * chosen["needles_hit5"]], [100 * chosen["pairs_recall5"]], "k*", ms=14, label="chosen")
    ax.set_xlabel("dev needles hit@5 (%), every needle asked")
    ax.set_ylabel("dev pairs recall@5 (%)")
    ax.set_title("semantic source in the fusion: weight grows along each line")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_dev(out_dir: str = "results/semantic_fusion", sources: str | None = None) -> dict:
    """The dev grid and the choice, written to out_dir (dev.json, dev.md, dev.png). `sources`: a pickle file of
    the dev sources: read if it exists, else written after collecting them (a later grid then takes seconds)."""
    import pickle

    from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
    from fwpkm_rag.benchmarks.systems import load_model_described

    start = time.perf_counter()
    model, desc, _ = load_model_described()
    if sources and os.path.exists(sources):
        with open(sources, "rb") as f:
            dev = pickle.load(f)
    else:
        dev = dev_sources(model)
        if sources:
            with open(sources, "wb") as f:
                pickle.dump(dev, f)
    rows = dev_grid(dev)
    chosen = choose(rows)
    meta = dict(machine=machine(), commit=commit(), model=desc, command="python -m fwpkm_rag.benchmarks."
                "semantic_fusion " + " ".join(sys.argv[1:]), questions={k: len(v) for k, v in dev.items()})
    res = dict(meta=meta, grid=rows, chosen=chosen, seconds=round(time.perf_counter() - start, 1))
    os.makedirs(out_dir, exist_ok=True)
    write_json(out_dir, "dev.json", res, indent=1)
    plot_grid(rows, chosen, os.path.join(out_dir, "dev.png"))

    def cell(r):
        return (f"{100 * r['pairs_recall5']:.1f} / {100 * r['entries_recall1']:.1f} / {100 * r['needles_hit1']:.1f}"
                f" / {100 * r['needles_hit5']:.1f}")

    md = ["| exact first | power | " + " | ".join(f"w {w:g}" for w in WEIGHTS) + " |",
          "|---|---|" + "---:|" * len(WEIGHTS)]
    for first in sorted({bool(r.get("exact_first")) for r in rows[1:]}):
        for p in POWERS:
            cells = [next(r for r in rows[1:] if r["power"] == p and r["weight"] == w
                          and bool(r.get("exact_first")) == first) for w in WEIGHTS]
            md.append(f"| {'yes' if first else 'no'} | {p} | " + " | ".join(cell(c) for c in cells) + " |")
    write_text(out_dir, "dev.md", "\n".join(
        [f"dev pairs recall@5 / dev entries recall@1 / dev needles hit@1 / hit@5 (%); without the layer: "
         f"{cell(rows[0])}; chosen: exact first {chosen.get('exact_first')}, power {chosen['power']}, weight "
         f"{chosen['weight']:g}", ""] + md) + "\n")
    _log(f"chosen {json.dumps(chosen)}; {out_dir}/dev.md")
    return res


# ---- bench ------------------------------------------------------------------------------------------------------
class StoreWithSettings:
    """`FwPKMStore` with the given settings behind the suite's add / search / nbytes (chunk tokens twice the
    benchmark's chunks, so a chunk stays one chunk, as the suite's FwPKMSystem)."""

    def __init__(self, model, chunk_size: int, **settings):
        from fwpkm_rag.pipelines import FwPKMStore

        self.store = FwPKMStore(model=model, chunk_tokens=2 * chunk_size, **settings)
        self.n = 0

    def add(self, chunks):
        chunks = list(chunks)
        self.store.add_texts(chunks, ids=[str(self.n + i) for i in range(len(chunks))])
        self.n += len(chunks)

    def search(self, query, k=5):
        return [(int(d.id), float(s)) for d, s in self.store.similarity_search_with_score(query, k=k)]

    def nbytes(self):
        return int(self.store.index.nbytes())

    def close(self):
        self.store.close()


def bench_systems(model, chunk_size: int, power: int, weight: float, exact_first: bool) -> dict:
    """The stores of the comparison, by name -> factory: the setting measured, the same with `exact_first`
    turned the other way, and the store without the layer."""
    def name(first):
        return f"store+semantic (weight {weight:g}, power {power}{', exact first' if first else ''})"

    def make(first):
        return lambda: StoreWithSettings(model, chunk_size, semantic_layer=True, semantic_power=power,
                                         semantic_weight=weight, semantic_exact_first=first)

    return {name(exact_first): make(exact_first), name(not exact_first): make(not exact_first),
            "store (lexical + words)": lambda: StoreWithSettings(model, chunk_size)}


def run_needle_items(sset, log=_log) -> list[dict]:
    """The segments bench's 128K items, every needle asked: one row per (system, question)."""
    from fwpkm_rag.benchmarks.common import rank_of
    from fwpkm_rag.benchmarks.segments import item_seed, needle_queries
    from fwpkm_rag.benchmarks.systems import close_all
    from fwpkm_rag.data.needles import chunk_item, make_item

    rows = []
    for D in BENCH_NEEDLES:
        start = time.perf_counter()
        seed = item_seed(NEEDLE_TOKENS, 99) if D == 16 else item_seed(NEEDLE_TOKENS, 99 + D)  # as bench segments
        item = make_item(NEEDLE_TOKENS, 0.5, D, split="bench", seed=seed, chunk_size=CHUNK_SIZE)
        ch = chunk_item(item)
        queries = needle_queries(item, ch)
        built = sset.build(ch.chunks)
        for name, b in built.items():
            for q, gold, is_gold in queries:
                t0 = time.perf_counter()
                hits = [i for i, _ in b.system.search(q, 5)]
                rank = rank_of(hits, gold)
                rows.append(dict(system=name, distractors=D, gold_needle=is_gold, rank=rank, hit1=rank == 1,
                                 hit5=rank is not None and rank <= 5, query_ms=1000 * (time.perf_counter() - t0),
                                 ingest_s=b.ingest_s, tokens=item.length, nbytes=int(b.system.nbytes())))
        close_all(built)
        log(f"needles 128K, {D} distractors: {len(queries)} questions, {time.perf_counter() - start:.0f} s; hit@5 " +
            ", ".join(f"{n}={sum(r['hit5'] for r in rows if r['system'] == n and r['distractors'] == D)}"
                      for n in built))
    return rows


def run_entries(sset, n_entries: int = 1000, log=_log) -> list[dict]:
    """The addressing task's entries (benchmarks/addressing.py; `data.entries`, test split): each entry asked by
    its first sentence verbatim, with its words shuffled and with its content words reordered into a question; one
    row per (system, question)."""
    from fwpkm_rag.benchmarks.addressing import TASKS
    from fwpkm_rag.benchmarks.common import rank_of
    from fwpkm_rag.benchmarks.systems import close_all
    from fwpkm_rag.data.entries import make_entries

    start = time.perf_counter()
    entries = make_entries(n_entries)
    built = sset.build([e.text for e in entries])
    rows = []
    for name, b in built.items():
        for e in entries:
            if e.split != "test":
                continue
            for task in TASKS:
                rank = rank_of([i for i, _ in b.system.search(e.question(task), 5)], {e.index})
                rows.append(dict(system=name, task=task, hit1=rank == 1, hit5=rank is not None and rank <= 5))
    close_all(built)
    log(f"entries: {len(entries)}, {len(rows) // max(len(built), 1)} test questions per system, "
        f"{time.perf_counter() - start:.0f} s")
    return rows


def entries_table(rows: list[dict], names) -> str:
    from fwpkm_rag.benchmarks.addressing import TASKS
    from fwpkm_rag.benchmarks.common import mean

    lines = ["| system | " + " | ".join(TASKS) + " |", "|---|" + "---:|" * len(TASKS)]
    for n in names:
        cells = []
        for task in TASKS:
            rs = [r for r in rows if r["system"] == n and r["task"] == task]
            if rs:
                cells.append(f"{100 * mean(r['hit1'] for r in rs):.1f} / {100 * mean(r['hit5'] for r in rs):.1f}")
        if cells:
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def needle_table(rows: list[dict], names) -> str:
    from fwpkm_rag.benchmarks.common import mean

    lines = ["| system | " + " | ".join(f"{D} distractors hit@5 (hit@1)" for D in BENCH_NEEDLES)
             + " | ingest tokens/s | bytes / token | query ms |", "|---|" + "---:|" * (len(BENCH_NEEDLES) + 3)]
    for n in names:
        mine = [r for r in rows if r["system"] == n]
        if not mine:
            continue
        cells = []
        for D in BENCH_NEEDLES:
            rs = [r for r in mine if r["distractors"] == D]
            cells.append(f"{100 * mean(r['hit5'] for r in rs):.0f}% ({100 * mean(r['hit1'] for r in rs):.0f}%)")
        first = {D: next(r for r in mine if r["distractors"] == D) for D in BENCH_NEEDLES}
        tps = mean(first[D]["tokens"] / first[D]["ingest_s"] for D in BENCH_NEEDLES)
        bpt = mean(first[D]["nbytes"] / first[D]["tokens"] for D in BENCH_NEEDLES)
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {tps:,.0f} | {bpt:.1f} | "
                     f"{sorted(r['query_ms'] for r in mine)[len(mine) // 2]:.0f} |")
    return "\n".join(lines)


def run_bench(power: int, weight: float, exact_first: bool = True, out_dir: str = "results/semantic_fusion",
              paraphrase_items: int = 4, needles: bool = True, entries: bool = True,
              baselines=("bm25", "minilm-faiss-flat", "ensemble-bm25-minilm")) -> dict:
    from fwpkm_rag.benchmarks import paraphrase
    from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
    from fwpkm_rag.benchmarks.systems import SystemSet, load_model_described

    start = time.perf_counter()
    model, desc, _ = load_model_described()
    meta = dict(machine=machine(), commit=commit(), model=desc, power=power, weight=weight, exact_first=exact_first,
                command="python -m fwpkm_rag.benchmarks.semantic_fusion " + " ".join(sys.argv[1:]),
                load_average=os.getloadavg()[0])
    size = paraphrase.DEFAULTS_FULL["paraphrase_chunk_size"]
    stores = bench_systems(model, size, power, weight, exact_first)
    names = list(baselines) + list(stores)
    sset = SystemSet(list(baselines), model=model, chunk_size=size, extra=stores)
    cfg = dict(paraphrase.DEFAULTS_FULL, paraphrase_items=paraphrase_items)
    par = paraphrase.run_paraphrase(sset, cfg, 5, _log)
    md = ["### The semantic source in the fusion: paraphrase and 128K needles", "",
          f"- machine: {meta['machine']}; load average at the start {meta['load_average']:.1f}",
          f"- commit: {meta['commit']}", f"- command: `{meta['command']}`", "",
          paraphrase.paraphrase_table(par, names)]
    res = dict(meta=meta, paraphrase=par)
    if entries:
        eset = SystemSet(list(baselines), model=model, chunk_size=ENTRY_CHUNK_SIZE,
                         extra=bench_systems(model, ENTRY_CHUNK_SIZE, power, weight, exact_first))
        res["entries"] = run_entries(eset)
        md += ["", "Entries (the addressing task, test split), recall@1 / recall@5 %:", "",
               entries_table(res["entries"], names)]
    if needles:
        nset = SystemSet(list(baselines), model=model, chunk_size=CHUNK_SIZE,
                         extra=bench_systems(model, CHUNK_SIZE, power, weight, exact_first))
        res["needles"] = run_needle_items(nset)
        md += ["", "128K needles, every needle asked (the segments bench's items):", "",
               needle_table(res["needles"], names)]
    res["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out_dir, "bench.json", res, indent=1)
    write_text(out_dir, "bench.md", "\n".join(md) + "\n")
    _log(f"done in {res['seconds']} s: {out_dir}/bench.md")
    return res


def main(argv=None) -> int:
    from fwpkm_rag.pipelines.settings import (DEFAULT_SEMANTIC_EXACT_FIRST, DEFAULT_SEMANTIC_POWER,
                                              DEFAULT_SEMANTIC_WEIGHT)

    ap = argparse.ArgumentParser(prog="python -m fwpkm_rag.benchmarks.semantic_fusion",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/semantic_fusion")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dev", help="dev sources, the (power, weight) grid and the choice")
    d.add_argument("--sources", default=None, help="pickle of the dev sources: read if it exists, else written")
    b = sub.add_parser("bench", help="paraphrase task and 128K needles for the store with a setting")
    b.add_argument("--power", type=int, default=DEFAULT_SEMANTIC_POWER)
    b.add_argument("--weight", type=float, default=DEFAULT_SEMANTIC_WEIGHT)
    b.add_argument("--exact-first", action=argparse.BooleanOptionalAction, default=DEFAULT_SEMANTIC_EXACT_FIRST)
    b.add_argument("--paraphrase-items", type=int, default=4)
    b.add_argument("--no-needles", action="store_true")
    b.add_argument("--no-entries", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "dev":
        run_dev(args.out, args.sources)
    else:
        run_bench(args.power, args.weight, args.exact_first, args.out, args.paraphrase_items,
                  needles=not args.no_needles, entries=not args.no_entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
