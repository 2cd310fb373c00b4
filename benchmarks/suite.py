"""`fwpkm-rag bench retrieval`: FwPKM retrieval against vector-database RAG and BM25, side by side (issue 7).

Parts (``parts=``; the CLI's ``bench answers|capacity|cost`` run one part each):

* ``needles``  — hit@1/@5 of the gold chunk over RULER-style items (fwpkm_rag.data.needles, bench split):
  haystack length x depth x same-template distractor needles, every system on the same ``chunk_size``-token
  chunks. The question in the fact's own wording ("exact") and its paraphrase are scored separately.
* ``answers``  — exact-match answers: generation from FwPKM memory vs SmolLM2 reading each retriever's top
  chunks at an equal token budget, the memory-frozen ablation, an oracle and a closed-book floor
  (benchmarks/answers.py).
* ``capacity`` — facts stored vs recall relative to N/k: the bare memory curve of ``benchmarks.memory.capacity_recall``
  at the model's own FwPKM config, and retrieval hit@1 when F near-duplicate facts (one template, differing in
  key and value) are each one chunk.
* ``paraphrase`` — recall@1/@5 of the gold chunk when the question shares no content word with its fact
  (synonyms, definitions, reordered clauses) and trap sentences reuse the question's words
  (benchmarks/paraphrase.py; writes paraphrase.json/.md/.png besides the suite's files).
* ``cost``     — ingest tokens/s, query latency p50/p95 (query encoding included), resident index bytes
  (documents excluded for every system) vs corpus size, model load times, and the crossover corpus size where
  FwPKM's index becomes smaller than FAISS flat's. Each cost corpus holds many needles, so FwPKM's hit@5 is
  measured at every size as well.

Outputs in ``out_dir``: suite.json (every row + metadata), suite.md (tables; a baseline that wins is named),
and PNGs (benchmarks/plots.py). Everything is measured in one process, one machine, one run.
"""
from __future__ import annotations

import os
import random
import sys
import time
from typing import Optional, Sequence

from fwpkm_rag.benchmarks import paraphrase
from fwpkm_rag.benchmarks.common import (commit, klabel, machine, mean, percent, quantile, rank_of, run_logger,
                                         write_final, write_json)
from fwpkm_rag.benchmarks.systems import DEFAULT_SYSTEMS, FWPKM, SystemSet, close_all, model_for_run

PARTS = ("needles", "answers", "capacity", "paraphrase", "cost")

FULL = dict(
    lengths=(1024, 4096, 16384, 32768, 65536, 131072),
    depths=(0.1, 0.5, 0.9),
    distractors=(0, 4, 16, 64),
    per_cell=1,
    answer_lengths=(1024, 4096, 16384),
    answer_depths=(0.1, 0.5, 0.9),
    answer_distractors=(0, 16),
    capacity_loads=(0.125, 0.5, 1, 2, 4),
    capacity_queries=200,
    cost_sizes=(10_000, 30_000, 100_000, 300_000, 1_000_000),
    cost_queries=64,
    inmemory_max_chunks=128,  # InMemoryVectorStore re-embeds; its ranking equals FAISS flat's (exact cosine)
    scaling_depths=(0.5,),
    scaling_distractors=(16, 64),
    **paraphrase.DEFAULTS_FULL,
)
QUICK = dict(
    lengths=(1024, 4096, 8192),
    depths=(0.25, 0.75),
    distractors=(0, 16),
    per_cell=1,
    answer_lengths=(1024,),
    answer_depths=(0.5,),
    answer_distractors=(0, 4),
    capacity_loads=(0.25, 1),
    capacity_queries=50,
    cost_sizes=(10_000, 30_000),
    cost_queries=16,
    inmemory_max_chunks=64,
    scaling_depths=(0.5,),
    scaling_distractors=(16,),
    **paraphrase.DEFAULTS_QUICK,
)
SCALING_LENGTH = 1_048_576


