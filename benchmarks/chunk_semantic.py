"""The chunk-level semantic layer (pipelines/chunk_semantic.py) measured: dev sweep, sub-key fitting, paraphrase
task and needles, alone and fused with the lexical store (issue 17, part B).

    python -m fwpkm_rag.benchmarks.chunk_semantic embed              # MiniLM embeddings of the training pairs (cached)
    python -m fwpkm_rag.benchmarks.chunk_semantic fit [--heads H --n-keys N]   # k-means sub-keys -> fwpkm_rag/data
    python -m fwpkm_rag.benchmarks.chunk_semantic dev [--grid]       # dev recall@5 of the layer vs flat MiniLM
    python -m fwpkm_rag.benchmarks.chunk_semantic bench              # paraphrase 2K/8K/32K + 128K needles
    python -m fwpkm_rag.benchmarks.chunk_semantic cost               # ingest, bytes per token, query time

Dev (never a test item): the 372 dev queries of the training pairs (fwpkm_rag/data/semantic_pairs.jsonl.gz,
benchmarks/semantic_train.py), each ranked among all 3,825 pair passages (train and dev: discrimination at
scale, the measure on which the token-level layer fell to 19%) and among the 372 dev passages; the same
ranking by flat MiniLM (exact cosine of the same embeddings) shows what the quantisation loses. Sub-keys are
fitted on the *train* pairs' passages and queries only (k-means of each half, `fit`).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fwpkm_rag.benchmarks.semantic_fusion import StoreWithSettings
from fwpkm_rag.errors import ConfigError

CACHE = Path(os.environ.get("FWPKM_RAG_CACHE", Path.home() / ".cache" / "fwpkm-rag")) / "chunk_semantic"


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---- dev data -----------------------------------------------------------------------------------------------------
def pair_embeddings(encoder=None) -> dict:
    """MiniLM embeddings of the training pairs, cached by the pairs file's hash: 'query' (P, 384), 'passage'
    (P, 384), 'sentence' (S, 384) of every passage's sentences and 'sentence_owner' (S,) their passage rows, and
    'split' (P,) 1 for dev."""
    from fwpkm_rag.benchmarks.semantic_train import PAIRS, load_pairs
    from fwpkm_rag.pipelines.chunk_semantic import SentenceEncoder, split_sentences

    key = hashlib.sha256(PAIRS.read_bytes()).hexdigest()[:16]
    path = CACHE / f"pairs_{key}.npz"
    if path.exists():
        return dict(np.load(path))
    pairs = load_pairs()
    enc = encoder or SentenceEncoder.shared()
    start = time.perf_counter()
    sents, owner = [], []
    for i, p in enumerate(pairs):
        s = split_sentences(p["passage"])
        sents += s
        owner += [i] * len(s)
    out = dict(query=enc.encode([p["query"] for p in pairs]), passage=enc.encode([p["passage"] for p in pairs]),
               sentence=enc.encode(sents), sentence_owner=np.asarray(owner, dtype=np.int64),
               split=np.asarray([p["split"] == "dev" for p in pairs], dtype=np.int64))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    _log(f"embedded {len(pairs)} pairs and {len(sents)} sentences in {time.perf_counter() - start:.0f} s -> {path}")
    return out


def haystack_set(encoder=None, n_filler: int = 1000, chunk_size: int = 128, seed: int = 0) -> dict:
    """A dev set shaped like the paraphrase task, from training text only (cached): every dev pair's sentence (the
    one its query was mined for) put at a random sentence boundary of its own chunk of train-split haystack prose
    (`chunk_size` tokens), among `n_filler` more chunks of that prose; the dev query must find its chunk. The
    fact is one sentence among ~5 in a chunk, as in the paraphrase task, and nothing comes from the bench split."""
    import random

    from fwpkm_rag.benchmarks.semantic_train import PAIRS, load_pairs
    from fwpkm_rag.data.corpora import haystack
    from fwpkm_rag.data.needles import chunk_text
    from fwpkm_rag.pipelines.chunk_semantic import SentenceEncoder, split_sentences

    key = hashlib.sha256(PAIRS.read_bytes() + f"{n_filler},{chunk_size},{seed}".encode()).hexdigest()[:16]
    path = CACHE / f"haystack_{key}.npz"
    if path.exists():
        return dict(np.load(path))
    pairs = load_pairs(split="dev")
    n = len(pairs) + n_filler
    text = haystack(int(n * chunk_size * 1.05) + 64, seed=seed + 77, split="train")
    chunks = [c.text for c in chunk_text(text, chunk_size)][:n]
    if len(chunks) < n:
        raise ConfigError(f"the train haystack gave {len(chunks)} chunks, {n} needed")
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    gold = order[: len(pairs)]  # chunk of each dev pair
    for p, g in zip(pairs, gold):
        sents = split_sentences(chunks[g])
        at = rng.randint(0, len(sents))
        chunks[g] = " ".join(sents[:at] + [p["sentence"]] + sents[at:])
    enc = encoder or SentenceEncoder.shared()
    start = time.perf_counter()
    sents, owner = [], []
    for i, c in enumerate(chunks):
        ss = split_sentences(c) or [c]
        sents += ss
        owner += [i] * len(ss)
    out = dict(query=enc.encode([p["query"] for p in pairs]), chunk=enc.encode(chunks), sentence=enc.encode(sents),
               sentence_owner=np.asarray(owner, dtype=np.int64), gold=np.asarray(gold, dtype=np.int64))
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    _log(f"haystack dev set: {n} chunks, {len(sents)} sentences, embedded in {time.perf_counter() - start:.0f} s")
    return out


def dev_sets(emb: dict) -> dict:
    """The dev sets by name, each {query, chunk, sentence, sentence_owner, gold}: 'pairs' (the 372 dev queries among
    all 3,825 pair passages), 'pairs-dev' (among the 372 dev passages), 'haystack' (`haystack_set`)."""
    dev = np.nonzero(emb["split"])[0]
    out = {"pairs": dict(query=emb["query"][dev], chunk=emb["passage"], sentence=emb["sentence"],
                         sentence_owner=emb["sentence_owner"], gold=dev)}
    sel = np.isin(emb["sentence_owner"], dev)
    out["pairs-dev"] = dict(query=emb["query"][dev], chunk=emb["passage"][dev], sentence=emb["sentence"][sel],
                            sentence_owner=np.searchsorted(dev, emb["sentence_owner"][sel]),
                            gold=np.arange(len(dev)))
    out["haystack"] = haystack_set()
    return out


def recall(ranked: list[list[int]], gold, k: int) -> float:
    return sum(int(g) in r[:k] for r, g in zip(ranked, gold)) / max(len(gold), 1)


def dev_eval(config, ds: dict, keys=None, k: int = 5) -> dict:
    """Recall@1 / @k of each query's gold chunk, ranked by the layer among the set's chunks."""
    from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticLayer

    layer = ChunkSemanticLayer(config, encoder=False, keys=keys)
    n = len(ds["chunk"])
    if config.unit == "chunk":
        layer.add_embeddings(ds["chunk"], list(range(n)))
    else:
        layer.add_embeddings(ds["sentence"], ds["sentence_owner"].tolist(), n_chunks=n)
    slots, weights = layer.address(ds["query"])
    ranked, misses = [], 0
    for i in range(len(ds["query"])):
        ids, s = layer.score_tensors("", address=(slots[i], weights[i]))
        order = sorted(range(ids.numel()), key=lambda j: (-float(s[j]), int(ids[j])))[:k]
        ranked.append([int(ids[j]) for j in order])
        misses += ids.numel() == 0
    return {"recall@1": round(recall(ranked, ds["gold"], 1), 4), f"recall@{k}": round(recall(ranked, ds["gold"], k), 4),
            "no_candidate": misses, "nbytes": layer.nbytes(), "pool": n}


def flat_eval(ds: dict, unit: str = "chunk", k: int = 5) -> dict:
    """Flat MiniLM over the same chunks: exact cosine (unit "sentence": a chunk's best sentence)."""
    q = torch.from_numpy(ds["query"])
    n = len(ds["chunk"])
    if unit == "chunk":
        sims = q @ torch.from_numpy(ds["chunk"]).T  # (Q, C)
    else:
        s = q @ torch.from_numpy(ds["sentence"]).T  # (Q, S)
        col = torch.from_numpy(ds["sentence_owner"])
        sims = torch.full((len(q), n), -2.0).scatter_reduce(1, col[None].expand_as(s), s, "amax")
    ranked = sims.topk(k, dim=1).indices.tolist()
    return {"recall@1": round(recall(ranked, ds["gold"], 1), 4), f"recall@{k}": round(recall(ranked, ds["gold"], k), 4)}


def fit_embeddings(emb: dict) -> torch.Tensor:
    """What the k-means sub-keys are fitted on: the train pairs' passages and queries (never a dev pair's)."""
    train = emb["split"] == 0
    return torch.from_numpy(np.concatenate([emb["passage"][train], emb["query"][train]]))


def keys_for(config, emb: dict, cache: dict):
    """Sub-keys for `config`: random (None: the layer seeds them) or k-means fitted on the train pairs (memoised by
    heads, n_keys and seed)."""
    from fwpkm_rag.pipelines.chunk_semantic import fit_keys

    if config.keys == "random":
        return None
    key = (config.heads, config.n_keys, config.seed)
    if key not in cache:
        start = time.perf_counter()
        cache[key] = fit_keys(fit_embeddings(emb), config)
        _log(f"k-means keys {key}: {time.perf_counter() - start:.0f} s")
    return cache[key]


GRID = dict(heads=(1, 2, 4, 8), topk=(4, 8, 16), n_keys=(32, 64, 128, 256), keys=("random", "kmeans"))


def sweep(emb: dict, sets: dict, grid: dict, base: dict, out: Path | None = None) -> list[dict]:
    """Dev recall for every combination of `grid` (on top of `base` config fields)."""
    from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticConfig

    names = list(grid)
    rows, cache = [], {}
    default = ChunkSemanticConfig()
    for values in itertools.product(*(grid[n] for n in names)):
        fields = {**base, **dict(zip(names, values))}
        if fields.get("topk", default.topk) > fields.get("n_keys", default.n_keys):  # not a valid config
            continue
        cfg = ChunkSemanticConfig(**fields)
        start = time.perf_counter()
        keys = keys_for(cfg, emb, cache)
        row = dict(fields)
        for name, ds in sets.items():
            r = dev_eval(cfg, ds, keys)
            row[name] = [r["recall@5"], r["recall@1"]]
        row.update(nbytes=r["nbytes"], seconds=round(time.perf_counter() - start, 1))
        rows.append(row)
        _log(json.dumps(row))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(rows, indent=1))
    return rows


