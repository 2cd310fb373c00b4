"""`fwpkm-rag bench addressing`: words and meaning (issue 17) — does a question find its entry when it reuses
the entry's words in another order, and do the exact-key needles stay as good as today?

Systems (docs/addressing.md):

* ``fwpkm``     — the default store (the shipped model's context-keyed FwPKM layers: the lexical store);
* ``word``      — the word layer alone (pipelines/word_layer.py: product-key addressing of a word alone);
* ``combined``  — fwpkm + word in ONE ranking: each source's scores divided by their per-question maximum,
  weighted and summed; the weight is chosen on the task's **dev** split (never its test split, never the
  needles) and reported with the grid searched;
* ``store+words`` — the same fusion inside the store: ``FwPKMStore(word_layer=True)`` searched as a user would
  (docs/addressing.md, "In the store": a word layer per segment, each source normalised over the whole store,
  the store's default word weight 8 — the dev-chosen weight of an earlier run, not re-chosen here). The
  ``fwpkm`` source is that same store ranked by its lexical scores alone (``search(words=False)``), so the
  store is ingested once; its ingest time includes the word layer's writes (about 1%), its index bytes do not;
* ``bm25``, ``minilm-faiss-flat`` and ``ensemble-bm25-minilm`` (LangChain's EnsembleRetriever over both,
  "the usual hybrid"): the baselines;
* ``semantic``, ``combined+semantic`` — when part B's ``fwpkm_rag.benchmarks.semantic.make_addressing_layer``
  exists (otherwise skipped, with the reason recorded).

Tasks: ``fwpkm_rag.data.entries`` (short natural-text entries asked verbatim / shuffled / reordered;
recall@1 and @5 on the test split), and the retrieval suite's needles (bench templates, 16 distractors that
share the key's template, 32K-128K tokens; hit@1 and @5 of the question in the fact's words, and of its
paraphrase). Cost: ingest tokens/s (the model tokenizer's tokens of the chunks over ingest seconds) and index
bytes (documents excluded) of every system on the entries collection.

Outputs in ``out_dir``: addressing.json (every number + metadata) and addressing.md (the tables).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from fwpkm_rag.benchmarks.common import commit, machine, mean, quantile, rank_of, run_logger, write_final
from fwpkm_rag.benchmarks.systems import FWPKM, FwPKMSystem, model_for_run

FULL = dict(n_entries=1000, needle_lengths=(32768, 65536, 131072), needle_depths=(0.1, 0.5, 0.9), needle_reps=1,
            scale_entries=(500, 1000, 2400))
QUICK = dict(n_entries=200, needle_lengths=(32768,), needle_depths=(0.5,), needle_reps=1, scale_entries=())
DISTRACTORS = 16
CANDIDATES = 50  # the lexical store's candidate depth for the fusion (chunks below it count 0 for it)
WORD_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0)  # the word layer's weight, the store's = 1
SEMANTIC_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
BASELINE_NAMES = ("bm25", "minilm-faiss-flat", "ensemble-bm25-minilm")
TASKS = ("verbatim", "shuffled", "reordered")
STORE_WORDS = "store+words"
NEEDLE_CHUNK = 256


# ---- one ranking out of several sources ------------------------------------------------------------------
def fuse(sources: Sequence[dict], weights: Sequence[float]) -> dict:
    """{chunk: sum_s w_s * S_s(chunk) / max S_s}: each source's scores scaled so its best chunk scores 1."""
    out: dict = {}
    for scores, w in zip(sources, weights):
        if not scores or w == 0:
            continue
        top = max(scores.values())
        if top <= 0:
            continue
        for c, s in scores.items():
            out[c] = out.get(c, 0.0) + w * s / top
    return out


def ranked(scores: dict, k: int) -> list:
    """The k best chunks of a score dict (ties by chunk id: deterministic)."""
    return sorted(scores, key=lambda c: (-scores[c], c))[:k]