# ----------------------------------------------------------------------------------------------------------
# needle retrieval
# ----------------------------------------------------------------------------------------------------------
def _seed(L: int, d: float, nd: int, r: int) -> int:
    return 7_000_003 + 10_007 * (L % 999_983) + 101 * int(round(100 * d)) + 13 * nd + r


def run_needles(sset: SystemSet, cfg: dict, chunk_size: int, k: int, log) -> list[dict]:
    from fwpkm_rag.data.needles import chunk_item, make_item

    rows = []
    # 1M-token haystacks (--scaling) take minutes per system on 2 cores: one depth, the hard distractor counts
    grid = [(L, d, nd, r) for L in cfg["lengths"]
            for d in (cfg["scaling_depths"] if L >= SCALING_LENGTH else cfg["depths"])
            for nd in (cfg["scaling_distractors"] if L >= SCALING_LENGTH else cfg["distractors"])
            for r in range(cfg["per_cell"])]
    for n, (L, d, nd, r) in enumerate(grid, 1):
        start = time.perf_counter()
        item = make_item(L, d, nd, split="bench", seed=_seed(L, d, nd, r), chunk_size=chunk_size)
        ch = chunk_item(item)
        gold = set(ch.gold_chunks)
        distractor_chunks = {i for cs in ch.distractor_chunks for i in cs} - gold
        built = sset.build(ch.chunks)
        for name, b in built.items():
            for task, q in (("exact", item.question), ("paraphrase", item.paraphrase)):
                t0 = time.perf_counter()
                hits = [i for i, _ in b.system.search(q, k)]
                ms = 1000 * (time.perf_counter() - t0)
                rank = rank_of(hits, gold)
                rows.append(dict(length_req=L, length=item.length, depth=d, actual_depth=item.actual_depth,
                                 distractors=nd, rep=r, template=item.template, n_chunks=len(ch.chunks),
                                 system=name, task=task, rank=rank, hit1=rank == 1, hit5=rank is not None and rank <= 5,
                                 top1_distractor=bool(hits) and hits[0] in distractor_chunks, query_ms=ms,
                                 ingest_s=b.ingest_s))
        close_all(built)
        log(f"needles {n}/{len(grid)}: {L} tokens, depth {d}, {nd} distractors, {len(ch.chunks)} chunks, "
            f"{time.perf_counter() - start:.1f} s; hit@5 exact: "
            + ", ".join(f"{r_['system']}={'y' if r_['hit5'] else 'n'}" for r_ in rows[-2 * len(built)::2]))
    return rows


def _lengths_of(rows) -> list[int]:
    return sorted({r["length_req"] for r in rows})


