"""The semantic layer in the benchmarks (issue 17 B): `make_addressing_layer` for `fwpkm-rag bench addressing`, and
its own run over the paraphrase task and the needles, alone and combined with the lexical store.

    python -m fwpkm_rag.benchmarks.semantic [--quick] [--weights PATH] [--out results/semantic] [--threads 1]

Systems
- ``semantic``: the layer alone (pipelines/semantic_layer.py, the shipped trained weights unless --weights).
- ``fwpkm``: the lexical store (the shipped model), as in the suite.
- ``fwpkm+semantic``: one ranking over both, as docs/addressing.md combines layers: each source's scores are
  divided by their maximum for the question (the lexical store's over its top 50), then summed with weights
  (lexical 1, semantic w). w is chosen on dev data only (``choose_weight``): the dev pairs of the shipped
  training pairs (held out from training) and needle items of the *train* split — never a test item.
- ``fwpkm+semantic-rrf``: the same two sources by reciprocal rank fusion, sum_s w_s / (60 + rank_s(c)) (lexical
  1, semantic w, w chosen on dev the same way). Score sums let the lexical store's confident top chunk (on the
  paraphrase task a trap sentence that reuses the question's words) outrank everything the semantic layer
  found; ranks cannot. ``choose_weight`` also names the fusion with the better dev-pair recall.
- ``bm25``, ``minilm-faiss-flat``: the baselines of the suite.

Tasks: the paraphrase task (benchmarks/paraphrase.py, its default lengths and items) and needles with 16
distractors at 32K and 128K tokens (the suite's needle code, bench split). Output: semantic.json / semantic.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

import torch

from fwpkm_rag.errors import ConfigError

LEXICAL_DEPTH = 50  # candidate depth of the lexical store in the combined ranking (docs/addressing.md)
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # semantic weight of the score sum (lexical 1)
RRF_K = 60.0  # the usual reciprocal-rank-fusion constant
RRF_WEIGHT_GRID = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # semantic weight of the rank fusion (lexical 1)
FUSIONS = ("sum", "rrf")
GRIDS = {"sum": WEIGHT_GRID, "rrf": RRF_WEIGHT_GRID}


# ----------------------------------------------------------------------------------------------------------
# the layer for `bench addressing`
# ----------------------------------------------------------------------------------------------------------
class CachedEncoder:
    """The frozen MiniLM token-state encoder with a bounded cache by text: systems built over the same chunks in
    one process (the layer alone and the combined store) encode them once."""

    _shared = None

    def __init__(self, max_texts: int = 4096):
        from fwpkm_rag.pipelines.semantic_layer import TokenStateEncoder

        self.inner = TokenStateEncoder()
        self.vocab_size, self.dim = self.inner.vocab_size, self.inner.dim
        self.cache: collections.OrderedDict = collections.OrderedDict()
        self.max_texts = max_texts

    @classmethod
    def shared(cls) -> "CachedEncoder":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def encode(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for t, enc in zip(missing, self.inner.encode(missing) if missing else []):
            self.cache[t] = (enc[0], enc[1].half())
            if len(self.cache) > self.max_texts:
                self.cache.popitem(last=False)
        out = []
        for t in texts:
            ids, h = self.cache[t] if t in self.cache else self.inner.encode([t])[0]
            out.append((ids, h.float()))
        return out


def make_addressing_layer(weights=None):
    """A fresh, empty semantic layer with the trained slow weights (offline): docs/addressing.md's contract."""
    from fwpkm_rag.pipelines.semantic_layer import SemanticAddressing, SemanticLayer

    return SemanticLayer(SemanticAddressing.load(weights), encoder=CachedEncoder.shared())