# ---- systems for the paraphrase task and the needles ------------------------------------------------------------
LEXICAL_DEPTH = 50  # the lexical store's candidate depth in the fusion (docs/addressing.md)
WEIGHT_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # chunk-semantic weight (lexical 1, word layer 8)


class CachedEncoder:
    """MiniLM sentence embeddings with a bounded cache by text: several layer configs over the same chunks in one
    run embed them once (the first system's ingest time holds the encoding, the others' do not)."""

    def __init__(self, max_texts: int = 20000):
        from fwpkm_rag.pipelines.chunk_semantic import SentenceEncoder

        self.inner = SentenceEncoder.shared()
        self.cache: dict = {}
        self.max_texts = max_texts

    def encode(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, v in zip(missing, self.inner.encode(missing)):
                self.cache[t] = v
        out = np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)
        while len(self.cache) > self.max_texts:
            self.cache.pop(next(iter(self.cache)))
        return out


class FlatSentences:
    """Flat MiniLM over a chunk's sentences: a chunk scores its best sentence's exact cosine (the reference of the
    layer's sentence unit: what its quantisation loses)."""

    name = "minilm-flat-sentences"

    def __init__(self, encoder):
        self.encoder = encoder
        self.emb, self.owner, self.n = [], [], 0

    def add(self, chunks):
        from fwpkm_rag.pipelines.chunk_semantic import split_sentences

        for c in chunks:
            s = split_sentences(c) or [c]
            self.emb.append(self.encoder.encode(s))
            self.owner += [self.n] * len(s)
            self.n += 1

    def search(self, query, k=5):
        e = torch.from_numpy(np.concatenate(self.emb))
        sims = e @ torch.from_numpy(self.encoder.encode([query])[0])
        best = torch.full((self.n,), -2.0).scatter_reduce(0, torch.as_tensor(self.owner), sims, "amax")
        top = best.topk(min(k, self.n))
        return [(int(i), float(v)) for v, i in zip(top.values, top.indices)]

    def nbytes(self):
        return sum(e.nbytes for e in self.emb)


