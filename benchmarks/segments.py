"""`fwpkm-rag bench segments`: the measurements that choose a segmented store's defaults (issue 14).

Three parts, every system on the same chunks, quality figures (hit@k) first:

* ``curve``    — one memory vs haystack length: needle hit@5/@1 of the retrieval suite's needle items
  (``data.needles.make_item``, bench split, 16 same-template distractors) at 32K-512K tokens. Every needle of an
  item is asked (the gold one and each distractor, whose 16 look-alikes are the item's other needles), so an
  item gives 17 questions. Beside it the suite's capacity task (``suite.run_capacity``: F near-duplicate facts,
  one chunk each, hit@1) with the tokens per fact, so that the fact count converts to tokens. The default
  ``segment_tokens`` is the largest size at which needle hit@5 >= 99% and capacity hit@1 >= 95%
  (:func:`choose_segment_tokens`).
* ``merge``    — segments simulated as independent ``FwPKMStore``s over consecutive slices of one corpus
  (:class:`SegmentedSystem`: about ``segment_tokens`` tokens each), every segment asked for its top k and the
  rankings merged by ``pipelines.merge.merge_hits`` with each strategy ("raw", "max", "rrf"). Run on the
  curve's needle items longer than a segment, on the capacity task past one memory's capacity, and on the
  paraphrase task (``data.paraphrase`` items split into a few segments); next to the one-memory store and BM25
  on the same items. The default strategy is the one with the best mean hit@5 over these tasks
  (:func:`choose_strategy`).
* ``store``    — the segmented store itself (``FwPKMStore(segment_tokens=...)``) when the tree has one, next to
  the one-memory store and BM25: needle hit@5/@1, query p50/p95, index bytes (and per corpus token) at 128K and
  1M tokens (``--lengths``), the reference path's latency, and the fast ranking's latency over the store's
  sealed segments repeated up to 160 segments (~10M tokens of 64K segments; latency only).

Outputs in ``out_dir``: segments.json (every row + metadata) and segments.md (tables, the choices in words).
Timing figures (ingest, query ms) are as good as the machine was quiet; the hit rates do not depend on it.
"""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Optional, Sequence

from fwpkm_rag.benchmarks.common import (commit, klabel, machine, mean, percent, quantile, rank_of, run_logger,
                                         write_final, write_json)
from fwpkm_rag.benchmarks.systems import FWPKM, FwPKMSystem, SystemSet, close_all, model_for_run

PARTS = ("curve", "merge", "store", "store-capacity")
NEEDLE_TARGET = 0.99  # needle hit@5 a segment must keep (issue 14)
CAPACITY_TARGET = 0.95  # capacity hit@1 a segment must keep (issue 14)

FULL = dict(
    lengths=(32768, 65536, 131072, 262144, 524288),
    items_per_length={32768: 6, 65536: 4, 131072: 3, 262144: 2, 524288: 1},
    distractors=16,
    capacity_loads=(0.125, 0.25, 0.5, 0.625, 0.75, 1, 2),
    capacity_queries=400,
    # merge part: segmented systems over the curve's items of at least `min_length` tokens, per segment size
    merge_segments={16384: 65536, 65536: 524288},
    merge_capacity_loads=(2, 8),
    merge_capacity_segment=16384,
    paraphrase_lengths=(8192, 32768),
    paraphrase_items=3,
    paraphrase_segments=4,
    store_lengths=(131072, 1048576, 10485760),
    store_distractors={131072: (16, 64), 1048576: (16, 64), 10485760: (16,)},  # default (16,)
    store_queries=17,
    store_reference_queries=3,
    store_reference_max=1048576,  # the reference path (a forward per segment) is measured up to this length
    store_replicas=(16, 64, 160),
    store_one_memory_max=131072,  # one memory at 1M: 12% needle hit@5 (docs/benchmarks.md); not re-measured
    store_dense="minilm-faiss-flat",  # the dense baseline beside the store (skipped when its extra is missing)
    store_dense_max=1048576,  # ... up to this length (at 10M its embedding pass alone is ~25 min on one thread)
    store_capacity_loads=(1, 8, 64),  # x N/k facts, the store with its segment size vs BM25
    store_word_layer=None,  # None: the store as a user gets it (StoreSettings' default); True / False: that variant
)
QUICK = dict(
    lengths=(2048, 4096),
    items_per_length={2048: 1, 4096: 1},
    distractors=4,
    capacity_loads=(0.125, 0.25),
    capacity_queries=20,
    merge_segments={1024: 4096},
    merge_capacity_loads=(0.25,),
    merge_capacity_segment=2048,
    paraphrase_lengths=(2048,),
    paraphrase_items=1,
    paraphrase_segments=2,
    store_lengths=(4096,),
    store_distractors={4096: (4, 8)},
    store_queries=5,
    store_reference_queries=2,
    store_reference_max=4096,
    store_replicas=(2, 4),
    store_one_memory_max=4096,
    store_dense="minilm-faiss-flat",
    store_capacity_loads=(0.25, 1),
)
CHUNK_SIZE = 256  # the suite's needle chunks


# ----------------------------------------------------------------------------------------------------------
# one memory, and a segmented store simulated from one-memory stores
# ----------------------------------------------------------------------------------------------------------
class OneMemorySystem(FwPKMSystem):
    """The store with ONE memory (``segment_tokens=None`` where the store has segments): the curve's system."""

    def __init__(self, model, chunk_size: int = CHUNK_SIZE):
        from fwpkm_rag.pipelines import FwPKMStore

        one = dict(segment_tokens=None, word_layer=False) if segmented_store_available() else {}
        self.store = FwPKMStore(model=model, chunk_tokens=2 * chunk_size, **one)
        self.n = 0