# ----------------------------------------------------------------------------------------------------------
# systems with the suite's add / search / nbytes
# ----------------------------------------------------------------------------------------------------------
class SemanticSystem:
    name = "semantic"

    def __init__(self, weights=None):
        self.layer = make_addressing_layer(weights)

    def add(self, chunks):
        n = len(self.layer)
        self.layer.add(list(chunks), list(range(n, n + len(chunks))))

    def search(self, query, k=5):
        return self.layer.search(query, k)

    def nbytes(self):
        return self.layer.nbytes()


def normalized(scores: dict) -> dict:
    """Scores divided by their maximum (docs/addressing.md); empty or all-zero -> {}."""
    top = max(scores.values(), default=0.0)
    return {c: s / top for c, s in scores.items() if s > 0} if top > 0 else {}


def _top(total: dict, n_chunks: int, k: int) -> list[tuple[int, float]]:
    """The k best of {chunk: fused score > 0}, ties by chunk index, padded with unscored chunks in index order."""
    ranked = sorted(((c, s) for c, s in total.items() if s > 0), key=lambda x: (-x[1], x[0]))[:k]
    seen = {c for c, _ in ranked}
    ranked += [(c, 0.0) for c in range(n_chunks) if c not in seen][: k - len(ranked)]
    return ranked


def fuse(parts: list[tuple[float, dict]], n_chunks: int, k: int) -> list[tuple[int, float]]:
    """The top k of sum_s w_s * normalized S_s; ties by chunk index; padded with unscored chunks in index order."""
    total: dict = collections.defaultdict(float)
    for w, scores in parts:
        for c, s in normalized(scores).items():
            total[c] += w * s
    return _top(total, n_chunks, k)


def ranks(scores: dict) -> dict:
    """{chunk: rank} of the chunks a source scored (> 0): 1 = its best; ties by chunk index."""
    ranked = sorted((c for c, s in scores.items() if s > 0), key=lambda c: (-scores[c], c))
    return {c: r for r, c in enumerate(ranked, 1)}