def needles_tables(rows: list[dict], systems: list[str]) -> str:
    if not rows:
        return ""
    lengths = _lengths_of(rows)
    dists = sorted({r["distractors"] for r in rows})
    out = []
    for task in ("exact", "paraphrase"):
        title = ("question in the fact's own wording" if task == "exact"
                 else "PARAPHRASED question (shares only the key with the fact)")
        out.append(f"\n#### Needle retrieval, {title}: hit@5 (hit@1) of the gold chunk, mean over depths\n")
        out.append("| system | distractors | " + " | ".join(klabel(L) for L in lengths) + " | all |")
        out.append("|---|---:|" + "---:|" * (len(lengths) + 1))
        for nd in dists:
            for s in systems:
                cells = []
                for L in lengths:
                    sel = [r for r in rows if r["task"] == task and r["system"] == s and r["distractors"] == nd
                           and r["length_req"] == L]
                    cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})" if sel else "–")
                sel = [r for r in rows if r["task"] == task and r["system"] == s and r["distractors"] == nd]
                cells.append(f"{percent(r['hit5'] for r in sel)} ({percent(r['hit1'] for r in sel)})" if sel else "–")
                out.append(f"| {s} | {nd} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(_winners(rows, task, systems))
    return "\n".join(out)


def _winners(rows, task, systems) -> str:
    """Who is best overall on a task, in words (a baseline that wins is named as the winner)."""
    scores = {}
    for s in systems:
        sel = [r for r in rows if r["task"] == task and r["system"] == s]
        if sel:
            scores[s] = (mean(r["hit5"] for r in sel), mean(r["hit1"] for r in sel))
    if not scores:
        return ""
    best5 = max(v[0] for v in scores.values())
    best1 = max(v[1] for v in scores.values())
    w5 = [s for s, v in scores.items() if v[0] == best5]
    w1 = [s for s, v in scores.items() if v[1] == best1]
    fw = scores.get(FWPKM)
    line = (f"Best hit@5 on the {task} task over all cells: {', '.join(w5)} ({100 * best5:.0f}%); best hit@1: "
            f"{', '.join(w1)} ({100 * best1:.0f}%).")
    if fw is not None:
        line += f" FwPKM: hit@5 {100 * fw[0]:.0f}%, hit@1 {100 * fw[1]:.0f}%."
        if FWPKM not in w5:
            line += f" **A baseline wins this task: {', '.join(w5)}.**"
    return line


def needle_targets(rows) -> str:
    """Issue 7's first target: FwPKM hit@5 >= MiniLM+FAISS flat's at >= 16 distractors, at every length."""
    lines = ["| length | FwPKM hit@5 (≥16 distractors) | MiniLM+FAISS flat hit@5 | FwPKM ≥ FAISS? |",
             "|---:|---:|---:|---|"]
    ok_all = True
    any_row = False
    for L in _lengths_of(rows):
        sel = lambda s: [r["hit5"] for r in rows if r["task"] == "exact" and r["system"] == s  # noqa: E731
                         and r["length_req"] == L and r["distractors"] >= 16]
        a, b = sel(FWPKM), sel("minilm-faiss-flat")
        if not a or not b:
            continue
        any_row = True
        ok = mean(a) >= mean(b)
        ok_all &= ok
        lines.append(f"| {klabel(L)} | {percent(a)} (n={len(a)}) | {percent(b)} (n={len(b)}) | {'yes' if ok else '**no**'} |")
    if not any_row:
        return ""
    lines.append(f"\nTarget (FwPKM ≥ FAISS flat at every length, ≥ 16 distractors): {'met' if ok_all else '**not met**'}.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# answers
# ----------------------------------------------------------------------------------------------------------
def run_answers(sset: SystemSet, model, cfg: dict, chunk_size: int, budget: int, use_reader: bool, log) -> dict:
    from fwpkm_rag.data.needles import chunk_item, make_item
    from fwpkm_rag.benchmarks.answers import READER_SYSTEMS, Reader, answer_item, reader_status

    reader, reader_note, reader_load = None, None, None
    if use_reader:
        reader_note = reader_status()
        if reader_note is None:
            try:
                reader = Reader()
                reader_load = reader.load_s
            except Exception as exc:  # reported, not hidden: the table says the reader did not run
                reader_note = f"reader failed to load: {type(exc).__name__}: {exc}"
    else:
        reader_note = "reader disabled (--no-reader)"
    tok = model.get_tokenizer()
    rows = []
    grid = [(L, d, nd) for L in cfg["answer_lengths"] for d in cfg["answer_depths"] for nd in cfg["answer_distractors"]]
    for n, (L, d, nd) in enumerate(grid, 1):
        start = time.perf_counter()
        item = make_item(L, d, nd, split="bench", seed=_seed(L, d, nd, 0) + 17, chunk_size=chunk_size)
        ch = chunk_item(item)
        built = sset.build(ch.chunks, only=tuple(READER_SYSTEMS) + tuple(sset.extra)) if reader is not None else {}
        rows += answer_item(item, ch, built, model, tok, reader, budget=budget, chunk_size=chunk_size)
        close_all(built)
        log(f"answers {n}/{len(grid)}: {L} tokens, depth {d}, {nd} distractors, {time.perf_counter() - start:.1f} s")
    return dict(rows=rows, reader_note=reader_note, reader_load_s=reader_load, budget_tokens=budget)


def answers_table(ans: dict) -> str:
    rows = ans["rows"]
    if not rows:
        return ""
    buckets = sorted({_bucket(r["length"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = [f"\n#### Needle answering: exact match (context budget for the reader: {ans['budget_tokens']} tokens)\n",
           "| method | " + " | ".join(klabel(b) for b in buckets) + " | all | gold chunk in context |",
           "|---|" + "---:|" * (len(buckets) + 2)]
    for m in methods:
        sel = [r for r in rows if r["method"] == m]
        cells = [percent(r["correct"] for r in sel if _bucket(r["length"]) == b) for b in buckets]
        gic = [r["gold_in_context"] for r in sel if r["gold_in_context"] is not None]
        out.append(f"| {m} | " + " | ".join(cells) + f" | {percent(r['correct'] for r in sel)} | "
                   f"{percent(gic) if gic else '–'} |")
    if ans.get("reader_note"):
        out.append(f"\nReader NOT run: {ans['reader_note']}.")
    return "\n".join(out)


def _bucket(length: int) -> int:
    """The requested power-of-two length an item was made for (actual counts differ by a few tokens)."""
    import math

    return 2 ** round(math.log2(max(length, 1)))


# ----------------------------------------------------------------------------------------------------------
# capacity
# ----------------------------------------------------------------------------------------------------------
def run_capacity(sset: SystemSet, model, cfg: dict, log) -> dict:
    from fwpkm_rag.data.needles import make_facts
    from fwpkm_rag.benchmarks.memory import capacity_recall

    fcfg = model.config.fwpkm_config
    nk = fcfg.n_slots // fcfg.topk
    bare = []
    for load in cfg["capacity_loads"]:
        r = capacity_recall(fcfg, max(1, int(load * nk)), passes=1)
        bare.append(dict(facts=r.facts, load=r.load, recall=r.recall, clean=r.clean, mean_cosine=r.mean_cosine))
    log(f"capacity: bare memory curve done (N={fcfg.n_slots}, k={fcfg.topk}, N/k={nk})")
    systems = [s for s in (FWPKM, "bm25", "minilm-faiss-flat") if s in sset.names]
    tok = model.get_tokenizer()
    retr = []
    for load in cfg["capacity_loads"]:
        F = max(2, int(load * nk))
        facts = make_facts(F, split="bench", seed=4242, template="locker")
        chunks = [f.text for f in facts]
        tokens = sum(len(tok.encode(c)) + 1 for c in chunks)  # + the eos between documents in the stream
        rng = random.Random(F)
        asked = rng.sample(range(F), min(F, cfg["capacity_queries"]))
        built = sset.build(chunks, only=systems)
        for name, b in built.items():
            hit1 = [b.system.search(facts[i].question, 1)[0][0] == i for i in asked]
            retr.append(dict(system=name, facts=F, load=F / nk, tokens=tokens, token_load=tokens / nk,
                             hit1=sum(hit1) / len(hit1), queries=len(hit1)))
        close_all(built)
        log(f"capacity: {F} facts ({tokens} tokens): " + ", ".join(
            f"{r['system']} {100 * r['hit1']:.0f}%" for r in retr[-len(built):]))
    return dict(n_slots=fcfg.n_slots, topk=fcfg.topk, n_over_k=nk, bare=bare, retrieval=retr)


def capacity_table(cap: dict) -> str:
    if not cap:
        return ""
    nk = cap["n_over_k"]
    out = [f"\n#### Capacity (the model's memory: N = {cap['n_slots']:,} slots, top-{cap['topk']}, N/k = {nk:,})\n",
           "Bare memory (`benchmarks.memory.capacity_recall`, synthetic keys → values, one pass):\n",
           "| facts | × N/k | recall (nearest value is own) | cosine ≥ 0.9 |", "|---:|---:|---:|---:|"]
    out += [f"| {b['facts']:,} | {b['load']:.3g} | {100 * b['recall']:.1f}% | {100 * b['clean']:.1f}% |"
            for b in cap["bare"]]
    systems = list(dict.fromkeys(r["system"] for r in cap["retrieval"]))
    facts = sorted({r["facts"] for r in cap["retrieval"]})
    out += ["", "Retrieval of one near-duplicate fact among F (one template, each fact one chunk; hit@1 of its "
            "chunk for its question; tokens written / (N/k) in brackets):\n",
            "| system | " + " | ".join(f"{F:,} facts (× {F / nk:.3g}; tok × {_tl(cap, F):.3g})" for F in facts) + " |",
            "|---|" + "---:|" * len(facts)]
    for s in systems:
        cells = []
        for F in facts:
            sel = [r for r in cap["retrieval"] if r["system"] == s and r["facts"] == F]
            cells.append(f"{100 * sel[0]['hit1']:.0f}%" if sel else "–")
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _tl(cap, F):
    return next(r["token_load"] for r in cap["retrieval"] if r["facts"] == F)


# ----------------------------------------------------------------------------------------------------------
# cost
# ----------------------------------------------------------------------------------------------------------
def run_cost(sset: SystemSet, cfg: dict, chunk_size: int, k: int, log) -> list[dict]:
    from fwpkm_rag.data.needles import chunk_item, make_item, templates_for

    rows = []
    for size in cfg["cost_sizes"]:
        start = time.perf_counter()
        n_needles = max(4, min(64, size // 500))
        item = make_item(size, 0.5, n_needles - 1, split="bench", seed=99_000 + size // 1000, chunk_size=chunk_size)
        ch = chunk_item(item)
        tmpl = next(t for t in templates_for("bench") if t.name == item.template)
        queries = [(item.question, set(ch.gold_chunks))]
        queries += [(tmpl.question.format(key=key), set(cs)) for key, cs in zip(item.distractor_keys, ch.distractor_chunks)]
        queries = queries[: cfg["cost_queries"]]
        gen_s = time.perf_counter() - start
        built = sset.build(ch.chunks)
        for name, b in built.items():
            b.system.search(queries[0][0], k)  # warm-up: first-call allocations are not query latency
            lat, hits = [], []
            for q, gold in queries:
                t0 = time.perf_counter()
                res = b.system.search(q, k)
                lat.append(1000 * (time.perf_counter() - t0))
                hits.append(bool(gold & {i for i, _ in res}))
            rows.append(dict(system=name, tokens=item.length, size_req=size, chunks=len(ch.chunks),
                             ingest_s=b.ingest_s, ingest_tok_s=item.length / b.ingest_s, nbytes=int(b.system.nbytes()),
                             p50_ms=quantile(lat, 0.5), p95_ms=quantile(lat, 0.95), queries=len(lat),
                             needle_hit5=sum(hits) / len(hits)))
        close_all(built)
        log(f"cost {size:,} tokens ({len(ch.chunks)} chunks, corpus made in {gen_s:.1f} s): " + ", ".join(
            f"{r['system']} {r['ingest_tok_s']:,.0f} tok/s {r['nbytes'] / 2**20:.2f} MiB p50 {r['p50_ms']:.1f} ms"
            for r in rows[-len(built):]))
    return rows


def crossover(cost: list[dict], a: str = FWPKM, b: str = "minilm-faiss-flat") -> dict:
    """Corpus size (tokens) where index a's bytes fall below b's, from a line through each system's two
    largest measured sizes; 'measured' when it lies inside the measured range, else 'extrapolated'."""
    ra = sorted((r["tokens"], r["nbytes"]) for r in cost if r["system"] == a)
    rb = sorted((r["tokens"], r["nbytes"]) for r in cost if r["system"] == b)
    if len(ra) < 2 or len(rb) < 2:
        return {}
    for (ta, ba), (tb, bb) in zip(ra, rb):
        if ba <= bb:
            return dict(tokens=ta, kind="measured (first measured size where it is smaller)", a=a, b=b)

    def line(pts):
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        slope = (y1 - y0) / (x1 - x0)
        return y1 - slope * x1, slope

    ia, sa = line(ra)
    ib, sb = line(rb)
    if sb <= sa:
        # FwPKM's memory stores only the value rows rewritten so far (SparseValues), so its index grows until
        # every slot has been rewritten once and is flat after that; small corpora sit on the growing part.
        return dict(tokens=None, kind="not reached: between the two largest sizes FwPKM's index still grew faster "
                    "than FAISS flat's (its memory keeps only rewritten value rows, so it grows until every slot "
                    "is rewritten, then stays flat)", a=a, b=b)
    x = (ia - ib) / (sb - sa)
    return dict(tokens=x, kind="extrapolated beyond the measured sizes", a=a, b=b,
                a_bytes_per_token=sa, b_bytes_per_token=sb, a_intercept=ia)


def cost_tables(cost: list[dict], loads: dict) -> str:
    if not cost:
        return ""
    systems = list(dict.fromkeys(r["system"] for r in cost))
    sizes = sorted({r["size_req"] for r in cost})
    out = ["\n#### Cost vs corpus size (ingest includes MiniLM encoding for dense systems; latency includes query "
           "encoding; index bytes exclude documents)\n",
           "| system | tokens | chunks | ingest tokens/s | index MiB | query p50 ms | query p95 ms | needle hit@5 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size in sizes:
        for s in systems:
            r = next((r for r in cost if r["system"] == s and r["size_req"] == size), None)
            if r:
                out.append(f"| {s} | {r['tokens']:,} | {r['chunks']:,} | {r['ingest_tok_s']:,.0f} | "
                           f"{r['nbytes'] / 2**20:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                           f"{100 * r['needle_hit5']:.0f}% ({r['queries']}) |")
    out.append("\n" + "; ".join(f"{k}: {v:.1f} s" for k, v in loads.items() if v is not None) + " (load times)")
    out.append("\n" + ratios_text(cost))
    return "\n".join(out)


def ratios_text(cost: list[dict]) -> str:
    """The cost targets of issue 7, each as a ratio measured in this run."""
    big = max(r["size_req"] for r in cost)
    g = lambda s, size=big: next((r for r in cost if r["system"] == s and r["size_req"] == size), None)  # noqa: E731
    fw, ff = g(FWPKM), g("minilm-faiss-flat")
    lines = ["| target (issue 7) | measured in this run | met? |", "|---|---|---|"]
    if fw and ff:
        ratio = fw["ingest_tok_s"] / ff["ingest_tok_s"]
        lines.append(f"| ingest tokens/s ≥ 3× MiniLM + FAISS flat | {ratio:.2f}× at {fw['tokens']:,} tokens "
                     f"({fw['ingest_tok_s']:,.0f} vs {ff['ingest_tok_s']:,.0f}) | {'yes' if ratio >= 3 else '**no**'} |")
        lq = fw["p50_ms"] / ff["p50_ms"]
        lines.append(f"| query p50 ≤ MiniLM + FAISS flat's at 1M tokens | {lq:.2f}× at {fw['tokens']:,} tokens "
                     f"({fw['p50_ms']:.1f} vs {ff['p50_ms']:.1f} ms){'' if big >= 1_000_000 else ' — 1M not run'} | "
                     f"{'yes' if lq <= 1 else '**no**'} |")
        br = fw["nbytes"] / ff["nbytes"]
        lines.append(f"| index bytes flat while FAISS flat grows | FwPKM / FAISS flat = {br:.2f}× at "
                     f"{fw['tokens']:,} tokens ({fw['nbytes'] / 2**20:.2f} vs {ff['nbytes'] / 2**20:.2f} MiB) | "
                     f"{'smaller' if br < 1 else '**larger**'} |")
    co = crossover(cost)
    if co:
        if co.get("tokens") is None:
            lines.append(f"| crossover corpus size | {co['kind']} | **no** |")
        else:
            hit = fw["needle_hit5"] if fw else None
            measured = co["kind"].startswith("measured")
            lines.append(f"| crossover corpus size (FwPKM index < FAISS flat) | ≈ {co['tokens']:,.0f} tokens, "
                         f"{co['kind']} | {'yes' if measured else 'not reached in the measured range'} |")
            if hit is not None:
                lines.append(f"| FwPKM needle hit@5 at the crossover (≥ 95%) | "
                             f"{100 * hit:.0f}% at {fw['tokens']:,} tokens (largest size run"
                             f"{'' if measured else '; the crossover itself was not run'}) | "
                             f"{'yes' if hit >= 0.95 else '**no**'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------
# Systems named on the command line that put FwPKM on a pretrained backbone (docs/backbone.md): name -> backbone.
BACKBONE_SYSTEMS = {"fwpkm-smollm2": "smollm2"}


def backbone_system(name: str, chunk_size: int):
    """A SystemSet factory for FwPKM attached to the named offline backbone (untrained FwPKM weights,
    calibrated; the defaults of AttachedFwPKMModel.from_backbone)."""
    from fwpkm_rag import AttachedFwPKMModel
    from fwpkm_rag.benchmarks.systems import fwpkm_factory

    return fwpkm_factory(AttachedFwPKMModel.from_backbone(BACKBONE_SYSTEMS[name]), chunk_size)


def run_suite(parts: Sequence[str] = PARTS, out_dir: str = "results/retrieval", quick: bool = False,
              scaling: bool = False, threads: int = 1, model=None, model_path: Optional[str] = None,
              systems: Optional[Sequence[str]] = None, chunk_size: int = 256, k: int = 5, budget: int = 512,
              use_reader: bool = True, plots: bool = True, overrides: Optional[dict] = None,
              lengths: Optional[Sequence[int]] = None, extra_systems: Optional[dict] = None) -> dict:
    """Run the chosen parts; write suite.json, suite.md and plots to out_dir; return the results dict.

    ``extra_systems`` adds systems by name: {name: factory returning a fresh empty system}, e.g.
    ``{"fwpkm-smollm2": systems.fwpkm_factory(model, chunk_size)}`` (see ``SystemSet.extra``)."""
    import torch

    wall0 = time.perf_counter()
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from {PARTS}")
    cfg = dict(QUICK if quick else FULL)
    if scaling:
        cfg["lengths"] = tuple(cfg["lengths"]) + (SCALING_LENGTH,)
    if lengths:
        cfg["lengths"] = tuple(lengths)
        cfg["paraphrase_lengths"] = tuple(lengths)
    cfg.update(overrides or {})
    os.makedirs(out_dir, exist_ok=True)

    log = run_logger(wall0)
    loads: dict = {}
    model, model_desc, load_s = model_for_run(model, model_path)
    if load_s is not None:
        loads["FwPKM model load"] = load_s
    n_params = sum(p.numel() for p in model.parameters())
    if any(s.startswith("minilm") for s in (systems or DEFAULT_SYSTEMS)):
        from fwpkm_rag.benchmarks.baselines import MiniLMEncoder

        t0 = time.perf_counter()
        MiniLMEncoder.shared()
        loads["MiniLM load"] = time.perf_counter() - t0
    extra_systems = dict(extra_systems or {})
    for name in systems or ():
        if name in BACKBONE_SYSTEMS and name not in extra_systems:
            t0 = time.perf_counter()
            extra_systems[name] = backbone_system(name, chunk_size)
            loads[f"{name} load"] = time.perf_counter() - t0
    sset = SystemSet(systems or DEFAULT_SYSTEMS, model=model, chunk_size=chunk_size, inmemory_max_chunks=cfg["inmemory_max_chunks"],
                     encoder=None, extra=extra_systems)
    log(f"systems: {sset.names} (skipped: {sset.skipped}); model: {model_desc}")
    res: dict = dict(meta=dict(machine=machine(threads), commit=commit(), python=sys.version.split()[0],
                               torch=torch.__version__, quick=quick, scaling=scaling, parts=list(parts),
                               chunk_size=chunk_size, k=k, model=model_desc, model_parameters=n_params,
                               systems=sset.names, skipped=sset.skipped, config={k_: list(v) if isinstance(v, tuple) else v
                                                                                 for k_, v in cfg.items()},
                               command=" ".join(sys.argv)))
    part_s = {}

    def save_partial() -> None:  # a crash late in a long run must not lose the parts already measured
        res["meta"]["part_wall_s"] = part_s
        write_json(out_dir, "suite.partial.json", res, indent=1)

    if "needles" in parts:
        t0 = time.perf_counter()
        res["needles"] = run_needles(sset, cfg, chunk_size, k, log)
        part_s["needles"] = time.perf_counter() - t0
        save_partial()
    if "answers" in parts:
        t0 = time.perf_counter()
        res["answers"] = run_answers(sset, model, cfg, chunk_size, budget, use_reader, log)
        if res["answers"].get("reader_load_s") is not None:
            loads["SmolLM2 reader load"] = res["answers"]["reader_load_s"]
        part_s["answers"] = time.perf_counter() - t0
        save_partial()
    if "capacity" in parts:
        t0 = time.perf_counter()
        res["capacity"] = run_capacity(sset, model, cfg, log)
        part_s["capacity"] = time.perf_counter() - t0
        save_partial()
    if "paraphrase" in parts:
        t0 = time.perf_counter()
        res["paraphrase"] = paraphrase.run_paraphrase(sset, cfg, k, log)
        part_s["paraphrase"] = time.perf_counter() - t0
        for p in paraphrase.write_outputs(res["paraphrase"], res["meta"], out_dir, plots=plots):
            log(f"paraphrase: {p}")
        save_partial()
    if "cost" in parts:
        t0 = time.perf_counter()
        res["cost"] = run_cost(sset, cfg, chunk_size, k, log)
        res["crossover"] = crossover(res["cost"])
        part_s["cost"] = time.perf_counter() - t0
        save_partial()
    res["meta"]["load_s"] = loads
    res["meta"]["part_wall_s"] = part_s
    res["meta"]["wall_s"] = time.perf_counter() - wall0
    write_final(out_dir, "suite", res, report)
    if plots:
        from fwpkm_rag.benchmarks.plots import plot_all

        for p in plot_all(res, out_dir):
            log(f"plot: {p}")
    log(f"wall time {time.perf_counter() - wall0:.0f} s")
    return res


def report(res: dict) -> str:
    m = res["meta"]
    systems = m["systems"]
    head = [f"### FwPKM retrieval vs vector-database RAG ({'quick' if m['quick'] else 'full'} run)\n",
            f"- machine: {m['machine']}", f"- commit: {m['commit']}", f"- command: `{m['command']}`",
            f"- FwPKM model: {m['model']} ({m['model_parameters']:,} parameters)",
            f"- systems: {', '.join(systems)}" + (f"; skipped: {m['skipped']}" if m["skipped"] else ""),
            f"- chunks: {m['chunk_size']} tokens; k = {m['k']}; wall time {m['wall_s']:.0f} s "
            f"({', '.join(f'{k} {v:.0f} s' for k, v in m['part_wall_s'].items())})"]
    parts = ["\n".join(head)]
    if res.get("needles"):
        if "minilm-inmemory" in systems:
            parts.append(f"\nminilm-inmemory (langchain_core InMemoryVectorStore) re-embeds every chunk itself, so it "
                         f"runs only on items of ≤ {m['config']['inmemory_max_chunks']} chunks; its ranking is exact "
                         "cosine, the same as FAISS flat's.")
        parts.append(needles_tables(res["needles"], systems))
        parts.append("\n" + needle_targets(res["needles"]))
    if res.get("answers"):
        parts.append(answers_table(res["answers"]))
    if res.get("capacity"):
        parts.append(capacity_table(res["capacity"]))
    if res.get("paraphrase"):
        parts.append(paraphrase.paraphrase_table(res["paraphrase"], systems))
    if res.get("cost"):
        parts.append(cost_tables(res["cost"], m["load_s"]))
    return "\n".join(p for p in parts if p)