def one_memory_factory(model, chunk_size: int = CHUNK_SIZE):
    """A SystemSet factory for :class:`OneMemorySystem` (used as the suite's "fwpkm" system here)."""
    return lambda: OneMemorySystem(model, chunk_size)


# ----------------------------------------------------------------------------------------------------------
# a segmented store, simulated
# ----------------------------------------------------------------------------------------------------------
class SegmentedSystem:
    """Independent FwPKM stores over consecutive slices of the chunks, each of at most ``segment_tokens``
    tokens (a chunk longer than that gets a segment of its own); a query asks every segment for its top k and
    merges the rankings with ``merge_hits``. Chunk indices are global (the order of ``add``)."""

    def __init__(self, model, segment_tokens: int, chunk_size: int = CHUNK_SIZE, strategy: str = "raw"):
        self.model = model
        self.segment_tokens = segment_tokens
        self.chunk_size = chunk_size
        self.strategy = strategy
        self.segments: list[tuple[int, OneMemorySystem]] = []  # (first global chunk index, store)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add_segment(self, batch: Sequence[str]) -> None:
        """One more segment holding `batch` (whatever its size)."""
        if batch:
            seg = OneMemorySystem(self.model, chunk_size=self.chunk_size)
            seg.add(batch)
            self.segments.append((self.n, seg))
            self.n += len(batch)

    def add_split(self, chunks: Sequence[str], n_segments: int) -> None:
        """`chunks` as `n_segments` consecutive segments of (nearly) equal chunk counts."""
        chunks = list(chunks)
        bounds = [round(i * len(chunks) / n_segments) for i in range(n_segments + 1)]
        for a, b in zip(bounds, bounds[1:]):
            self.add_segment(chunks[a:b])

    def add(self, chunks: Sequence[str]) -> None:
        tok = self.model.get_tokenizer()
        batch: list[str] = []
        used = 0

        def flush():
            nonlocal batch, used
            self.add_segment(batch)
            batch, used = [], 0

        for c in chunks:
            t = len(tok.encode(c)) + 1  # + the eos between documents in the stream
            if batch and used + t > self.segment_tokens:
                flush()
            batch.append(c)
            used += t
        flush()

    def search_all(self, query: str, k: int = 5, strategies: Sequence[str] = ("raw", "max", "rrf")) -> dict:
        """{strategy: [(chunk index, segment score)]}: every segment searched once, merged per strategy."""
        from fwpkm_rag.pipelines.merge import merge_hits
        from fwpkm_rag.pipelines.retrieval import Hit

        per_segment = []
        for first, seg in self.segments:
            per_segment.append([Hit(first + i, str(first + i), 0, "", {}, max(float(s), 0.0), r)
                                for r, (i, s) in enumerate(seg.search(query, k))])
        return {st: [(h.chunk_id, h.score) for h in merge_hits(per_segment, k, st)] for st in strategies}

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        return self.search_all(query, k, (self.strategy,))[self.strategy]

    def nbytes(self) -> int:
        return sum(seg.nbytes() for _, seg in self.segments)

    def close(self) -> None:
        for _, seg in self.segments:
            seg.close()


def seg_name(segment_tokens: int, strategy: str) -> str:
    label = klabel(segment_tokens) if segment_tokens % 1024 == 0 else str(segment_tokens)
    return f"seg{label}-{strategy}"


# ----------------------------------------------------------------------------------------------------------
# needles: every needle of an item asked
# ----------------------------------------------------------------------------------------------------------
def item_seed(L: int, r: int) -> int:
    return 14_000_029 + 10_007 * (L % 999_983) + r


def needle_queries(item, ch) -> list[tuple[str, set, bool]]:
    """(question, chunks holding its needle, is the gold needle) for the gold needle and every distractor."""
    from fwpkm_rag.data.needles import templates_for

    tmpl = next(t for t in templates_for("bench") if t.name == item.template)
    out = [(item.question, set(ch.gold_chunks), True)]
    out += [(tmpl.question.format(key=key), set(cs), False)
            for key, cs in zip(item.distractor_keys, ch.distractor_chunks)]
    return out


def ask(rows: list, system: str, results: list, queries, base: dict) -> None:
    """One row per question from `results` (the ranked chunk indices per question)."""
    for (q, gold, is_gold), (hits, ms) in zip(queries, results):
        rank = rank_of(hits, gold)
        rows.append(dict(base, system=system, gold_needle=is_gold, needle_chunks=len(gold), rank=rank, hit1=rank == 1,
                         hit5=rank is not None and rank <= 5, query_ms=ms))


def timed_search(system, q: str, k: int):
    t0 = time.perf_counter()
    hits = [i for i, _ in system.search(q, k)]
    return hits, 1000 * (time.perf_counter() - t0)