# ---- sources: everything that gives per-chunk scores for a question ----------------------------------------
@dataclass
class Source:
    name: str
    system: object  # add(texts, ids) + scores(q) (a layer), or add(chunks) + search(q, k) (a store/baseline)
    ingest_s: float = 0.0

    def scores(self, question: str) -> tuple[dict, list]:
        """(scores {chunk: score > 0} for the fusion, this system's own top-5 list)."""
        if hasattr(self.system, "scores"):
            sc = self.system.scores(question)
            return sc, ranked(sc, 5)
        hits = self.system.search(question, CANDIDATES if self.name == FWPKM else 5)
        return {c: s for c, s in hits if s > 0}, [c for c, _ in hits[:5]]

    def nbytes(self):
        if self.name == STORE_WORDS:
            return self.system.store_nbytes()
        nb = getattr(self.system, "nbytes", None)
        return int(nb()) if nb is not None else None

    def close(self) -> None:
        close = getattr(self.system, "close", None)
        if close is not None:
            close()


class WordStoreSystem(FwPKMSystem):
    """The store built with ``word_layer=True`` (the default): ``search`` ranks by its lexical scores alone (the
    ``fwpkm`` source, as ``word_layer=False`` ranks), ``fused`` as the store ranks with its word layer."""

    def __init__(self, model, chunk_size: int = 256):
        super().__init__(model, chunk_size=chunk_size)
        from fwpkm_rag.pipelines import FwPKMStore

        self.store.close()
        self.store = FwPKMStore(model=model, chunk_tokens=2 * chunk_size, per_slot=32, piece_tokens=2048,
                                word_layer=True)

    def _hits(self, query: str, k: int, words: bool) -> list[tuple[int, float]]:
        out, seen = [], set()
        for h in self.store.index.search(query, k, words=words):
            if int(h.doc_id) not in seen:  # one chunk per document by construction; guard anyway
                seen.add(int(h.doc_id))
                out.append((int(h.doc_id), float(h.score)))
        return out

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        return self._hits(query, k, False)

    def fused(self) -> "_Fused":
        return _Fused(self)

    def word_nbytes(self) -> int:
        return sum(sv.view.words.nbytes() for sv in self.store.index.view.segments)

    def nbytes(self) -> int:
        """The lexical store's bytes (as the default store's): the word layers left out."""
        return int(self.store.index.nbytes()) - self.word_nbytes()

    def store_nbytes(self) -> int:
        return int(self.store.index.nbytes())


class _Fused:
    """The word store as ranked with its word layer (one chunk per document here: doc id = chunk)."""

    def __init__(self, system: WordStoreSystem):
        self.base = system

    def search(self, query: str, k: int = 5) -> list[tuple[int, float]]:
        return self.base._hits(query, k, True)

    def store_nbytes(self) -> int:
        return self.base.store_nbytes()


def semantic_factory() -> tuple[Optional[Callable], Optional[str]]:
    """Part B's layer factory, or (None, why not)."""
    try:
        from fwpkm_rag.benchmarks import semantic  # part B's module (docs/addressing.md)
    except ImportError as exc:
        return None, f"fwpkm_rag.benchmarks.semantic not importable: {exc}"
    make = getattr(semantic, "make_addressing_layer", None)
    if make is None:
        return None, "fwpkm_rag.benchmarks.semantic has no make_addressing_layer()"
    try:  # one trial build: missing weights (not trained yet) skip the systems instead of failing the run
        make()
    except Exception as exc:  # noqa: BLE001 - any failure of part B's layer is a reason to skip it, recorded
        return None, f"make_addressing_layer() failed: {type(exc).__name__}: {exc}"
    return make, None


def build_sources(chunks: list[str], model, chunk_size: int, baselines: Sequence[str], semantic_make, log,
                  encoder=None) -> dict[str, Source]:
    """Every source over the same chunks, ingest timed (dense ingest = MiniLM encoding + the index's add)."""
    from fwpkm_rag.benchmarks.baselines import make_baseline
    from fwpkm_rag.pipelines.word_layer import WordLayer

    out: dict[str, Source] = {}
    ids = list(range(len(chunks)))
    makers: list[tuple[str, Callable]] = [(FWPKM, lambda: WordStoreSystem(model, chunk_size=chunk_size)),
                                          ("word", WordLayer)]
    if semantic_make is not None:
        makers.append(("semantic", semantic_make))
    emb, enc_s = None, 0.0
    if any(b != "bm25" for b in baselines):
        t0 = time.perf_counter()
        emb = encoder.encode(chunks)
        enc_s = time.perf_counter() - t0
    for name, make in makers:
        system = make()
        t0 = time.perf_counter()
        if hasattr(system, "scores"):
            system.add(chunks, ids)
        else:
            system.add(chunks)
        out[name] = Source(name, system, time.perf_counter() - t0)
        if name == FWPKM:  # the same store, ranked with its word layer
            out[STORE_WORDS] = Source(STORE_WORDS, system.fused(), out[name].ingest_s)
    for name in baselines:
        system = make_baseline(name, encoder=encoder) if name != "bm25" else make_baseline(name)
        t0 = time.perf_counter()
        if name == "bm25":
            system.add(chunks)
            secs = time.perf_counter() - t0
        else:
            system.add(chunks, embeddings=emb)
            secs = time.perf_counter() - t0 + enc_s
        out[name] = Source(name, system, secs)
    log("built " + ", ".join(f"{n} {s.ingest_s:.1f} s" for n, s in out.items()))
    return out