class ChunkSemanticSystem:
    """The layer alone, with the suite's add / search / nbytes."""

    name = "chunk-semantic"

    def __init__(self, config, keys=None, encoder=None):
        from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticLayer

        self.layer = ChunkSemanticLayer(config, encoder=encoder, keys=keys)
        self.n = 0

    def add(self, chunks):
        chunks = list(chunks)
        self.layer.add(chunks, list(range(self.n, self.n + len(chunks))))
        self.n += len(chunks)

    def search(self, query, k=5):
        return self.layer.search(query, k)

    def nbytes(self):
        return self.layer.nbytes()


class FusedSystem:
    """The store's sources in one ranking (docs/addressing.md): the lexical store (its top LEXICAL_DEPTH, weight 1),
    the word layer (the store's `word_topk` and `word_weight`) and the chunk semantic layer (weight `weight`); each
    source's scores divided by their maximum for the question. One segment's worth of the store's own fusion: the
    word layer is a standalone `WordLayer` over the same chunks. `share`: systems built one after another over the
    same chunks read the first one's sources (their ingest time is then ~0)."""

    def __init__(self, model, chunk_size: int, weight: float, config, keys=None, share: dict | None = None,
                 encoder=None):
        self.model, self.chunk_size, self.weight, self.config, self.keys = model, chunk_size, weight, config, keys
        self.share, self.encoder = share, encoder
        self.owner = None
        self.chunks: list = []

    def add(self, chunks):
        from fwpkm_rag.benchmarks.systems import FwPKMSystem
        from fwpkm_rag.pipelines.settings import DEFAULT_WORD_TOPK
        from fwpkm_rag.pipelines.word_layer import WordLayer

        chunks = list(chunks)
        if self.chunks:
            raise ConfigError("FusedSystem takes its chunks in one add call")
        other = (self.share or {}).get("latest")
        if other is not None and other.chunks == chunks:
            self.owner = other
        else:
            self.lexical = FwPKMSystem(self.model, chunk_size=self.chunk_size)
            self.lexical.add(chunks)
            self.words = WordLayer(topk=DEFAULT_WORD_TOPK)
            self.words.add(chunks, list(range(len(chunks))))
            self.semantic = ChunkSemanticSystem(self.config, self.keys, self.encoder)
            self.semantic.add(chunks)
            self.owner = self
            if self.share is not None:
                self.share["latest"] = self
        self.chunks = chunks

    def sources(self, query) -> tuple[dict, dict, dict]:
        o = self.owner
        lex = {i: s for i, s in o.lexical.search(query, LEXICAL_DEPTH) if s > 0}
        return lex, o.words.scores(query), o.semantic.layer.scores(query)

    def search(self, query, k=5):
        from fwpkm_rag.benchmarks.semantic import fuse
        from fwpkm_rag.pipelines.settings import DEFAULT_WORD_WEIGHT

        lex, words, sem = self.sources(query)
        return fuse([(1.0, lex), (DEFAULT_WORD_WEIGHT, words), (self.weight, sem)], len(self.chunks), k)

    def nbytes(self):
        o = self.owner
        return o.lexical.nbytes() + o.words.nbytes() + o.semantic.nbytes()

    def close(self):
        if self.owner is self:
            self.lexical.close()
            if self.share is not None and self.share.get("latest") is self:
                self.share.pop("latest")