def run_needles(sset: SystemSet, model, cfg: dict, k: int, log) -> list[dict]:
    """The curve's needle items: one memory and BM25 on every item, segmented systems where they apply."""
    from fwpkm_rag.data.needles import chunk_item, make_item

    rows = []
    grid = [(L, r, cfg["items_per_length"].get(L, 1)) for L in cfg["lengths"]
            for r in range(cfg["items_per_length"].get(L, 1))]
    for n, (L, r, n_items) in enumerate(grid, 1):
        start = time.perf_counter()
        depth = (r + 0.5) / n_items
        item = make_item(L, depth, cfg["distractors"], split="bench", seed=item_seed(L, r), chunk_size=CHUNK_SIZE)
        ch = chunk_item(item)
        queries = needle_queries(item, ch)
        base = dict(length_req=L, length=item.length, depth=depth, rep=r, template=item.template,
                    distractors=cfg["distractors"], n_chunks=len(ch.chunks))
        built = sset.build(ch.chunks)
        for name, b in built.items():
            ask(rows, name, [timed_search(b.system, q, k) for q, _, _ in queries], queries,
                dict(base, ingest_s=b.ingest_s, nbytes=int(b.system.nbytes()), segments=1))
        close_all(built)
        for S, min_len in cfg["merge_segments"].items():
            if L < min_len or L <= S:
                continue
            t0 = time.perf_counter()
            seg = SegmentedSystem(model, S)
            seg.add(ch.chunks)
            ingest_s = time.perf_counter() - t0
            merged = []
            for q, _, _ in queries:
                t1 = time.perf_counter()
                merged.append((seg.search_all(q, k), 1000 * (time.perf_counter() - t1)))
            for st in ("raw", "max", "rrf"):
                ask(rows, seg_name(S, st), [([i for i, _ in m[st]], ms) for m, ms in merged], queries,
                    dict(base, ingest_s=ingest_s, nbytes=seg.nbytes(), segments=len(seg.segments)))
            seg.close()
        here = [x for x in rows if x["length_req"] == L and x["rep"] == r]
        log(f"needles {n}/{len(grid)}: {L:,} tokens, depth {depth:.2f}, {len(ch.chunks)} chunks, "
            f"{time.perf_counter() - start:.0f} s; hit@5 " + ", ".join(
                f"{s} {sum(x['hit5'] for x in here if x['system'] == s)}/{len(queries)}"
                for s in dict.fromkeys(x["system"] for x in here)))
    return rows


# ----------------------------------------------------------------------------------------------------------
# capacity, one memory and segmented
# ----------------------------------------------------------------------------------------------------------
def capacity_task(model, load: float, queries: int):
    """The suite's capacity facts at `load` x N/k: (F, facts, their chunk texts, their tokens, the indices asked,
    the row's base fields)."""
    from fwpkm_rag.data.needles import make_facts

    fcfg = model.config.fwpkm_config
    nk = fcfg.n_slots // fcfg.topk
    F = max(2, int(load * nk))
    facts = make_facts(F, split="bench", seed=4242, template="locker")  # the suite's capacity facts
    chunks = [f.text for f in facts]
    tokens = sum(len(model.get_tokenizer().encode(c)) + 1 for c in chunks)
    asked = random.Random(F).sample(range(F), min(F, queries))
    return F, facts, chunks, tokens, asked, dict(facts=F, load=F / nk, tokens=tokens, queries=len(asked))


def run_capacity_merge(sset: SystemSet, model, cfg: dict, k: int, log) -> list[dict]:
    """The suite's capacity task (F near-duplicate facts, one chunk each, hit@1) past one memory's capacity:
    one memory, BM25 and segments of ``merge_capacity_segment`` tokens merged by each strategy."""
    S = cfg["merge_capacity_segment"]
    rows = []
    for load in cfg["merge_capacity_loads"]:
        start = time.perf_counter()
        F, facts, chunks, tokens, asked, base = capacity_task(model, load, cfg["capacity_queries"])
        built = sset.build(chunks, only=(FWPKM, "bm25"))
        for name, b in built.items():
            hits = [b.system.search(facts[i].question, 1)[0][0] == i for i in asked]
            rows.append(dict(base, system=name, segments=1, hit1=mean(hits)))
        close_all(built)
        seg = SegmentedSystem(model, S)
        seg.add(chunks)
        found = {st: [] for st in ("raw", "max", "rrf")}
        for i in asked:
            for st, res in seg.search_all(facts[i].question, k).items():
                found[st].append(bool(res) and res[0][0] == i)
        for st, hits in found.items():
            rows.append(dict(base, system=seg_name(S, st), segments=len(seg.segments), hit1=mean(hits)))
        seg.close()
        log(f"capacity merge: {F:,} facts ({tokens:,} tokens, {time.perf_counter() - start:.0f} s): " + ", ".join(
            f"{x['system']} {100 * x['hit1']:.0f}%" for x in rows[-5:]))
    return rows


# ----------------------------------------------------------------------------------------------------------
# paraphrase, split into segments
# ----------------------------------------------------------------------------------------------------------
def run_paraphrase_merge(sset: SystemSet, model, cfg: dict, k: int, log) -> list[dict]:
    """The paraphrase task's items (benchmarks/paraphrase.py's settings) with each haystack split into
    ``paraphrase_segments`` segments; recall@1/@5 of the gold chunk."""
    from fwpkm_rag.benchmarks.paraphrase import DEFAULTS_FULL
    from fwpkm_rag.data.paraphrase import chunk_paraphrase_item, make_item

    size = DEFAULTS_FULL["paraphrase_chunk_size"]
    rows = []
    for L in cfg["paraphrase_lengths"]:
        for r in range(cfg["paraphrase_items"]):
            start = time.perf_counter()
            n_facts = max(1, min(DEFAULTS_FULL["paraphrase_facts"], int(L / size / 2.5)))
            item = make_item(L, seed=9_100_003 + 7_919 * L + r, n_facts=n_facts, near=DEFAULTS_FULL["paraphrase_near"],
                             traps=DEFAULTS_FULL["paraphrase_traps"], chunk_size=size)
            ch = chunk_paraphrase_item(item)
            queries = [(f.question, {g}, True) for f, g in zip(item.facts, ch.gold_chunks)]
            base = dict(length_req=L, length=item.length, rep=r, n_chunks=len(ch.chunks))
            built = sset.build(ch.chunks, only=(FWPKM, "bm25"))
            for name, b in built.items():
                ask(rows, name, [timed_search(b.system, q, k) for q, _, _ in queries], queries, base)
            close_all(built)
            seg = SegmentedSystem(model, item.length, chunk_size=size)
            seg.add_split(ch.chunks, cfg["paraphrase_segments"])
            merged = [seg.search_all(q, k) for q, _, _ in queries]
            for st in ("raw", "max", "rrf"):
                ask(rows, f"seg{cfg['paraphrase_segments']}x-{st}", [([i for i, _ in m[st]], 0.0) for m in merged],
                    queries, dict(base, segments=len(seg.segments)))
            seg.close()
            log(f"paraphrase {L:,} tokens item {r}: {len(queries)} questions, {len(seg.segments)} segments, "
                f"{time.perf_counter() - start:.0f} s")
    return rows