def ask_all(sources: dict[str, Source], questions: Sequence[str]) -> dict[str, list]:
    """Per source, per question: (scores dict, own top-5, seconds)."""
    out: dict[str, list] = {n: [] for n in sources}
    for q in questions:
        for n, s in sources.items():
            t0 = time.perf_counter()
            sc, top = s.scores(q)
            out[n].append((sc, top, time.perf_counter() - t0))
    return out


def fused_systems(answers: dict[str, list], weights: dict[str, tuple]) -> dict[str, list]:
    """The combined systems' top-5 per question, from the sources' cached answers."""
    out = {}
    for name, (names, w) in weights.items():
        if all(n in answers for n in names):
            per_q = zip(*(answers[n] for n in names))
            out[name] = [ranked(fuse([a[0] for a in qa], w), 5) for qa in per_q]
    return out


# ---- the entries task ------------------------------------------------------------------------------------
def recall(tops: list, gold: list) -> dict:
    r1 = [bool(t) and t[0] == g for t, g in zip(tops, gold)]
    r5 = [g in t[:5] for t, g in zip(tops, gold)]
    return dict(r1=100.0 * sum(r1) / len(gold), r5=100.0 * sum(r5) / len(gold), n=len(gold))


def choose_weights(answers: dict, gold: list, names: Sequence[str], grid: list[tuple]) -> tuple[tuple, list]:
    """The grid point with the best mean recall@1 over the dev questions (then recall@5, then the first)."""
    tried = []
    for w in grid:
        tops = fused_systems(answers, {"c": (names, w)})["c"]
        r = recall(tops, gold)
        tried.append(dict(weights=list(w), r1=r["r1"], r5=r["r5"]))
    best = max(range(len(tried)), key=lambda i: (tried[i]["r1"], tried[i]["r5"], -i))
    return tuple(tried[best]["weights"]), tried


def run_entries(model, cfg: dict, baselines, semantic_make, log, encoder) -> dict:
    from fwpkm_rag.data.entries import make_entries
    from fwpkm_rag.tokenizer import get_tokenizer

    entries = make_entries(cfg["n_entries"])
    chunks = [e.text for e in entries]
    tok = get_tokenizer()
    n_tokens = sum(len(tok.encode(c)) for c in chunks)
    log(f"entries: {len(entries)} ({n_tokens:,} tokens), dev {sum(e.split == 'dev' for e in entries)}")
    sources = build_sources(chunks, model, 128, baselines, semantic_make, log, encoder)
    res: dict = dict(n_entries=len(entries), tokens=n_tokens, cost={}, dev={}, test={}, weights={})
    for split in ("dev", "test"):
        qs = [(e, t) for e in entries if e.split == split for t in TASKS]
        answers = ask_all(sources, [e.question(t) for e, t in qs])
        res[f"_{split}_answers"] = (answers, [e.index for e, _ in qs], [t for _, t in qs])
        log(f"entries: {split} asked ({len(qs)} questions)")
    # weights on dev only
    answers, gold, _ = res.pop("_dev_answers")
    grid_w = [(1.0, w) for w in WORD_WEIGHTS] + [(0.0, 1.0)]
    res["weights"]["combined"], res["dev"]["grid_combined"] = choose_weights(answers, gold, (FWPKM, "word"), grid_w)
    combos = {"combined": ((FWPKM, "word"), res["weights"]["combined"])}
    if "semantic" in sources:
        grid_s = [(1.0, ww, ws) for ww in WORD_WEIGHTS for ws in SEMANTIC_WEIGHTS]
        res["weights"]["combined+semantic"], res["dev"]["grid_combined+semantic"] = choose_weights(
            answers, gold, (FWPKM, "word", "semantic"), grid_s)
        combos["combined+semantic"] = ((FWPKM, "word", "semantic"), res["weights"]["combined+semantic"])
    log(f"entries: weights chosen on dev: {res['weights']}")
    # report on test
    answers, gold, tasks = res.pop("_test_answers")
    tops = {n: [a[1] for a in answers[n]] for n in answers}
    tops.update(fused_systems(answers, combos))
    for name, t in tops.items():
        res["test"][name] = {task: recall([x for x, tt in zip(t, tasks) if tt == task],
                                          [g for g, tt in zip(gold, tasks) if tt == task]) for task in TASKS}
    for name, s in sources.items():
        secs = [a[2] for a in answers[name]]
        res["cost"][name] = dict(ingest_s=s.ingest_s, tokens_per_s=n_tokens / max(s.ingest_s, 1e-9),
                                 bytes=s.nbytes(), query_ms_p50=1000 * quantile(secs, 0.5))
    for name, (names, _) in combos.items():
        parts = [res["cost"][n] for n in names]
        ingest = sum(p["ingest_s"] for p in parts)
        res["cost"][name] = dict(ingest_s=ingest, tokens_per_s=n_tokens / ingest,
                                 bytes=sum(p["bytes"] or 0 for p in parts),
                                 query_ms_p50=sum(p["query_ms_p50"] for p in parts))
    for s in sources.values():
        s.close()
    return res


