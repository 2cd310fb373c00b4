"""Training the semantic addressing layer (pipelines/semantic_layer.py) for the hard top-k read (issue 17 B).

    python -m fwpkm_rag.benchmarks.semantic_train pairs        # mine the shipped pairs (once, offline)
    python -m fwpkm_rag.benchmarks.semantic_train train --objective st|distill [--steps N] [--out PATH]
           [--hard K --mine-every N --mine-depth D] [--slot-idf] [--saturation C] [--init PATH]
    python -m fwpkm_rag.benchmarks.semantic_train dev  [--weights PATH]   # among the dev / all pair passages
    python -m fwpkm_rag.benchmarks.semantic_train rescore --weights PATH --saturation C --out PATH

Training pairs (``pairs``; fwpkm_rag/data/semantic_pairs.jsonl.gz). Offline text only: sentences of the
project corpora's *train* split (fwpkm_rag.data.corpora), never the benchmark split, the paraphrase task's
concept bank or its items. Every sentence is embedded by all-MiniLM-L6-v2; a pair is (query = sentence B,
passage = sentence A with its neighbours in its paragraph) where B is A's nearest neighbour from *another
document*, MiniLM cosine >= ``min_cos``, sharing at most ``max_overlap`` content words with A — sentences that
say something alike in other words, the situation the paraphrase task tests. 10% of the pairs (by a hash of the
query) form the dev split used to pick a run and the combination weight; never the test.

Features (``features``): frozen MiniLM token states of every passage and query, cached once in
``~/.cache/fwpkm-rag/semantic/`` (fp16), so a CPU training step only runs the small projection.

Objectives (``train``), both on the in-batch provenance score
    score(Q, P) = sum_t a_t  sum_{i,j} w_t(i, j) sat(S_P(i, j)),   S_P(i, j) = sum_u g_u w_u(i, j)
with w(i, j) = p1(i) p2(j) — the product-key read over the k x k candidate grid factorizes into the two books'
softmaxes over their top-k sub-keys — a_t the question token's weight (idf x gate, normalized), g_u the
passage token's gate and sat(s) = s / (s + 0.5) (retrieval.SATURATION). The layer's real scoring then keeps the
top k of the k^2 candidates and multiplies by idf(slot)^2; the training score omits both.

    st       (a) straight-through top-k: the forward pass uses the hard top-k read exactly (entries outside a
             book's top-k are 0); the backward pass uses a full softmax over all n sub-keys at temperature tau_end,
             so sub-keys outside the top-k get a gradient towards (or away from) the question. InfoNCE over the
             batch's passages (the gold passage vs in-batch negatives).
    distill  (b) the student's score distribution over the batch's passages is fitted (KL) to MiniLM's
             sentence similarities (query vs the passage's sentence A, teacher temperature 0.05); reads are
             soft with a temperature that falls from tau_start to tau_end over the first 70% of the steps, and
             the last 30% use the straight-through hard read, so training ends at the read the layer does.

Discrimination at scale (docs/addressing.md, "At scale"): `dev` reports recall among the 372 dev passages and
among all 3,825 pair passages; `train --hard K` adds hard negatives mined by the layer itself (the real layer over
all training passages ranks them for every training query every `--mine-every` steps), `--slot-idf` weighs the
training score's slots by the layer's idf(slot)^2, `--saturation` sets the c of s / (s + c).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fwpkm_rag.data
from fwpkm_rag.errors import ConfigError

PAIRS = Path(fwpkm_rag.data.__file__).resolve().parent / "semantic_pairs.jsonl.gz"
CACHE = Path(os.environ.get("FWPKM_RAG_CACHE", Path.home() / ".cache" / "fwpkm-rag")) / "semantic"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# pairs
# ----------------------------------------------------------------------------------------------------------
def _sentences(max_sentences: int, per_doc: int, seed: int):
    """(doc name, paragraph, index of the sentence, sentences of the paragraph) over the train split."""
    from fwpkm_rag.data.corpora import iter_documents

    out = []
    for doc in iter_documents("train", seed=seed):
        taken = 0
        for par in doc.paragraphs:
            sents = [s.strip() for s in _SENT.split(par) if s.strip()]
            for i, s in enumerate(sents):
                words = s.split()
                if not 6 <= len(words) <= 35 or not s[0].isupper() or not s.endswith((".", "?", "!")):
                    continue
                if sum(w.isalpha() for w in words) < 0.7 * len(words):
                    continue  # code, numbers, tables
                out.append((f"{doc.source}:{doc.name}", sents, i))
                taken += 1
                if taken >= per_doc:
                    break
            if taken >= per_doc:
                break
        if len(out) >= max_sentences:
            break
    return out


def _passage(sents: list[str], i: int, words: int) -> str:
    """Sentence i with its neighbours (alternately after and before) up to about `words` words."""
    lo, hi = i, i + 1
    n = len(sents[i].split())
    while True:
        grown = False
        for side in ("after", "before"):
            j = hi if side == "after" else lo - 1
            if 0 <= j < len(sents) and n + len(sents[j].split()) <= words:
                n += len(sents[j].split())
                lo, hi = (lo, hi + 1) if side == "after" else (lo - 1, hi)
                grown = True
        if not grown:
            return " ".join(sents[lo:hi])


def mine_pairs(max_sentences: int = 14000, per_doc: int = 60, min_cos: float = 0.55, max_overlap: int = 1,
               passage_words: int = 80, seed: int = 0, out: Path = PAIRS) -> dict:
    """Mine (query, passage) pairs from the train split (module docstring) and write them to `out`."""
    import numpy as np

    from fwpkm_rag.data.paraphrase import content_overlap
    from fwpkm_rag.pipelines.semantic_layer import TokenStateEncoder, sentence_embedding

    start = time.perf_counter()
    sents = _sentences(max_sentences, per_doc, seed)
    _log(f"{len(sents)} sentences from {len({s[0] for s in sents})} train documents")
    enc = TokenStateEncoder()
    texts = [s[1][s[2]] for s in sents]
    emb = []
    for b in range(0, len(texts), 256):
        emb += [sentence_embedding(h) for _, h in enc.encode(texts[b:b + 256])]
        if b % 2560 == 0:
            _log(f"embedded {b + 256}/{len(texts)}")
    E = torch.stack(emb).numpy().astype(np.float32)  # (S, 384) unit norm
    docs = np.array([hash(s[0]) for s in sents])
    pairs, used = [], set()
    for a in range(len(sents)):
        sim = E @ E[a]  # (S,)
        sim[docs == docs[a]] = -1.0  # another document: not a copy of the same text's wording
        for b in np.argsort(-sim)[:5]:
            b = int(b)
            if sim[b] < min_cos:
                break
            if texts[a].lower() == texts[b].lower() or content_overlap(texts[a], texts[b]) > max_overlap:
                continue
            if (b, a) in used:
                continue
            used.add((a, b))
            doc, ss, i = sents[a]
            pairs.append(dict(query=texts[b], sentence=texts[a], passage=_passage(ss, i, passage_words),
                              cos=round(float(sim[b]), 4), source=doc, query_source=sents[b][0]))
            break
    for p in pairs:
        p["split"] = "dev" if int(hashlib.sha256(p["query"].encode()).hexdigest(), 16) % 10 == 0 else "train"
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
    info = dict(sentences=len(sents), pairs=len(pairs), dev=sum(p["split"] == "dev" for p in pairs),
                seconds=round(time.perf_counter() - start, 1), min_cos=min_cos, max_overlap=max_overlap)
    _log(f"pairs: {info}")
    return info


def load_pairs(path: Path = PAIRS, split: str | None = None) -> list[dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"no training pairs at {path}; mine them: python -m "
                                "fwpkm_rag.benchmarks.semantic_train pairs")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    return [p for p in pairs if split is None or p["split"] == split]


# ----------------------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------------------
def _key(pairs: list[dict]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update((p["query"] + "\x00" + p["passage"] + "\x00").encode())
    return h.hexdigest()[:16]


def features(pairs: list[dict], encoder=None) -> dict:
    """MiniLM token states of every pair's query and passage (fp16), and sentence vectors of the query and of
    the passage's sentence A (the distillation teacher), cached on disk by the pairs' content."""
    from fwpkm_rag.pipelines.semantic_layer import TokenStateEncoder, sentence_embedding

    path = CACHE / f"features-{_key(pairs)}.pt"
    if path.exists():
        return torch.load(path)
    enc = encoder or TokenStateEncoder()
    out = {}
    start = time.perf_counter()
    for field in ("query", "passage", "sentence"):
        texts = [p[field] for p in pairs]
        encoded = []
        for b in range(0, len(texts), 128):
            encoded += enc.encode(texts[b:b + 128])
            _log(f"features {field}: {min(b + 128, len(texts))}/{len(texts)}")
        if field == "sentence":
            out["sentence_vec"] = torch.stack([sentence_embedding(h) for _, h in encoded])
            continue
        out[f"{field}_vec"] = torch.stack([sentence_embedding(h) for _, h in encoded])
        out[field] = [(ids, h.half()) for ids, h in encoded]
    _log(f"features: {time.perf_counter() - start:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


# ----------------------------------------------------------------------------------------------------------
# the training score
# ----------------------------------------------------------------------------------------------------------
def book_probs(sub, topk: int, tau: float, mode: str):
    """Per book the read's factor over its n sub-keys, (R, H, 2, n) -> (R, H, 2, n).

    hard: softmax over the top-k sub-scores (0 elsewhere): w(i, j) = p1(i) p2(j) is exactly the read's softmax
          over the k x k candidate grid.
    soft: softmax over all n sub-scores at temperature tau.
    st:   hard in the forward pass, soft's gradient in the backward pass (straight-through).
    """
    soft = torch.softmax(sub / tau, dim=-1)
    if mode == "soft":
        return soft
    kth = sub.topk(topk, dim=-1).values[..., -1:]  # (R, H, 2, 1)
    hard = torch.softmax(sub.masked_fill(sub < kth, float("-inf")), dim=-1)
    if mode == "hard":
        return hard
    return hard + soft - soft.detach()


def batch_scores(module, q_states, p_states, q_weight, tau: float, mode: str, slot_weight=None):
    """(Bq, Bp) training score of every question against every passage of the batch (module docstring).

    q_states: list of (Tq_i, dim); p_states: list of (Tp_j, dim); q_weight: list of (Tq_i,) idf of the tokens.
    slot_weight: optional (n*n,) weight of every slot (slot i*n + j), multiplying its saturated strength, as the
    layer's idf(slot)^2 does (`train --slot-idf` takes it from the layer over all training passages).
    """

    c = module.config
    n = c.n_keys
    qh = torch.cat(q_states).float()  # (Nq, dim)
    ph = torch.cat(p_states).float()  # (Np, dim)
    qp = book_probs(module.sub_scores(qh), c.topk, tau, mode)  # (Nq, H, 2, n)
    pp = book_probs(module.sub_scores(ph), c.topk, tau, mode)  # (Np, H, 2, n)
    g = module.gates(ph)  # (Np,)
    # S_P(i, j) = sum over the passage's tokens and heads of g_u p1(i) p2(j) / H   (heads share the slots)
    # per passage P1^T diag(g) P2 as one batched matmul over passages padded to the longest (padding rows are 0)
    lengths = [len(s) for s in p_states]
    gp1 = (pp[:, :, 0] * g[:, None, None] / c.heads).flatten(0, 1)  # (Np*H, n): token-major, heads inside
    p2 = pp[:, :, 1].flatten(0, 1)  # (Np*H, n)
    split = [t * c.heads for t in lengths]
    A = torch.nn.utils.rnn.pad_sequence(list(gp1.split(split)), batch_first=True)  # (Bp, Tmax*H, n)
    B = torch.nn.utils.rnn.pad_sequence(list(p2.split(split)), batch_first=True)  # (Bp, Tmax*H, n)
    S = A.transpose(1, 2) @ B  # (Bp, n, n)
    sat = S / (S + c.saturation)
    if slot_weight is not None:
        sat = sat * slot_weight.reshape(n, n)
    a = module.gates(qh) * torch.cat(q_weight)  # (Nq,) idf x gate
    qowner = torch.repeat_interleave(torch.arange(len(q_states)), torch.tensor([len(s) for s in q_states]))
    a = a / torch.zeros(len(q_states)).index_add(0, qowner, a).clamp_min(1e-9)[qowner]  # sums to 1 per question
    # per question token: sum_h p1^T sat_b p2 / H for every passage b
    y = torch.einsum("bij,thj->tbhi", sat, qp[:, :, 1])  # (Nq, Bp, H, n)
    per_token = torch.einsum("tbhi,thi->tb", y, qp[:, :, 0]) / c.heads  # (Nq, Bp)
    return torch.zeros(len(q_states), len(p_states)).index_add(0, qowner, per_token * a[:, None])  # (Bq, Bp)


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def word_piece_idf(feats: dict, vocab_size: int) -> torch.Tensor:
    """(V,) idf of every word piece over the training passages (the layer uses the same formula over its chunks)."""
    from fwpkm_rag.pipelines.semantic_layer import idf

    df = torch.zeros(vocab_size, dtype=torch.int32)
    for ids, _ in feats["passage"]:
        df[torch.unique(ids)] += 1
    return idf(df, len(feats["passage"]))


def init_keys(module, feats: dict, rows: list[int], seed: int) -> None:
    """Sub-keys drawn from the projected halves of random passage tokens: every key starts where tokens are,
    so the first reads already spread over many keys (uniform random keys far from the data all score alike)."""
    c = module.config
    gen = torch.Generator().manual_seed(seed)
    h = torch.cat([feats["passage"][r][1] for r in rows[:256]]).float()
    with torch.no_grad():
        q = module.queries(h).reshape(-1, c.heads, 2, c.k_dim // 2)  # (N, H, 2, k/2)
        pick = torch.randint(0, q.shape[0], (c.heads, 2, c.n_keys), generator=gen)
        keys = torch.stack([torch.stack([q[pick[hh, m], hh, m] for m in range(2)]) for hh in range(c.heads)])
        module.keys.copy_(keys.reshape(-1, c.k_dim // 2) + 0.01 * torch.randn(keys.numel() // (c.k_dim // 2), c.k_dim // 2, generator=gen))


def train(objective: str, steps: int = 400, batch: int = 32, lr: float = 3e-3, seed: int = 0,
          n_keys: int = 128, heads: int = 2, k_dim: int = 64, topk: int = 8, tau_start: float = 1.0,
          tau_end: float = 0.1, teacher_tau: float = 0.05, max_pairs: int | None = None, log_every: int = 25,
          dev_every: int = 0, out: Path | None = None, command: str = "", sentences: bool = False,
          sentence_weight: float = 1.0, negatives: int = 0, init: str | None = None, hard: int = 0,
          mine_every: int = 100, mine_depth: int = 20, dev_pool: str = "all", slot_idf: bool = False,
          saturation: float = 0.5):
    """Train one addressing module with `objective` ("st" or "distill"); returns (module, history).

    hard > 0: every `mine_every` steps the current layer ranks all training passages for every training query
    (`mine_hard_negatives`, the top `mine_depth` wrong passages kept); each step then adds, per query of the batch,
    `hard` passages drawn from its mined list to the batch's passages (shared by all queries, as the in-batch
    negatives are), before the `negatives` random ones. slot_idf: the training score weighs every slot by its
    idf(slot)^2 in the layer over all training passages (refreshed at every mining), as the layer's scoring does.
    Dev recall is measured among the passages of `dev_pool`."""
    from fwpkm_rag.pipelines.retrieval import slot_idf as slot_idf_of
    from fwpkm_rag.pipelines.semantic_layer import SemanticAddressing, SemanticConfig, sentence_rows

    if objective not in ("st", "distill"):
        raise ConfigError(f"objective must be 'st' or 'distill', got {objective!r}")
    torch.manual_seed(seed)
    pairs = load_pairs()
    feats = features(pairs)
    train_rows = [i for i, p in enumerate(pairs) if p["split"] == "train"][:max_pairs]
    q_idf = word_piece_idf(feats, 30522)
    module = SemanticAddressing(SemanticConfig(k_dim=k_dim, n_keys=n_keys, heads=heads, topk=topk,
                                                       sentence_rows=sentences, sentence_weight=sentence_weight,
                                                       saturation=saturation))
    if init:  # continue from saved weights (same config)
        module.load_state_dict(SemanticAddressing.load(init).state_dict())
    else:
        init_keys(module, feats, train_rows, seed)
    # learnable logit scale (as CLIP), log-parametrized; the scores are first divided by the row's (detached)
    # maximum, since their raw size (~1e-2: small strengths in the linear part of the saturation) says nothing
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    opt = torch.optim.Adam(list(module.parameters()) + [scale], lr=lr)
    rng = random.Random(seed)
    history = []
    mined: dict = {}
    slot_weight = None
    start = time.perf_counter()
    for step in range(steps):
        if (hard or slot_idf) and step % mine_every == 0:
            t0 = time.perf_counter()
            layer = _cached_layer(module, feats, train_rows)
            if hard:
                mined = mine_hard_negatives(module, pairs, feats, train_rows, train_rows, mine_depth, layer=layer)
            if slot_idf:
                w2 = slot_idf_of(layer.table, 0).pow(2)
                slot_weight = w2 / w2.mean()
            del layer
            _log(f"step {step}: mined {mine_depth if hard else 0} hard negatives of {len(mined)} queries"
                 f"{', slot idf' if slot_idf else ''} in {time.perf_counter() - t0:.0f} s")
        frac = step / max(steps - 1, 1)
        if objective == "st":
            mode, tau = "st", tau_end
        elif frac < 0.7:  # distill: soft reads, temperature falling geometrically to tau_end
            mode, tau = "soft", tau_start * (tau_end / tau_start) ** (frac / 0.7)
        else:  # the last 30%: the hard read, straight-through
            mode, tau = "st", tau_end
        rows = rng.sample(train_rows, batch)
        q_states, q_weight = [], []
        for r in rows:
            ids, h = feats["query"][r]
            w = q_idf[ids]
            if module.config.sentence_rows:  # the layer's rows: tokens, then sentences (semantic_layer.rows)
                s = sentence_rows(ids, h.float())
                h = torch.cat([h.float(), s])
                w = torch.cat([w, torch.full((s.shape[0],), module.config.sentence_weight * float(w.mean()))])
            q_states.append(h)
            q_weight.append(w)
        # the batch's passages, then hard negatives mined by the layer and `negatives` random passages, none of
        # them an answer to any query of the batch (more to tell apart)
        p_rows = rows + batch_negatives(pairs, rows, mined, hard, negatives, train_rows, rng)
        p_states = [torch.cat([h.float(), sentence_rows(ids, h.float())]) if module.config.sentence_rows else h
                    for ids, h in (feats["passage"][r] for r in p_rows)]
        score = batch_scores(module, q_states, p_states, q_weight, tau, mode, slot_weight)  # (B, B + extra)
        logits = score / (score.detach().amax(-1, keepdim=True) + 1e-9) * scale.exp()
        if objective == "st":
            loss = F.cross_entropy(logits, torch.arange(batch))
        else:
            teacher = feats["query_vec"][rows] @ feats["sentence_vec"][p_rows].T  # (B, B + negatives) MiniLM cosine
            target = torch.softmax(teacher / teacher_tau, dim=-1)
            loss = F.kl_div(F.log_softmax(logits, dim=-1), target, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            with torch.no_grad():
                hard_score = batch_scores(module, q_states, p_states, q_weight, 1.0, "hard", slot_weight)
                acc = (hard_score.argmax(-1) == torch.arange(batch)).float().mean().item()
            row = dict(step=step, loss=round(loss.item(), 4), tau=round(tau, 3), mode=mode, batch_hard_acc=acc,
                       seconds=round(time.perf_counter() - start, 1))
            # (a continuation skips step 0's dev: it is the --init weights' own, after one update)
            if dev_every and ((step % dev_every == 0 and (step or not init)) or step == steps - 1):
                row["dev_recall5"] = dev_recall(module, pairs, feats)["recall@5"]
                if dev_pool == "all":
                    row["dev_all_recall5"] = dev_recall(module, pairs, feats, pool="all")["recall@5"]
                if out is not None and step < steps - 1:  # a checkpoint at every dev measurement
                    module.save(out, metadata=dict(checkpoint_step=step, command=command))
            history.append(row)
            _log(json.dumps(row))
    if out is not None:
        init_sha = hashlib.sha256(Path(init).read_bytes()).hexdigest() if init else ""
        module.save(out, metadata=dict(objective=objective, steps=steps, batch=batch, lr=lr, seed=seed,
                                       tau_start=tau_start, tau_end=tau_end, pairs=str(PAIRS.name), hard=hard,
                                       negatives=negatives, mine_every=mine_every, mine_depth=mine_depth,
                                       slot_idf=slot_idf, saturation=saturation, init=init or "",
                                       init_sha256=init_sha,
                                       command=command, history=json.dumps(history[-3:])))
        _log(f"saved {out}")
    return module, history


class _NoEncoder:  # the features are cached: a layer built on them never encodes
    vocab_size = 30522


def _cached_layer(module, feats: dict, rows: list[int], per_slot: int = 32):
    """The real layer (hard reads, provenance table, retrieval.score_chunks) holding the cached passages `rows`,
    each under its pair index as chunk id."""
    from fwpkm_rag.pipelines.semantic_layer import SemanticLayer

    layer = SemanticLayer(module, encoder=_NoEncoder(), per_slot=per_slot)
    layer.add_encoded([feats["passage"][r] for r in rows], rows)
    return layer


def batch_negatives(pairs: list[dict], rows: list[int], mined: dict, hard: int, negatives: int, pool: list[int],
                    rng: random.Random) -> list[int]:
    """Extra passages for a batch of queries `rows`: per query up to `hard` drawn from its mined hard negatives,
    then `negatives` random passages of `pool`; no duplicates, none in `rows`, none a positive of any batch query."""
    taken = set(rows)
    out = []

    def ok(r):
        return r not in taken and not any(is_positive(pairs, q, r) for q in rows)

    for q in rows:
        cand = [r for r in mined.get(q, []) if ok(r)]
        for r in rng.sample(cand, min(hard, len(cand))):
            taken.add(r)
            out.append(r)
    rest = [r for r in pool if ok(r)]
    for r in rng.sample(rest, min(negatives, len(rest))):
        taken.add(r)
        out.append(r)
    return out


def dev_recall(module, pairs: list[dict], feats: dict, k: int = 5, per_slot: int = 32, pool: str = "dev") -> dict:
    """Recall@1/@k of each dev query's own passage, ranked by the real layer among the passages of `pool`: "dev"
    (the dev pairs' passages) or "all" (every pair's passage, train and dev: the collapse at scale)."""
    if pool not in ("dev", "all"):
        raise ConfigError(f"pool must be 'dev' or 'all', got {pool!r}")
    rows = [i for i, p in enumerate(pairs) if p["split"] == "dev"]
    layer = _cached_layer(module, feats, rows if pool == "dev" else list(range(len(pairs))), per_slot)
    hit1 = hitk = 0
    for r in rows:
        got = [cid for cid, _ in _search_encoded(layer, feats["query"][r], k)]
        hit1 += bool(got) and got[0] == r
        hitk += r in got
    return {"recall@1": round(hit1 / len(rows), 4), f"recall@{k}": round(hitk / len(rows), 4), "n": len(rows),
            "passages": len(layer)}


def is_positive(pairs: list[dict], query_row: int, passage_row: int) -> bool:
    """Whether a passage answers a pair's query: its own passage, the same text, or another that holds its sentence
    A (passages of neighbouring sentences of one paragraph overlap)."""
    q, p = pairs[query_row], pairs[passage_row]
    return passage_row == query_row or p["passage"] == q["passage"] or q["sentence"] in p["passage"]


@torch.no_grad()
def mine_hard_negatives(module, pairs: list[dict], feats: dict, queries: list[int], pool: list[int], depth: int,
                        per_slot: int = 32, layer=None) -> dict:
    """{query row: up to `depth` passage rows of `pool`, best first}: the passages the real layer (every pool passage
    written, hard reads, retrieval.score_chunks) ranks highest (score > 0) for the query that are not its answer
    (`is_positive`). What the layer confuses the query with at the scale of the whole pool. `layer`: that layer
    already built (`_cached_layer(module, feats, pool)`)."""
    layer = _cached_layer(module, feats, pool, per_slot) if layer is None else layer
    ids = torch.tensor(layer.ids)
    mined = {}
    for q in queries:
        s = layer.score_tensor(feats["query"][q], encoded=True)
        top = torch.sort(-s, stable=True).indices[: depth + 8]
        order = ids[top[s[top] > 0]].tolist()
        mined[q] = [r for r in order if not is_positive(pairs, q, r)][:depth]
    return mined


def rescore(weights, saturation: float, out, command: str = "") -> None:
    """Write `weights` again with the scoring saturation `saturation` (SemanticConfig.saturation): the same trained
    slow weights, the layer's scores s / (s + saturation). The source's metadata is kept, each key prefixed
    "trained_" (so its training command stays), with this command and the source's sha256."""
    from fwpkm_rag.pipelines.semantic_layer import SemanticAddressing

    module = SemanticAddressing.load(weights)
    module.config.saturation = saturation
    module.config.__post_init__()  # checks the new value
    meta = {f"trained_{k}": v for k, v in module.metadata.items() if k != "config"}
    meta.update(command=command, saturation=saturation, source=str(weights),
                source_sha256=hashlib.sha256(Path(weights).read_bytes()).hexdigest())
    module.save(out, metadata=meta)
    _log(f"saved {out} (saturation {saturation})")