# ----------------------------------------------------------------------------------------------------------
# the segmented store itself, when the tree has one
# ----------------------------------------------------------------------------------------------------------
def segmented_store_available() -> bool:
    import dataclasses

    try:
        from fwpkm_rag.pipelines import StoreSettings
    except ImportError:  # pragma: no cover
        return False
    return any(f.name == "segment_tokens" for f in dataclasses.fields(StoreSettings))


class StoreSystem(FwPKMSystem):
    """The segmented FwPKMStore behind the suite's add/search/nbytes calls (``word_layer``: with its word layer,
    docs/addressing.md "In the store")."""

    def __init__(self, model, segment_tokens: int, chunk_size: int = CHUNK_SIZE, merge: str = "raw",
                 word_layer: bool = False):
        from fwpkm_rag.pipelines import FwPKMStore

        self.store = FwPKMStore(model=model, chunk_tokens=2 * chunk_size, segment_tokens=segment_tokens, merge=merge,
                                word_layer=word_layer)
        self.n = 0

    def nbytes(self) -> int:
        nb = getattr(self.store, "nbytes", None)
        return int(nb()) if callable(nb) else int(self.store.index.nbytes())


def store_word_layer(cfg: dict) -> bool:
    """Whether the store parts' store has its word layer: ``store_word_layer``, default the store's default."""
    from fwpkm_rag.pipelines.settings import DEFAULT_WORD_LAYER

    chosen = cfg.get("store_word_layer")
    return DEFAULT_WORD_LAYER if chosen is None else bool(chosen)


def store_name(segment_tokens: int, cfg: dict) -> str:
    """The segmented store's system name: store-seg64K (lexical only), or store-seg64K+words with its word layer."""
    return f"store-seg{klabel(segment_tokens)}" + ("+words" if store_word_layer(cfg) else "")


def _latency(fn, queries) -> list[float]:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def run_store(sset: SystemSet, model, cfg: dict, segment_tokens: int, k: int, log) -> list[dict]:
    """The segmented store next to BM25, MiniLM + FAISS (``store_dense``) and, up to ``store_one_memory_max``
    tokens, one memory, at each of ``store_lengths`` and each of its ``store_distractors``: needle hit@5/@1 (17
    questions of one item, or 1 + distractors when fewer), query p50/p95, resident index bytes (and per corpus
    token), ingest seconds and tokens/s. For the store also: the reference path's p50 (one forward per segment,
    ``search_reference``, on a few questions, up to ``store_reference_max`` tokens), the bytes of a sealed
    segment per token and, latency only, its fast ranking over the sealed segments repeated to
    ``store_replicas`` segments."""
    from fwpkm_rag.benchmarks.systems import Built
    from fwpkm_rag.data.needles import chunk_item, make_item

    rows = []
    for L in cfg["store_lengths"]:
        for D in cfg.get("store_distractors", {}).get(L, (cfg["distractors"],)):
            rows += _store_item(sset, model, cfg, segment_tokens, k, log, L, D, Built, chunk_item, make_item)
    return rows