# ---- the curve: more entries in one memory ------------------------------------------------------------------
def run_scale(model, cfg: dict, weights: dict, log) -> list[dict]:
    """Recall on the test entries of collections of growing size (every entry of the bench split at most):
    the lexical store, the word layer, their fusion with the weights chosen on the main run's dev split, BM25.
    The store as a user gets it (64K-token segments: 2,400 entries are two), the word layer one memory: where a
    bounded memory starts to lose postings."""
    from fwpkm_rag.data.entries import make_entries
    from fwpkm_rag.tokenizer import get_tokenizer

    rows = []
    tok = get_tokenizer()
    bm25 = ["bm25"] if "bm25" in _available() else []
    for n in cfg["scale_entries"]:
        entries = make_entries(n)
        chunks = [e.text for e in entries]
        n_tokens = sum(len(tok.encode(c)) for c in chunks)
        sources = build_sources(chunks, model, 128, bm25, None, log, None)
        test = [(e, t) for e in entries if e.split == "test" for t in TASKS]
        answers = ask_all(sources, [e.question(t) for e, t in test])
        tops = {name: [a[1] for a in answers[name]] for name in answers}
        tops.update(fused_systems(answers, {"combined": ((FWPKM, "word"), weights["combined"])}))
        for name, t in tops.items():
            for task in TASKS:
                r = recall([x for x, (_, tt) in zip(t, test) if tt == task], [e.index for e, tt in test if tt == task])
                rows.append(dict(n_entries=n, tokens=n_tokens, system=name, task=task, **r))
        for s_ in sources.values():
            s_.close()
        log(f"scale: {n} entries ({n_tokens:,} tokens): shuffled r@1 "
            + ", ".join(f"{r['system']} {r['r1']:.1f}" for r in rows if r["n_entries"] == n and r["task"] == "shuffled"))
    return rows


def _available() -> set:
    from fwpkm_rag.benchmarks.baselines import available_baselines

    return set(available_baselines())


# ---- needles ---------------------------------------------------------------------------------------------
def needle_seed(length: int, depth: float, rep: int) -> int:
    """The item seed of the retrieval suite's needle grid (benchmarks/suite.py) at DISTRACTORS distractors, so
    both benchmarks ask the same items."""
    return 7_000_003 + 10_007 * (length % 999_983) + 101 * int(round(100 * depth)) + 13 * DISTRACTORS + rep