def rrf(parts: list[tuple[float, dict]], n_chunks: int, k: int, k0: float = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: the top k of sum_s w_s / (k0 + rank_s(c)) over the sources that ranked c (a source
    ranks the chunks it scored > 0; the lexical store its top LEXICAL_DEPTH). Only ranks count, not the scores'
    sizes, so one source's confident top chunk cannot outweigh the other's whole list. Ties and padding as fuse."""
    if k0 < 0:
        raise ConfigError(f"the RRF constant must be >= 0, got {k0}")
    total: dict = collections.defaultdict(float)
    for w, scores in parts:
        for c, r in ranks(scores).items():
            total[c] += w / (k0 + r)
    return _top(total, n_chunks, k)


def combine(fusion: str, parts: list[tuple[float, dict]], n_chunks: int, k: int) -> list[tuple[int, float]]:
    """One ranking of the sources by `fusion`: "sum" (weighted sum of max-normalised scores, `fuse`) or "rrf"."""
    if fusion == "sum":
        return fuse(parts, n_chunks, k)
    if fusion == "rrf":
        return rrf(parts, n_chunks, k)
    raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


class CombinedSystem:
    """The lexical store and the semantic layer in one ranking (module docstring): `fusion` "sum" (the weighted
    sum of max-normalised scores, docs/addressing.md) or "rrf" (reciprocal rank fusion), semantic weight `weight`
    (lexical 1).

    `share`: a dict shared by systems built over the same chunks one after another (the benchmark builds every
    system of an item in turn): the first combined system of an item ingests and registers itself there, a later
    one over the same chunks reads the first one's two sources instead of ingesting them again (its ingest time is
    then only the comparison of the chunks; its ranking is computed from the same sources)."""

    def __init__(self, model, chunk_size: int, weight: float, weights=None, fusion: str = "sum",
                 share: dict | None = None):
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.model, self.chunk_size, self.weights = model, chunk_size, weights
        self.weight, self.fusion, self.share = weight, fusion, share
        self.owner = None  # the system whose sources this one reads (itself when it ingested)
        self.chunks: list = []
        self.n = 0

    def add(self, chunks):
        chunks = list(chunks)
        if self.owner is None and not self.chunks and self.share is not None:
            other = self.share.get("latest")
            if other is not None and other is not self and other.chunks == chunks and other.lexical is not None:
                self.owner = other
        if self.owner is not None and self.owner is not self:
            if self.chunks or chunks != self.owner.chunks:
                raise ConfigError("a combined system that reads another's sources holds exactly its chunks")
        else:
            if self.owner is None:
                from fwpkm_rag.benchmarks.systems import FwPKMSystem

                self.lexical = FwPKMSystem(self.model, chunk_size=self.chunk_size)
                self.semantic = SemanticSystem(self.weights)
                self.owner = self
                if self.share is not None:
                    self.share["latest"] = self
            self.lexical.add(chunks)
            self.semantic.add(chunks)
        self.chunks += chunks
        self.n += len(chunks)

    lexical = semantic = None

    def sources(self, query) -> tuple[dict, dict]:
        owner = self.owner or self
        if owner.lexical is None:
            return {}, {}
        lex = {i: s for i, s in owner.lexical.search(query, LEXICAL_DEPTH) if s > 0}
        return lex, owner.semantic.layer.scores(query)

    def search(self, query, k=5):
        lex, sem = self.sources(query)
        return combine(self.fusion, [(1.0, lex), (self.weight, sem)], self.n, k)

    def nbytes(self):
        owner = self.owner or self
        return 0 if owner.lexical is None else owner.lexical.nbytes() + owner.semantic.nbytes()

    def close(self):
        if self.owner is self:
            self.lexical.close()
            if self.share is not None and self.share.get("latest") is self:
                self.share.pop("latest")


# ----------------------------------------------------------------------------------------------------------
# the fusion and its weight, on dev data only
# ----------------------------------------------------------------------------------------------------------
def choose_weight(model, chunk_size: int, weights=None, n_pairs: int | None = None, needle_items: int = 4,
                  log=print, fusions=FUSIONS) -> dict:
    """Grid-search the fusion and the semantic weight w (lexical 1) on dev data: the held-out training pairs
    (recall@5 of the query's own passage) and train-split needle items with 16 distractors (hit@1 of the gold
    chunk). For each fusion the chosen w maximises dev-pair recall@5 among the weights whose needle hit@1 is not
    below the lexical store's alone (ties: the smaller w); the chosen fusion is the one whose chosen w has the
    larger dev-pair recall@5 (ties: the first of `fusions`)."""
    from fwpkm_rag.benchmarks.semantic_train import load_pairs
    from fwpkm_rag.data.needles import chunk_item, make_item

    pairs = load_pairs(split="dev")[:n_pairs]
    sys_ = CombinedSystem(model, chunk_size, 0.0, weights)
    sys_.add([p["passage"] for p in pairs])
    pair_sources = [sys_.sources(p["query"]) for p in pairs]
    sys_.close()
    needle_sources = []
    for r in range(needle_items):
        item = make_item(32768, (0.25, 0.75)[r % 2], 16, split="train", seed=900_001 + r, chunk_size=chunk_size)
        ch = chunk_item(item)
        s = CombinedSystem(model, chunk_size, 0.0, weights)
        s.add(ch.chunks)
        needle_sources.append((s.sources(item.question), set(ch.gold_chunks), len(ch.chunks)))
        s.close()
    base = sum(combine("sum", [(1.0, lx)], n, 1)[0][0] in gold
               for (lx, _), gold, n in needle_sources) / max(len(needle_sources), 1)
    per_fusion = {}
    for fusion in fusions:
        grid = []
        for w in GRIDS[fusion]:
            r5 = sum(i in [c for c, _ in combine(fusion, [(1.0, lx), (w, sm)], len(pairs), 5)]
                     for i, (lx, sm) in enumerate(pair_sources)) / len(pairs)
            h1 = sum(combine(fusion, [(1.0, lx), (w, sm)], n, 1)[0][0] in gold
                     for (lx, sm), gold, n in needle_sources) / max(len(needle_sources), 1)
            h5 = sum(bool(gold & {c for c, _ in combine(fusion, [(1.0, lx), (w, sm)], n, 5)})
                     for (lx, sm), gold, n in needle_sources) / max(len(needle_sources), 1)
            grid.append(dict(weight=w, dev_pairs_recall5=round(r5, 4), dev_needles_hit1=h1, dev_needles_hit5=h5))
            log(f"dev {fusion} weight {w}: pairs recall@5 {r5:.3f}, needles hit@1 {h1:.2f}, hit@5 {h5:.2f}")
        ok = [g for g in grid if g["dev_needles_hit1"] >= base] or grid[:1]
        best = max(ok, key=lambda g: (g["dev_pairs_recall5"], -g["weight"]))
        per_fusion[fusion] = dict(weight=best["weight"], dev_pairs_recall5=best["dev_pairs_recall5"], grid=grid)
    fusion = max(fusions, key=lambda f: (per_fusion[f]["dev_pairs_recall5"], -fusions.index(f)))
    return dict(fusion=fusion, weight=per_fusion[fusion]["weight"], per_fusion=per_fusion,
                grid=per_fusion[fusion]["grid"], lexical_needles_hit1=base, n_pairs=len(pairs),
                needle_items=needle_items)


# ----------------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------------
def run(out_dir: str = "results/semantic", quick: bool = False, weights=None, threads: int = 1,
        needle_lengths=(32768, 131072), skip_needles: bool = False, weight: float | None = None,
        paraphrase_lengths=None, paraphrase_items=None, systems=("bm25", "minilm-faiss-flat", "fwpkm"),
        dev_needle_items: int = 4, needle_depths=(0.25, 0.75), combined: bool = True,
        rrf_weight: float | None = None) -> dict:
    from fwpkm_rag.benchmarks import paraphrase
    from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
    from fwpkm_rag.benchmarks.suite import needles_tables, run_needles
    from fwpkm_rag.benchmarks.systems import SystemSet, load_model_described
    from fwpkm_rag.pipelines.semantic_layer import SemanticAddressing

    torch.set_num_threads(threads)
    start = time.perf_counter()
    log = lambda m: print(time.strftime("%H:%M:%S"), m, file=sys.stderr, flush=True)  # noqa: E731
    model, desc, _ = load_model_described()
    meta = dict(machine=machine(), commit=commit(), threads=threads, quick=quick, model=desc,
                command="python -m fwpkm_rag.benchmarks.semantic " + " ".join(sys.argv[1:]),
                semantic_weights=str(weights or "shipped"),
                semantic_metadata=getattr(SemanticAddressing.load(weights), "metadata", {}))
    chunk_size = 256  # the suite's needle chunk size
    if combined and (weight is None or rrf_weight is None):
        chosen = choose_weight(model, chunk_size, weights, n_pairs=120 if quick else None,
                               needle_items=dev_needle_items, log=log)
    else:
        chosen = dict(fusion="sum", weight=weight, grid=[], per_fusion={}, note="given on the command line")
    w_sum = weight if weight is not None else chosen.get("per_fusion", {}).get("sum", {}).get("weight")
    w_rrf = rrf_weight if rrf_weight is not None else chosen.get("per_fusion", {}).get("rrf", {}).get("weight")
    chosen["used"] = dict(sum=w_sum, rrf=w_rrf)
    log(f"combined (dev): fusion {chosen.get('fusion')}; weights sum {w_sum}, rrf {w_rrf}")
    extra = {"semantic": lambda: SemanticSystem(weights)}
    share: dict = {}
    if combined:
        extra["fwpkm+semantic"] = lambda: CombinedSystem(model, chunk_size_now[0], w_sum, weights, "sum", share)
        extra["fwpkm+semantic-rrf"] = lambda: CombinedSystem(model, chunk_size_now[0], w_rrf, weights, "rrf", share)
    chunk_size_now = [paraphrase.DEFAULTS_FULL["paraphrase_chunk_size"]]
    names = list(systems)
    sset = SystemSet(names, model=model, chunk_size=chunk_size_now[0], extra=extra)
    cfg = dict(paraphrase.DEFAULTS_QUICK if quick else paraphrase.DEFAULTS_FULL)
    if paraphrase_lengths:
        cfg["paraphrase_lengths"] = tuple(paraphrase_lengths)
    if paraphrase_items:
        cfg["paraphrase_items"] = paraphrase_items
    par = paraphrase.run_paraphrase(sset, cfg, 5, log)
    result = dict(meta=meta, weight=chosen, paraphrase=par)
    md = [f"### Semantic layer (issue 17 B) — {'quick' if quick else 'full'} run", "",
          f"- machine: {meta['machine']}; threads {threads}; load average at the start {os.getloadavg()[0]:.1f}",
          f"- commit: {meta['commit']}", f"- command: `{meta['command']}`", f"- lexical model: {desc}",
          f"- semantic weights: {meta['semantic_weights']} ({meta['semantic_metadata'].get('command', '')})",
          f"- combined systems: fwpkm+semantic = score sum, w = {w_sum}; fwpkm+semantic-rrf = reciprocal rank "
          f"fusion (k0 = {RRF_K:g}), w = {w_rrf}; chosen on dev: {chosen.get('fusion')} "
          f"(grids: {json.dumps({f: v['grid'] for f, v in chosen.get('per_fusion', {}).items()})})",
          paraphrase.paraphrase_table(par, names + list(extra))]
    if not skip_needles:
        chunk_size_now[0] = chunk_size
        nset = SystemSet(["bm25", "fwpkm"], model=model, chunk_size=chunk_size, extra=extra)
        ncfg = dict(lengths=tuple(needle_lengths), depths=tuple(needle_depths), distractors=(16,), per_cell=1,
                    scaling_depths=(0.5,), scaling_distractors=(16,))
        rows = run_needles(nset, ncfg, chunk_size, 5, log)
        result["needles"] = rows
        md.append(needles_tables(rows, ["bm25", "fwpkm", *extra]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out_dir, "semantic.json", result, indent=1)
    write_text(out_dir, "semantic.md", "\n".join(md) + "\n")
    log(f"done in {result['seconds']} s: {out_dir}/semantic.md")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fwpkm_rag.benchmarks.semantic", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--weights", default=None, help="semantic layer weights (default: the shipped ones)")
    ap.add_argument("--out", default="results/semantic")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weight", type=float, default=None,
                    help="semantic weight of the score-sum fusion (default: chosen on dev)")
    ap.add_argument("--rrf-weight", type=float, default=None,
                    help="semantic weight of the reciprocal-rank fusion (default: chosen on dev)")
    ap.add_argument("--no-needles", action="store_true")
    ap.add_argument("--needle-lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--paraphrase-lengths", type=int, nargs="+", default=None)
    ap.add_argument("--paraphrase-items", type=int, default=None)
    ap.add_argument("--dev-needle-items", type=int, default=4, help="train-split needle items for the weight search")
    ap.add_argument("--needle-depths", type=float, nargs="+", default=[0.25, 0.75])
    ap.add_argument("--semantic-only", action="store_true", help="no combined system (and no weight search)")
    ap.add_argument("--systems", nargs="+", default=["bm25", "minilm-faiss-flat", "fwpkm"],
                    help="baselines beside semantic and fwpkm+semantic")
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    run(args.out, args.quick, args.weights, args.threads, tuple(args.needle_lengths), args.no_needles, args.weight,
        args.paraphrase_lengths, args.paraphrase_items, args.systems, args.dev_needle_items, tuple(args.needle_depths),
        not args.semantic_only, args.rrf_weight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