def _store_item(sset, model, cfg, segment_tokens, k, log, L, D, Built, chunk_item, make_item) -> list[dict]:
    start = time.perf_counter()
    seed = item_seed(L, 99) if D == cfg["distractors"] else item_seed(L, 99 + D)
    item = make_item(L, 0.5, D, split="bench", seed=seed, chunk_size=CHUNK_SIZE)
    ch = chunk_item(item)
    queries = needle_queries(item, ch)[: max(cfg["store_queries"], 1 + D) if D > cfg["distractors"] else cfg["store_queries"]]
    base = dict(length_req=L, length=item.length, n_chunks=len(ch.chunks), distractors=D)
    only = ["bm25"] + ([FWPKM] if L <= cfg.get("store_one_memory_max", L) else [])
    only += [cfg["store_dense"]] if cfg.get("store_dense") in sset.names and L <= cfg.get("store_dense_max", L) else []
    built = sset.build(ch.chunks, only=only)
    log(f"store {L:,} tokens, {D} distractors: baselines built ({time.perf_counter() - start:.0f} s)")
    t0 = time.perf_counter()
    store = StoreSystem(model, segment_tokens, word_layer=store_word_layer(cfg))
    store.add(ch.chunks)
    name = store_name(segment_tokens, cfg)
    built[name] = Built(store, time.perf_counter() - t0, len(ch.chunks))
    log(f"store {L:,} tokens: segmented store built ({built[name].ingest_s:.0f} s)")
    if cfg.get("store_keep_dir"):  # kept so later code can be timed on the same store without re-ingesting
        kept = os.path.join(cfg["store_keep_dir"], f"{name}-{L}-d{D}")
        store.store.save(kept)
        write_json(cfg["store_keep_dir"], os.path.basename(kept) + ".questions.json",  # to re-time it later
                   [q for q, _, _ in queries])
        log(f"store {L:,} tokens: saved to {kept}")
    rows = []
    for sys_name, b in built.items():
        b.system.search(queries[0][0], k)  # warm-up
        res = [timed_search(b.system, q, k) for q, _, _ in queries]
        lat = [ms for _, ms in res]
        ranks = [rank_of(h, gold) for (h, _), (_, gold, _) in zip(res, queries)]
        nbytes = int(b.system.nbytes())
        row = dict(base, system=sys_name, hit5=mean(r is not None and r <= 5 for r in ranks),
                   hit1=mean(r == 1 for r in ranks), queries=len(ranks), p50_ms=quantile(lat, 0.5),
                   p95_ms=quantile(lat, 0.95), nbytes=nbytes, bytes_per_token=nbytes / item.length,
                   ingest_s=b.ingest_s, ingest_tok_s=item.length / b.ingest_s if b.ingest_s else None, segments=1)
        if sys_name == name:
            idx = b.system.store.index
            sealed = [s for s in idx.segments if s.sealed]
            row["segments"] = len(idx.segments)
            if sealed:
                row["sealed_bytes_per_token"] = (sum(s.index.nbytes() for s in sealed)
                                                 / sum(s.index.tokens_ingested for s in sealed))
            if L <= cfg.get("store_reference_max", L):
                row["reference_p50_ms"] = quantile(_latency(lambda q: idx.search_reference(q, k),
                                                            [q for q, _, _ in queries[: cfg["store_reference_queries"]]]), 0.5)
            row["replicas"] = _replicated_latency(idx, [q for q, _, _ in queries], k, cfg["store_replicas"])
        rows.append(row)
    close_all(built)
    log(f"store {L:,} tokens, {D} distractors ({time.perf_counter() - start:.0f} s): " + ", ".join(
        f"{x['system']} hit@5 {100 * x['hit5']:.0f}% p50 {x['p50_ms']:.1f} ms {x['nbytes'] / 2**20:.1f} MiB"
        for x in rows))
    return rows


def run_store_capacity(sset: SystemSet, model, cfg: dict, segment_tokens: int, log) -> list[dict]:
    """The suite's capacity task (F near-duplicate "locker" facts, one chunk each, hit@1 over up to
    ``capacity_queries`` of them) at ``store_capacity_loads`` x N/k facts: the segmented store as a user gets
    it (``FwPKMStore(segment_tokens=...)``, its merge) next to BM25."""
    rows = []
    for load in cfg["store_capacity_loads"]:
        start = time.perf_counter()
        F, facts, chunks, tokens, asked, base = capacity_task(model, load, cfg["capacity_queries"])
        built = sset.build(chunks, only=("bm25",))
        store = StoreSystem(model, segment_tokens, word_layer=store_word_layer(cfg))
        store.add(chunks)
        built[store_name(segment_tokens, cfg)] = store
        for name, system in built.items():
            system = getattr(system, "system", system)
            hits = [system.search(facts[i].question, 1)[0][0] == i for i in asked]
            segments = len(system.store.index.segments) if name.startswith("store") else 1
            rows.append(dict(base, system=name, segments=segments, hit1=mean(hits)))
        store.close()
        close_all({n: b for n, b in built.items() if not n.startswith("store")})
        log(f"store capacity: {F:,} facts ({tokens:,} tokens, {time.perf_counter() - start:.0f} s): " + ", ".join(
            f"{x['system']} {100 * x['hit1']:.1f}%" for x in rows[-2:]))
    return rows


def _replicated_latency(idx, questions: list, k: int, counts) -> list[dict]:
    """p50/p95 of the store's fast ranking (`segments.rank_segments`: every segment's top k, no documents read)
    over this store's sealed segments repeated to each count in `counts`, on 1 thread and on the store's
    2 threads and the store's `SEARCH_THREADS` (latency only: the repeats rank the same chunks)."""
    from fwpkm_rag.pipelines.segments import SEARCH_THREADS, rank_segments

    sealed = [sv for sv in idx.view.segments if sv.sealed]
    if not sealed:
        return []
    out = []
    per_segment = sum(sv.index.tokens_ingested for sv in sealed) / len(sealed)
    for n in counts:
        views = [sealed[i % len(sealed)] for i in range(n)]
        for threads in sorted({1, 2, SEARCH_THREADS}):
            rank_segments(views, questions[0], k, threads)  # warm-up
            lat = _latency(lambda q: rank_segments(views, q, k, threads), questions)
            out.append(dict(segments=n, tokens=int(n * per_segment), threads=threads, p50_ms=quantile(lat, 0.5),
                            p95_ms=quantile(lat, 0.95)))
    return out


# ----------------------------------------------------------------------------------------------------------
# choices
# ----------------------------------------------------------------------------------------------------------
def needle_curve(rows: list[dict], system: str = FWPKM, whole: bool = False) -> list[tuple[int, float, float, int]]:
    """(length, hit@5, hit@1, questions) of `system` per haystack length; `whole`: only needles inside one
    chunk (make_item places the gold needle inside one chunk, not the distractors)."""
    out = []
    for L in sorted({r["length_req"] for r in rows}):
        sel = [r for r in rows if r["system"] == system and r["length_req"] == L
               and not (whole and r.get("needle_chunks", 1) > 1)]
        if sel:
            out.append((L, mean(r["hit5"] for r in sel), mean(r["hit1"] for r in sel), len(sel)))
    return out