def run_needles(model, cfg: dict, weights: dict, baselines, semantic_make, log, encoder) -> list[dict]:
    """Every needle of each item asked (the gold one and each distractor: its 16 look-alikes are the item's
    other needles), as in `bench segments`; plus the gold needle's paraphrase. Rows say whether the needle lies
    inside one chunk (the tables count those: a needle cut by a chunk boundary has no single right chunk)."""
    from fwpkm_rag.benchmarks.segments import needle_queries
    from fwpkm_rag.data.needles import chunk_item, make_item

    rows = []
    grid = [(L, d, r) for L in cfg["needle_lengths"] for d in cfg["needle_depths"] for r in range(cfg["needle_reps"])]
    combos = {"combined": ((FWPKM, "word"), weights["combined"])}
    if "combined+semantic" in weights:
        combos["combined+semantic"] = ((FWPKM, "word", "semantic"), weights["combined+semantic"])
    for n, (L, d, r) in enumerate(grid, 1):
        item = make_item(L, d, DISTRACTORS, split="bench", seed=needle_seed(L, d, r), chunk_size=NEEDLE_CHUNK)
        ch = chunk_item(item)
        sources = build_sources(ch.chunks, model, NEEDLE_CHUNK, baselines, semantic_make, log, encoder)
        queries = [(q, gold, "exact", is_gold) for q, gold, is_gold in needle_queries(item, ch)]
        queries.append((item.paraphrase, set(ch.gold_chunks), "paraphrase", True))
        answers = ask_all(sources, [q for q, *_ in queries])
        tops = {name: [a[1] for a in answers[name]] for name in answers}
        tops.update(fused_systems(answers, combos))
        for name, t in tops.items():
            for top, (_, gold, task, is_gold) in zip(t, queries):
                rank = rank_of(top, gold)
                rows.append(dict(length_req=L, length=item.length, depth=d, rep=r, template=item.template,
                                 n_chunks=len(ch.chunks), system=name, task=task, gold_needle=is_gold,
                                 one_chunk=len(gold) == 1, rank=rank, hit1=rank == 1,
                                 hit5=rank is not None and rank <= 5))
        for s in sources.values():
            s.close()
        mine = [x for x in rows if x["length_req"] == L and x["depth"] == d and x["rep"] == r
                and x["task"] == "exact" and x["one_chunk"]]
        log(f"needles {n}/{len(grid)}: {L} tokens, depth {d}: exact hit@1 "
            + ", ".join(f"{s_} {sum(x['hit1'] for x in mine if x['system'] == s_)}/"
                        f"{sum(x['system'] == s_ for x in mine)}" for s_ in tops))
    return rows


# ---- the run ---------------------------------------------------------------------------------------------
def run_addressing_bench(out_dir: str = "results/addressing", quick: bool = False, threads: int = 1,
                         model_path: Optional[str] = None, overrides: Optional[dict] = None, model=None,
                         baselines: Sequence[str] = BASELINE_NAMES, semantic: bool = True) -> dict:
    """Run the entries task and the needles; write addressing.json / addressing.md to out_dir; return the
    results. ``model``: a MemoryLM to use instead of loading one (tests); ``baselines``: a subset of
    BASELINE_NAMES (the ones whose libraries are missing are skipped and named in the results); ``semantic``:
    False leaves part B's layer out."""
    import torch

    from fwpkm_rag.benchmarks.baselines import MiniLMEncoder, available_baselines

    wall0 = time.perf_counter()
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = dict(QUICK if quick else FULL)
    cfg.update(overrides or {})

    log = run_logger(wall0)
    model, model_desc, _ = model_for_run(model, model_path)
    avail = set(available_baselines())
    skipped = {b: "library not installed" for b in baselines if b not in avail}
    baselines = [b for b in baselines if b in avail]
    encoder = MiniLMEncoder.shared() if any(b != "bm25" for b in baselines) else None
    semantic_make, why = semantic_factory() if semantic else (None, "left out (semantic=False)")
    if why:
        skipped["semantic"] = skipped["combined+semantic"] = why
    log(f"baselines {baselines}; skipped {skipped}; model {model_desc}")
    res: dict = dict(meta=dict(machine=machine(threads), commit=commit(), python=sys.version.split()[0],
                               torch=torch.__version__, quick=quick, model=model_desc, skipped=skipped,
                               config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                               distractors=DISTRACTORS, candidates=CANDIDATES, needle_chunk=NEEDLE_CHUNK,
                               command=" ".join(sys.argv)))
    res["entries"] = run_entries(model, cfg, baselines, semantic_make, log, encoder)
    res["needles"] = run_needles(model, cfg, res["entries"]["weights"], baselines, semantic_make, log, encoder)
    res["scale"] = run_scale(model, cfg, res["entries"]["weights"], log)
    res["meta"]["wall_s"] = time.perf_counter() - wall0
    write_final(out_dir, "addressing", res, report)
    log(f"wall time {time.perf_counter() - wall0:.0f} s")
    return res