def _search_encoded(layer, encoded, k):
    s = layer.score_tensor(encoded, encoded=True)
    order = torch.sort(-s, stable=True).indices[:k].tolist()
    return [(layer.ids[i], float(s[i])) for i in order]


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    torch.set_num_threads(int(os.environ.get("FWPKM_THREADS", "1")))
    ap = argparse.ArgumentParser(prog="python -m fwpkm_rag.benchmarks.semantic_train", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pairs", help="mine the training pairs from the train split (once)")
    p.add_argument("--max-sentences", type=int, default=14000)
    p.add_argument("--min-cos", type=float, default=0.55)
    p.add_argument("--max-overlap", type=int, default=1)
    sub.add_parser("features", help="cache the MiniLM token states of the pairs")
    t = sub.add_parser("train", help="train the addressing for the hard read")
    t.add_argument("--objective", choices=("st", "distill"), default="st")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-keys", type=int, default=128)
    t.add_argument("--heads", type=int, default=2)
    t.add_argument("--k-dim", type=int, default=64)
    t.add_argument("--topk", type=int, default=8)
    t.add_argument("--tau-start", type=float, default=1.0)
    t.add_argument("--tau-end", type=float, default=0.1)
    t.add_argument("--dev-every", type=int, default=100)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--sentences", action="store_true", help="also a row per sentence (its mean token state)")
    t.add_argument("--sentence-weight", type=float, default=1.0)
    t.add_argument("--negatives", type=int, default=0, help="extra in-batch passages per step")
    t.add_argument("--hard", type=int, default=0, help="hard negatives per query per step, mined by the layer")
    t.add_argument("--mine-every", type=int, default=100, help="steps between two minings of hard negatives")
    t.add_argument("--mine-depth", type=int, default=20, help="wrong passages kept per query when mining")
    t.add_argument("--saturation", type=float, default=0.5,
                   help="c of the saturation s / (s + c), in the training score and in the trained layer's scores")
    t.add_argument("--slot-idf", action="store_true",
                   help="weigh slots by idf(slot)^2 of the layer over all training passages in the training score")
    t.add_argument("--dev-pool", choices=("dev", "all"), default="all",
                   help="also measure dev recall among all pair passages ('all') or only the dev ones")
    t.add_argument("--init", default=None, help="start from these weights")
    t.add_argument("--out", default=None)
    t.add_argument("--history", default=None, help="write the training curve (JSON) here")
    r = sub.add_parser("rescore", help="copy trained weights with another scoring saturation (no training)")
    r.add_argument("--weights", required=True, help="the trained weights")
    r.add_argument("--saturation", type=float, required=True)
    r.add_argument("--out", required=True)
    d = sub.add_parser("dev", help="dev recall of saved weights (the real layer, hard reads) among the dev passages "
                                   "and among all pair passages")
    d.add_argument("--weights", default=None)
    args = ap.parse_args(argv)
    if args.cmd == "pairs":
        mine_pairs(args.max_sentences, min_cos=args.min_cos, max_overlap=args.max_overlap)
    elif args.cmd == "features":
        features(load_pairs())
    elif args.cmd == "train":
        command = "python -m fwpkm_rag.benchmarks.semantic_train " + " ".join(argv if argv is not None else sys.argv[1:])
        module, history = train(args.objective, args.steps, args.batch, args.lr, args.seed, args.n_keys, args.heads,
                                args.k_dim, args.topk, args.tau_start, args.tau_end, log_every=args.log_every, dev_every=args.dev_every,
                                sentences=args.sentences, sentence_weight=args.sentence_weight,
                                negatives=args.negatives, init=args.init, hard=args.hard,
                                mine_every=args.mine_every, mine_depth=args.mine_depth, dev_pool=args.dev_pool,
                                slot_idf=args.slot_idf, saturation=args.saturation,
                                out=Path(args.out) if args.out else None, command=command)
        if args.history:
            Path(args.history).write_text(json.dumps(history, indent=1))
    elif args.cmd == "rescore":
        command = "python -m fwpkm_rag.benchmarks.semantic_train " + " ".join(argv if argv is not None else sys.argv[1:])
        rescore(args.weights, args.saturation, args.out, command)
    elif args.cmd == "dev":
        from fwpkm_rag.pipelines.semantic_layer import SemanticAddressing

        pairs = load_pairs()
        module, feats = SemanticAddressing.load(args.weights), features(pairs)
        print(json.dumps({"dev passages": dev_recall(module, pairs, feats),
                          "all pair passages": dev_recall(module, pairs, feats, pool="all")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