def choose_segment_tokens(needles: list[dict], capacity: dict) -> dict:
    """The largest size at which needle hit@5 >= 99% and capacity hit@1 >= 95% (issue 14's rule).

    Needles (inside one chunk: a needle cut by a chunk boundary is a chunking artefact that BM25 misses as
    well): the largest measured length L whose hit@5 and every shorter length's meet the target. Capacity:
    the most tokens of facts (facts x tokens per fact) whose hit@1, and every smaller load's, meets it. The
    default is the smaller of the two, as a power of two at or below it."""
    needle_ok = 0
    for L, h5, _, _ in needle_curve(needles, whole=True):
        if h5 < NEEDLE_TARGET:
            break
        needle_ok = L
    cap_ok = 0
    cap_rows = sorted((r for r in (capacity or {}).get("retrieval", []) if r["system"] == FWPKM),
                      key=lambda r: r["facts"])
    for r in cap_rows:
        if r["hit1"] < CAPACITY_TARGET:
            break
        cap_ok = r["tokens"]
    bound = min(needle_ok, cap_ok) if cap_rows else needle_ok
    default = 1 << (int(bound).bit_length() - 1) if bound > 0 else None
    return dict(needle_tokens=needle_ok, capacity_tokens=cap_ok, bound_tokens=bound, segment_tokens=default,
                limited_by="capacity" if cap_rows and cap_ok < needle_ok else "needles")


def merge_scores(res: dict) -> dict:
    """{strategy: {task: (hit@5 or capacity hit@1, questions)}} over every segmented system of the run."""
    out: dict = {}
    for task, key in (("needles", "hit5"), ("paraphrase", "hit5"), ("capacity", "hit1")):
        rows = res.get(f"merge_{task}" if task != "needles" else "needles") or []
        for st in ("raw", "max", "rrf"):
            sel = [r for r in rows if r["system"].startswith("seg") and r["system"].endswith("-" + st)]
            if sel:
                if task == "capacity":
                    out.setdefault(st, {})[task] = (mean(r["hit1"] for r in sel), sum(r["queries"] for r in sel))
                else:
                    out.setdefault(st, {})[task] = (mean(r[key] for r in sel), len(sel))
    return out


def choose_strategy(res: dict) -> Optional[str]:
    """The strategy with the best mean over tasks (needle hit@5, capacity hit@1, paraphrase hit@5); ties go
    to the simpler strategy (raw, then max, then rrf)."""
    scores = merge_scores(res)
    if not scores:
        return None
    return max(("raw", "max", "rrf"), key=lambda st: (mean(v for v, _ in scores.get(st, {}).values()) or 0.0,
                                                     -("raw", "max", "rrf").index(st)))


# ----------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------
def curve_table(res: dict) -> str:
    rows = res.get("needles") or []
    if not rows:
        return ""
    lengths = sorted({r["length_req"] for r in rows})
    systems = [s for s in (FWPKM, "bm25") if any(r["system"] == s for r in rows)]
    out = [f"\n#### Needles, {res['meta']['config']['distractors']} distractors: hit@5 (hit@1), every needle of "
           "an item asked\n",
           "| system | " + " | ".join(klabel(L) for L in lengths) + " |", "|---|" + "---:|" * len(lengths)]
    for s in systems:
        cells = []
        for L in lengths:
            sel = [r for r in rows if r["system"] == s and r["length_req"] == L]
            cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})" if sel else "–")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("| questions (items) | " + " | ".join(
        f"{sum(r['system'] == FWPKM and r['length_req'] == L for r in rows)} "
        f"({len({r['rep'] for r in rows if r['length_req'] == L})})" for L in lengths) + " |")
    gold = [r for r in rows if r["system"] == FWPKM and r["gold_needle"]]
    if gold:
        out.append(f"\nThe gold needles alone (the suite's own question per item, placed inside one chunk): FwPKM "
                   f"hit@5 {percent(r['hit5'] for r in gold)} of {len(gold)}.")
    split = [r for r in rows if r.get("needle_chunks", 1) > 1]
    if split:
        out.append("Distractor needles are not placed to avoid chunk boundaries: " + ", ".join(
            f"{s} finds {sum(r['hit5'] for r in split if r['system'] == s)}/{sum(r['system'] == s for r in split)} "
            "needles cut in two chunks" for s in systems) + "; on needles inside one chunk FwPKM's hit@5 is " + ", ".join(
            f"{klabel(L)} {percent(r['hit5'] for r in rows if r['system'] == FWPKM and r['length_req'] == L and r.get('needle_chunks', 1) == 1)}"
            for L in lengths) + ".")
    return "\n".join(out)