def _systems_of(res: dict) -> list[str]:
    order = [FWPKM, "word", "combined", STORE_WORDS, "semantic", "combined+semantic", *BASELINE_NAMES]
    have = set(res["entries"]["test"])
    return [s for s in order if s in have]


def report(res: dict) -> str:
    """Markdown tables: the entries task (test split), needles, cost."""
    e = res["entries"]
    systems = _systems_of(res)
    lines = [f"Machine: {res['meta']['machine']}; commit {res['meta']['commit']}; model: {res['meta']['model']}; "
             f"quick={res['meta']['quick']}. Skipped: {res['meta']['skipped'] or 'none'}.", "",
             f"Entries: {e['n_entries']} ({e['tokens']:,} tokens); recall on the test split "
             f"({e['test'][FWPKM]['verbatim']['n']} entries, each asked 3 ways); weights chosen on dev: "
             + "; ".join(f"{k} {v}" for k, v in e["weights"].items()), "",
             "| system | verbatim r@1 | r@5 | shuffled r@1 | r@5 | reordered r@1 | r@5 |",
             "|---|---|---|---|---|---|---|"]
    for s in systems:
        t = e["test"][s]
        lines.append(f"| {s} | " + " | ".join(f"{t[k]['r1']:.1f} | {t[k]['r5']:.1f}" for k in TASKS) + " |")
    rows = [r for r in res["needles"] if r["one_chunk"]]
    lengths = sorted({r["length_req"] for r in rows})
    n_q = {L: len([r for r in rows if r["system"] == FWPKM and r["task"] == "exact" and r["length_req"] == L])
           for L in lengths}
    lines += ["", f"Needles ({DISTRACTORS} distractors sharing the template; every needle inside one chunk asked; "
              "hit@1 / hit@5 %; questions per length: " + ", ".join(f"{L // 1024}K {n_q[L]}" for L in lengths)
              + "; paraphrase: the gold needle's)", "",
              "| system | " + " | ".join(f"{L // 1024}K exact" for L in lengths) + " | all exact | paraphrase |",
              "|---|" + "---|" * (len(lengths) + 2)]

    def cell(rr):
        return f"{100 * mean([r['hit1'] for r in rr], 0):.1f} / {100 * mean([r['hit5'] for r in rr], 0):.1f}"

    for s in systems:
        mine = [r for r in rows if r["system"] == s]
        cells = [cell([r for r in mine if r["task"] == "exact" and r["length_req"] == L]) for L in lengths]
        cells.append(cell([r for r in mine if r["task"] == "exact"]))
        cells.append(cell([r for r in mine if r["task"] == "paraphrase"]))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if res.get("scale"):
        sizes = sorted({(r["n_entries"], r["tokens"]) for r in res["scale"]})
        lines += ["", "More entries in one memory (test split; recall@1 / recall@5 %, shuffled | reordered)", "",
                  "| system | " + " | ".join(f"{n} entries ({t // 1000}K tokens)" for n, t in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for s_ in [x for x in (FWPKM, "word", "combined", STORE_WORDS, "bm25")
                   if any(r["system"] == x for r in res["scale"])]:
            cells = []
            for n, _ in sizes:
                by = {r["task"]: r for r in res["scale"] if r["system"] == s_ and r["n_entries"] == n}
                cells.append(f"{by['shuffled']['r1']:.1f} / {by['shuffled']['r5']:.1f} | "
                             f"{by['reordered']['r1']:.1f} / {by['reordered']['r5']:.1f}".replace(" | ", " ; "))
            lines.append(f"| {s_} | " + " | ".join(cells) + " |")
    lines += ["", f"Cost on the entries collection ({e['tokens']:,} tokens; contended machine)", "",
              "| system | ingest tokens/s | index bytes | query p50 ms |", "|---|---|---|---|"]
    for s in systems:
        c = e["cost"].get(s)
        if c:
            b = f"{c['bytes'] / 1e6:.1f} MB" if c["bytes"] else "n/a"
            lines.append(f"| {s} | {c['tokens_per_s']:,.0f} | {b} | {c['query_ms_p50']:.1f} |")
    return "\n".join(lines)