class StoreSystem(StoreWithSettings):
    """The store itself with the layer (`FwPKMStore(semantic_layer=True)`: the word layer on as by default, one
    ranking over the three sources), with the suite's add / search / nbytes; its chunks are the benchmark's (chunk
    tokens twice the benchmark's size, as the suite's FwPKMSystem). Embeds with its own MiniLM (no cache)."""

    name = "store+semantic"

    def __init__(self, model, chunk_size: int, weight: float):
        super().__init__(model, chunk_size, semantic_layer=True, semantic_weight=weight)


def choose_weight(model, config, keys, chunk_size: int = 256, needle_lengths=(32768, 131072), log=_log,
                  encoder=None) -> dict:
    """The chunk-semantic weight of the fusion, on dev data only: the 372 dev pairs (recall@5 of the query's own
    passage among the dev passages) and one train-split needle item per length with 16 distractors (hit@1). The
    chosen w maximises dev-pair recall@5 among the weights whose needle hit@1 equals the store's without the
    layer (w = 0); ties: the smaller w."""
    from fwpkm_rag.benchmarks.semantic import fuse
    from fwpkm_rag.benchmarks.semantic_train import load_pairs
    from fwpkm_rag.data.needles import chunk_item, make_item
    from fwpkm_rag.pipelines.settings import DEFAULT_WORD_WEIGHT

    pairs = load_pairs(split="dev")
    s = FusedSystem(model, chunk_size, 0.0, config, keys, encoder=encoder)
    s.add([p["passage"] for p in pairs])
    pair_src = [s.sources(p["query"]) for p in pairs]
    s.close()
    needle_src = []
    for r, L in enumerate(needle_lengths):
        start = time.perf_counter()
        item = make_item(L, 0.5, 16, split="train", seed=910_001 + r, chunk_size=chunk_size)
        ch = chunk_item(item)
        s = FusedSystem(model, chunk_size, 0.0, config, keys, encoder=encoder)
        s.add(ch.chunks)
        needle_src.append((s.sources(item.question), set(ch.gold_chunks), len(ch.chunks)))
        s.close()
        log(f"dev needle {L}: {time.perf_counter() - start:.0f} s")
    grid = []
    for w in WEIGHT_GRID:
        parts = lambda src: [(1.0, src[0]), (DEFAULT_WORD_WEIGHT, src[1]), (w, src[2])]  # noqa: E731
        r5 = sum(i in [c for c, _ in fuse(parts(src), len(pairs), 5)] for i, src in enumerate(pair_src)) / len(pairs)
        h1 = [fuse(parts(src), n, 1)[0][0] in gold for src, gold, n in needle_src]
        grid.append(dict(weight=w, dev_pairs_recall5=round(r5, 4), dev_needles_hit1=sum(h1), needles=len(h1)))
        log(json.dumps(grid[-1]))
    base = grid[0]["dev_needles_hit1"]
    ok = [g for g in grid if g["dev_needles_hit1"] >= base]
    best = max(ok, key=lambda g: (g["dev_pairs_recall5"], -g["weight"]))
    return dict(weight=best["weight"], grid=grid)