def capacity_rows_table(cap: dict) -> str:
    if not cap:
        return ""
    rows = [r for r in cap["retrieval"]]
    loads = sorted({(r["facts"], r["tokens"]) for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    tpf = sum(t for _, t in loads) / sum(f for f, _ in loads)
    out = [f"\n#### Capacity (N/k = {cap['n_over_k']:,}): hit@1 vs facts stored, {tpf:.1f} tokens per fact\n",
           "| facts | × N/k | tokens | " + " | ".join(systems) + " |", "|---:|---:|---:|" + "---:|" * len(systems)]
    for F, T in loads:
        cells = []
        for s in systems:
            r = next((r for r in rows if r["system"] == s and r["facts"] == F), None)
            cells.append(f"{100 * r['hit1']:.1f}% ({r['queries']})" if r else "–")
        out.append(f"| {F:,} | {F / cap['n_over_k']:.3g} | {T:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def merge_tables(res: dict) -> str:
    out = []
    rows = [r for r in res.get("needles") or [] if r["segments"] > 1 or r["system"] in (FWPKM, "bm25")]
    seg_systems = list(dict.fromkeys(r["system"] for r in rows if r["system"].startswith("seg")))
    if seg_systems:
        lengths = sorted({r["length_req"] for r in rows if r["system"].startswith("seg")})
        out += [f"\n#### Merge, needles ({res['meta']['config']['distractors']} distractors): hit@5 (hit@1); segments of "
                "about S tokens (segS-strategy), each asked for its top 5\n",
                "| system | " + " | ".join(klabel(L) for L in lengths) + " | segments |",
                "|---|" + "---:|" * (len(lengths) + 1)]
        for s in [FWPKM, "bm25", *seg_systems]:
            cells = []
            for L in lengths:
                sel = [r for r in rows if r["system"] == s and r["length_req"] == L]
                cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})" if sel else "–")
            segs = sorted({r["segments"] for r in rows if r["system"] == s})
            out.append(f"| {s} | " + " | ".join(cells) + f" | {'-'.join(map(str, [segs[0], segs[-1]])) if len(segs) > 1 else segs[0]} |")
    cap = res.get("merge_capacity") or []
    if cap:
        loads = sorted({(r["facts"], r["tokens"]) for r in cap})
        systems = list(dict.fromkeys(r["system"] for r in cap))
        out += ["\n#### Merge, capacity task: hit@1 vs facts stored\n",
                "| system | " + " | ".join(f"{F:,} facts ({klabel(T)} tokens)" for F, T in loads) + " |",
                "|---|" + "---:|" * len(loads)]
        for s in systems:
            cells = []
            for F, _ in loads:
                r = next((r for r in cap if r["system"] == s and r["facts"] == F), None)
                cells.append(f"{100 * r['hit1']:.1f}%" + (f" ({r['segments']} seg)" if r and r["segments"] > 1 else "")
                             if r else "–")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
    par = res.get("merge_paraphrase") or []
    if par:
        lengths = sorted({r["length_req"] for r in par})
        systems = list(dict.fromkeys(r["system"] for r in par))
        out += ["\n#### Merge, paraphrase task: recall@5 (recall@1), each haystack split into segments\n",
                "| system | " + " | ".join(f"{klabel(L)} ({sum(r['system'] == FWPKM and r['length_req'] == L for r in par)} q)"
                                          for L in lengths) + " | all |",
                "|---|" + "---:|" * (len(lengths) + 1)]
        for s in systems:
            cells = [f"{percent(r['hit5'] for r in par if r['system'] == s and r['length_req'] == L)} "
                     f"({percent(r['hit1'] for r in par if r['system'] == s and r['length_req'] == L)})" for L in lengths]
            sel = [r for r in par if r["system"] == s]
            cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
    scores = merge_scores(res)
    if scores:
        out.append("\nPer strategy over every segmented system of the run: " + "; ".join(
            f"{st}: " + ", ".join(f"{task} {100 * v:.1f}% (n={n})" for task, (v, n) in d.items())
            for st, d in scores.items()) + ".")
    return "\n".join(out)


def store_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    out = ["\n#### The segmented store (FwPKMStore(segment_tokens=...)) vs one memory, BM25, MiniLM + FAISS\n",
           "| system | tokens | distractors | segments | needle hit@5 (hit@1) | query p50 / p95 ms | index MiB | "
           "bytes / token | ingest s (tokens/s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rate = f" ({r['ingest_tok_s']:,.0f})" if r.get("ingest_tok_s") else ""
        out.append(f"| {r['system']} | {r['length']:,} | {r.get('distractors', 16)} | {r.get('segments', 1)} | "
                   f"{100 * r['hit5']:.0f}% ({100 * r.get('hit1', 0):.0f}%) of {r['queries']} | "
                   f"{r['p50_ms']:.1f} / {r.get('p95_ms', 0):.1f} | {r['nbytes'] / 2**20:.1f} | "
                   f"{r.get('bytes_per_token', 0):.1f} | {r['ingest_s']:.0f}{rate} |")
    for r in rows:
        if r.get("sealed_bytes_per_token") is not None or "reference_p50_ms" in r:
            ref = (f"the reference path (one forward per segment, `search_reference`) p50 {r['reference_p50_ms']:.0f} ms; "
                   if "reference_p50_ms" in r else "")
            out.append(f"\n{r['system']} at {r['length']:,} tokens, {r.get('distractors', 16)} distractors: {ref}a "
                       f"sealed segment holds {r.get('sealed_bytes_per_token', float('nan')):.1f} bytes per token in RAM.")
            if r.get("replicas"):
                out.append("Fast ranking over its sealed segments repeated (latency only): " + "; ".join(
                    f"{x['segments']} segments (~{x['tokens'] / 1e6:.1f}M tokens), {x.get('threads', 1)} thread(s): "
                    f"p50 {x['p50_ms']:.0f} ms, p95 {x['p95_ms']:.0f} ms" for x in r["replicas"]) + ".")
    return "\n".join(out)


def store_capacity_table(rows: Optional[list]) -> str:
    if not rows:
        return ""
    out = ["\n#### Capacity: near-duplicate facts in the segmented store vs BM25 (hit@1)\n",
           "| facts | x N/k | tokens | system | segments | hit@1 |", "|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| {r['facts']:,} | {r['load']:g} | {r['tokens']:,} | {r['system']} | {r['segments']} | "
                   f"{100 * r['hit1']:.1f}% of {r['queries']} |")
    return "\n".join(out)


def report(res: dict) -> str:
    m = res["meta"]
    head = [f"### Segments: the curve that sizes a segment, and the merge ({'quick' if m['quick'] else 'full'} run)\n",
            f"- machine: {m['machine']}", f"- commit: {m['commit']}", f"- command: `{m['command']}`",
            f"- FwPKM model: {m['model']}",
            f"- chunks: {CHUNK_SIZE} tokens (paraphrase: 128); k = {m['k']}; wall time {m.get('wall_s', 0):.0f} s"]
    parts = ["\n".join(head), curve_table(res), capacity_rows_table(res.get("capacity"))]
    ch = res.get("choice")
    if ch:
        parts.append(
            f"\n**segment_tokens**: needles hold hit@5 ≥ {100 * NEEDLE_TARGET:.0f}% up to {ch['needle_tokens']:,} "
            f"tokens; capacity hit@1 ≥ {100 * CAPACITY_TARGET:.0f}% up to {ch['capacity_tokens']:,} tokens of facts; "
            f"the bound is {ch['bound_tokens']:,} tokens ({ch['limited_by']}), default "
            + (f"**{ch['segment_tokens']:,}**" if ch["segment_tokens"] else "none (no size met both targets)") + ".")
    parts.append(merge_tables(res))
    if res.get("strategy"):
        parts.append(f"\n**merge strategy**: {res['strategy']} (best mean over the tasks above).")
    parts.append(store_table(res.get("store") or []))
    parts.append(store_capacity_table(res.get("store_capacity")))
    return "\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------
def run_segments_bench(out_dir: str = "results/segments", quick: bool = False, threads: int = 1,
                       parts: Sequence[str] = PARTS, model=None, model_path: Optional[str] = None, k: int = 5,
                       lengths: Optional[Sequence[int]] = None, segment_tokens: Optional[int] = None,
                       overrides: Optional[dict] = None, word_layer: Optional[bool] = None,
                       keep_store: Optional[str] = None) -> dict:
    """Run the parts; write segments.json and segments.md to out_dir; return the results dict.

    ``segment_tokens`` sizes the store parts' segmented store (default: the store's default segment_tokens);
    ``keep_store``: a folder where the store part saves each segmented store it builds."""
    import torch

    from fwpkm_rag.benchmarks.suite import run_capacity

    wall0 = time.perf_counter()
    torch.set_num_threads(threads)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from {PARTS}")
    cfg = dict(QUICK if quick else FULL)
    if lengths:
        cfg["lengths"] = cfg["store_lengths"] = tuple(lengths)
    if word_layer is not None:  # that variant of the store beside BM25 only (the other baselines do not change)
        cfg.update(store_word_layer=word_layer, store_dense=None, store_one_memory_max=0)
    cfg.update(overrides or {})
    if keep_store:
        cfg["store_keep_dir"] = keep_store

    log = run_logger(wall0)
    model, model_desc, _ = model_for_run(model, model_path)
    # "fwpkm" here is always ONE memory, whatever the store's default segment_tokens
    dense = [cfg["store_dense"]] if "store" in parts and cfg.get("store_dense") else []
    sset = SystemSet([FWPKM, "bm25", *dense], model=model, chunk_size=CHUNK_SIZE,
                     extra={FWPKM: one_memory_factory(model, CHUNK_SIZE)})
    res: dict = dict(meta=dict(machine=machine(threads), commit=commit(), python=sys.version.split()[0],
                               torch=torch.__version__, quick=quick, parts=list(parts), k=k, model=model_desc,
                               systems=sset.names, skipped=sset.skipped, command=" ".join(sys.argv),
                               config={key: (list(v) if isinstance(v, tuple) else
                                             {str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
                                       for key, v in cfg.items()}))
    os.makedirs(out_dir, exist_ok=True)

    def save_partial() -> None:
        write_json(out_dir, "segments.partial.json", res, indent=1)

    if "curve" in parts or "merge" in parts:
        res["capacity"] = run_capacity(sset, model, cfg, log)
        save_partial()
        res["needles"] = run_needles(sset, model, cfg if "merge" in parts else dict(cfg, merge_segments={}), k, log)
        res["choice"] = choose_segment_tokens(res["needles"], res["capacity"])
        save_partial()
    if "merge" in parts:
        res["merge_capacity"] = run_capacity_merge(sset, model, cfg, k, log)
        save_partial()
        res["merge_paraphrase"] = run_paraphrase_merge(sset, model, cfg, k, log)
        res["strategy"] = choose_strategy(res)
        save_partial()
    if "store" in parts or "store-capacity" in parts:
        from fwpkm_rag.pipelines.settings import StoreSettings

        S = segment_tokens or StoreSettings().segment_tokens
        res["meta"]["segment_tokens"] = S
        if "store" in parts:
            res["store"] = run_store(sset, model, cfg, S, k, log)
            save_partial()
        if "store-capacity" in parts:
            res["store_capacity"] = run_store_capacity(sset, model, cfg, S, log)
    res["meta"]["wall_s"] = time.perf_counter() - wall0
    write_final(out_dir, "segments", res, report)
    log(f"wall time {time.perf_counter() - wall0:.0f} s")
    return res