def bench(config, keys=None, out_dir: str = "results/chunk_semantic", paraphrase_lengths=(2048, 8192, 32768),
          paraphrase_items: int = 4, needle_lengths=(131072,), weight: float | None = None,
          systems=("bm25", "minilm-faiss-flat"), fused: bool = True, alone: dict | None = None,
          needle_depths=(0.5,), store: bool = False) -> dict:
    """The paraphrase task (its default seeds) and needles with 16 distractors (depth 0.5, bench split): the layer
    alone, flat MiniLM, BM25 and the fused store (lexical + word + chunk semantic, weight chosen on dev)."""
    from fwpkm_rag.benchmarks import paraphrase
    from fwpkm_rag.benchmarks.common import commit, machine, write_json, write_text
    from fwpkm_rag.benchmarks.suite import needles_tables, run_needles
    from fwpkm_rag.benchmarks.systems import SystemSet, load_model_described

    start = time.perf_counter()
    model, desc, _ = load_model_described() if fused else (None, "", None)
    meta = dict(machine=machine(), commit=commit(), threads=torch.get_num_threads(), model=desc,
                config=dataclasses_asdict(config), command="python -m fwpkm_rag.benchmarks.chunk_semantic "
                + " ".join(sys.argv[1:]), load_average=os.getloadavg()[0])
    chosen = None
    if fused and weight is None:
        chosen = choose_weight(model, config, keys, encoder=CachedEncoder())
        weight = chosen["weight"]
    _log(f"fused weight {weight}")
    share: dict = {}
    size = [paraphrase.DEFAULTS_FULL["paraphrase_chunk_size"]]
    cached = CachedEncoder()  # the layer alone embeds first (its ingest time holds the encoding); later systems reuse
    extra = {"chunk-semantic": lambda: ChunkSemanticSystem(config, keys, cached)}
    if alone:  # more layer configs, alone, sharing one embedding cache: {name: (config, keys)}
        extra = {name: (lambda c=c, k=k: ChunkSemanticSystem(c, k, cached)) for name, (c, k) in alone.items()}
    if fused:
        extra["fused (lexical+word+chunk-semantic)"] = lambda: FusedSystem(model, size[0], weight, config, keys, share,
                                                                           cached)
        extra["fused without chunk-semantic"] = lambda: FusedSystem(model, size[0], 0.0, config, keys, share, cached)
    extra["minilm-flat-sentences"] = lambda: FlatSentences(cached)
    if store:  # the store's own fusion (its defaults: the config must be ChunkSemanticConfig()'s)
        extra["store+semantic"] = lambda: StoreSystem(model, size[0], weight)
    sset = SystemSet(list(systems), model=model, chunk_size=size[0], extra=extra)
    cfg = dict(paraphrase.DEFAULTS_FULL, paraphrase_lengths=tuple(paraphrase_lengths), paraphrase_items=paraphrase_items)
    par = paraphrase.run_paraphrase(sset, cfg, 5, _log)
    names = list(systems) + list(extra)
    md = [f"### Chunk semantic layer: paraphrase and needles", "", f"- machine: {meta['machine']}; load average "
          f"at the start {meta['load_average']:.1f}", f"- commit: {meta['commit']}", f"- command: `{meta['command']}`",
          f"- config: {json.dumps(meta['config'])}", f"- fused weight: {weight} (dev grid: "
          f"{json.dumps(chosen['grid']) if chosen else 'given'})", paraphrase.paraphrase_table(par, names)]
    result = dict(meta=meta, weight=weight, chosen=chosen, paraphrase=par)
    if needle_lengths:
        size[0] = 256
        nset = SystemSet(["bm25"], model=model, chunk_size=256, extra=extra)
        ncfg = dict(lengths=tuple(needle_lengths), depths=tuple(needle_depths), distractors=(16,), per_cell=1,
                    scaling_depths=(0.5,), scaling_distractors=(16,))
        rows = run_needles(nset, ncfg, 256, 5, _log)
        result["needles"] = rows
        md.append(needles_tables(rows, ["bm25", *extra]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out_dir, "chunk_semantic.json", result, indent=1)
    write_text(out_dir, "chunk_semantic.md", "\n".join(md) + "\n")
    _log(f"done in {result['seconds']} s: {out_dir}/chunk_semantic.md")
    return result


def cost(n_tokens: int = 65536, chunk_size: int = 256, seed: int = 5, config=None) -> dict:
    """The layer's ingest time, entries and bytes per corpus token (open and sealed) on a train-split haystack, and
    its mean query time over 5 questions (the MiniLM forward included)."""
    from fwpkm_rag.data.corpora import haystack
    from fwpkm_rag.data.needles import chunk_text
    from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticLayer, split_sentences

    chunks = [c.text for c in chunk_text(haystack(n_tokens, seed=seed, split="train"), chunk_size)]
    layer = ChunkSemanticLayer(config)
    layer.encoder.encode(["warm up"])
    start = time.perf_counter()
    layer.add(chunks, list(range(len(chunks))))
    ingest = time.perf_counter() - start
    sealed = layer.compacted()
    questions = ["What did the committee decide about the budget?", "How is the file opened for reading?",
                 "Which module handles dates?", "Why was the bridge closed?", "Who wrote the first draft?"]
    start = time.perf_counter()
    for q in questions:
        layer.scores(q)
    return dict(tokens=n_tokens, chunks=len(chunks), sentences=sum(len(split_sentences(c)) for c in chunks),
                ingest_s=round(ingest, 1), tokens_per_s=round(n_tokens / ingest), entries=layer.table.n_entries,
                bytes_open=layer.nbytes(), bytes_sealed=sealed.nbytes(),
                bytes_per_token_open=round(layer.nbytes() / n_tokens, 2),
                bytes_per_token_sealed=round(sealed.nbytes() / n_tokens, 2),
                query_ms=round(1000 * (time.perf_counter() - start) / len(questions), 1))


def dataclasses_asdict(config) -> dict:
    import dataclasses

    return dataclasses.asdict(config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fwpkm_rag.benchmarks.chunk_semantic",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("embed", help="MiniLM embeddings of the training pairs (cached)")
    d = sub.add_parser("dev", help="dev recall of a config grid vs flat MiniLM")
    d.add_argument("--grid", default=None, help="JSON {field: [values]} (default: the module's GRID)")
    d.add_argument("--base", default="{}", help="JSON config fields under the grid")
    d.add_argument("--out", default="results/chunk_semantic/dev.json")
    f = sub.add_parser("fit", help="k-means sub-keys on the train pairs -> fwpkm_rag/data")
    f.add_argument("--config", default="{}", help="JSON config fields (heads, n_keys, seed, ...)")
    f.add_argument("--out", default=None, help="default: fwpkm_rag/data/chunk_semantic_keys.safetensors")
    b = sub.add_parser("bench", help="paraphrase task + needles, alone and fused")
    b.add_argument("--config", default="{}", help="JSON config fields")
    b.add_argument("--keys", default=None, help="sub-keys file (default: default_keys_path() when keys = kmeans; 'fit': "
                   "fitted now on the train pairs, not saved)")
    b.add_argument("--out", default="results/chunk_semantic")
    b.add_argument("--paraphrase-lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    b.add_argument("--paraphrase-items", type=int, default=4)
    b.add_argument("--needle-lengths", type=int, nargs="*", default=[131072])
    b.add_argument("--needle-depths", type=float, nargs="+", default=[0.5])
    b.add_argument("--weight", type=float, default=None, help="fused weight (default: chosen on dev)")
    b.add_argument("--no-fused", action="store_true")
    b.add_argument("--store", action="store_true", help="also FwPKMStore(semantic_layer=True) itself (default config)")
    b.add_argument("--systems", nargs="*", default=["bm25", "minilm-faiss-flat"])
    b.add_argument("--alone", default=None, help="JSON {name: config fields}: several layer configs alone (no fused)")
    sub.add_parser("cost", help="ingest time, bytes per token and query time of the default layer (64K tokens)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    if args.cmd == "cost":
        print(json.dumps(cost()))
        return 0
    emb = pair_embeddings()
    if args.cmd == "embed":
        print(json.dumps({k: list(v.shape) for k, v in emb.items()}))
    elif args.cmd == "dev":
        sets = dev_sets(emb)
        flat = {f"{unit}/{name}": flat_eval(ds, unit) for unit in ("chunk", "sentence") for name, ds in sets.items()}
        _log("flat MiniLM", json.dumps(flat))
        grid = json.loads(args.grid) if args.grid else GRID
        rows = sweep(emb, sets, grid, json.loads(args.base), Path(args.out))
        Path(args.out).write_text(json.dumps(dict(flat=flat, rows=rows), indent=1))
    elif args.cmd == "fit":
        from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticConfig, default_keys_path, fit_keys, save_keys

        cfg = ChunkSemanticConfig(**{**json.loads(args.config), "keys": "kmeans"})
        start = time.perf_counter()
        x = fit_embeddings(emb)
        keys = fit_keys(x, cfg)
        out = Path(args.out) if args.out else default_keys_path()
        save_keys(out, keys, cfg, {"command": "python -m fwpkm_rag.benchmarks.chunk_semantic " + " ".join(
            sys.argv[1:] if argv is None else argv), "fitted_on": f"{x.shape[0]} MiniLM embeddings: the train "
            "split of fwpkm_rag/data/semantic_pairs.jsonl.gz (passages and queries)",
            "seconds": round(time.perf_counter() - start, 1)})
        _log(f"k-means sub-keys {tuple(keys.shape)} on {x.shape[0]} embeddings -> {out}")
    elif args.cmd == "bench":
        from fwpkm_rag.pipelines.chunk_semantic import ChunkSemanticConfig, load_keys

        cfg = ChunkSemanticConfig(**json.loads(args.config))
        cache: dict = {}
        keys = keys_for(cfg, emb, cache) if cfg.keys == "kmeans" and args.keys == "fit" else (
            load_keys(cfg, args.keys) if cfg.keys == "kmeans" else None)
        alone = None
        if args.alone:
            alone = {}
            for name, fields in json.loads(args.alone).items():
                c = ChunkSemanticConfig(**fields)
                alone[name] = (c, keys_for(c, emb, cache))
        bench(cfg, keys, args.out, tuple(args.paraphrase_lengths), args.paraphrase_items, tuple(args.needle_lengths),
              args.weight, tuple(args.systems), not args.no_fused and not alone, alone, tuple(args.needle_depths),
              args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
