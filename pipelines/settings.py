"""`StoreSettings`: the one place where a store's settings, their defaults and their rules live.

`FwPKMStore(**settings)`, `MemoryIndex(model, settings)`, `rebuild` and `persistence.load_index` all take a
`StoreSettings` (or build one from keyword arguments), so a setting is declared and validated once.

A snapshot's manifest records the settings that shape the index (`SNAPSHOT_FIELDS`: chunking, the model calls,
the provenance table, reading passes); the limits and the progress bar are how one process uses the store and
are not saved: a loaded store takes them from the caller (`FwPKMStore.load(dir, max_document_chars=...)`) or
from the defaults. That keeps the manifest exactly as earlier versions wrote it. The word layer's settings
(`WORD_FIELDS`) are recorded in a store's manifest only when the layer is on, so a store without it writes the
manifest of earlier versions too.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from fwpkm_rag.errors import ConfigError, check_int

DEFAULT_MAX_DOCUMENT_CHARS = 10_000_000
"""Default `max_document_chars`: about 2.5M tokens, 5-15 minutes of ingestion on a 2-core CPU."""

DEFAULT_MAX_QUERY_TOKENS = 8192
"""Default `max_query_tokens`: questions and chat prompts longer than this raise QueryTooLongError."""

SNAPSHOT_FIELDS = ("chunk_tokens", "chunk_overlap", "piece_tokens", "per_slot", "passes")
"""The settings a snapshot's manifest records (the format of version 1 stores, and of every segment folder)."""

STORE_FIELDS = SNAPSHOT_FIELDS + ("segment_tokens", "merge")
"""The settings a segmented store's manifest records (store format version 2, docs/segments.md)."""

DEFAULT_SEGMENT_TOKENS = 65536
"""Default `segment_tokens`, measured (docs/benchmarks.md, "Segments"; `fwpkm-rag bench segments` and
`fwpkm-rag bench segments --parts store --segment-tokens 65536`): at 1M tokens with 16 distractors, 64K segments
keep needle hit@5 at 100% (one memory: 12%) with an index of 370 MiB and a 113 ms query p50, where issue 14's
strict rule (needles >= 99% and the dense-fact capacity task >= 95%) gives 16,384: the same 100% at 1,251 MiB
and 496 ms. Natural prose fills a memory far less densely than that task (one fact per 21 tokens): verbatim
recall of natural-text entries held 97% at ~44K tokens and 94% at ~105K in one memory. Stores of dense fact
lists should pass segment_tokens=16384."""

WORD_FIELDS = ("word_layer", "word_weight", "word_topk")
"""The word layer's settings (docs/addressing.md, "In the store"): in a store's manifest only when the layer is on."""

DEFAULT_WORD_TOPK = 2
"""Default `word_topk`: slots the word layer reads and writes per word. Measured against 4 (the layer's own
default, part A's benchmark): entries recall@1 / @5 within 0.1 point (reordered 98.7 / 99.6 vs 98.8 / 99.7,
verbatim and shuffled equal), near-duplicate facts 100% hit@1 at 8 and 64 x N/k as with 4, and a sealed
segment's word layer 5.2 instead of ~7.9 bytes per corpus token (docs/benchmarks.md, "Segments at 10M tokens")."""

WORD_TOPK_BEFORE = 4
"""The `word_topk` of stores saved before the setting existed (their manifests lack it)."""

DEFAULT_WORD_WEIGHT = 8.0
"""Default `word_weight` (the lexical store's weight is 1): the weight chosen on the dev split of the addressing
task (`fwpkm-rag bench addressing`, results/addressing/addressing.json "weights": combined [1.0, 8.0]; grid 0-16
and the word layer alone; dev recall@1 90.3% at weight 0, 97.7% at 1, 99.1% from 8 up; docs/benchmarks.md,
"Addressing: words and meaning")."""

DEFAULT_WORD_LAYER = True
"""Default `word_layer`: on, because the lexical store alone loses a fact among many look-alike facts as the store
grows (capacity hit@1 87% / 33.5% / 10% at 1 / 8 / 64 x N/k facts; with the word layer 100% at each) and finds
its chunk by the same words in another order 59% of the time (with it 99%); at 10M tokens it stays under BM25's
index bytes and the query latency target (docs/benchmarks.md, "Segments at 10M tokens"). Manifests written
before the setting, which lack it, load with it off (the store they describe has no word layer)."""

SEMANTIC_FIELDS = ("semantic_layer", "semantic_weight", "semantic_power", "semantic_exact_first")
"""The chunk semantic layer's settings (docs/addressing.md, "A chunk-level semantic layer"): in a store's manifest
only when the layer is on."""

DEFAULT_SEMANTIC_WEIGHT = 128.0
"""Default `semantic_weight` (lexical 1, word layer `word_weight`), chosen on dev with `DEFAULT_SEMANTIC_POWER` and
`DEFAULT_SEMANTIC_EXACT_FIRST` (`python -m fwpkm_rag.benchmarks.semantic_fusion dev`; docs/benchmarks.md, "The
semantic source in the fusion"): the best dev-pair recall@5 (81.7%; 28.0% without the layer) among the settings
that keep the dev needles' hit@1 and hit@5 (every needle of five train-split items, 181 questions: 91.7% / 98.9%,
as without the layer) and the dev entries' recall@1 (99.1%). Exact first makes rank 1 the exact-words best, so
the weight only orders ranks 2 and on, where the semantic source then decides (64 and 128 both give 81.2% at
power 1). Without exact first the best such weight was 16 (82.3%) but the needles' hit@5 fell to 96.1%."""

DEFAULT_SEMANTIC_POWER = 2
"""Default `semantic_power`: 1 - (1 - x)^2 of the semantic source's normalised score x (`word_layer.flat_top`),
chosen with `DEFAULT_SEMANTIC_WEIGHT` on the same dev grid (powers 1-16): 81.7% dev pairs vs 81.2% at power 1 (two
of 372 questions). It mattered more for the first, sum-pooled layer (dev pairs 65.1% at power 3, weight 8, with
the needles kept, vs 48.1% at power 1)."""

DEFAULT_SEMANTIC_EXACT_FIRST = True
"""Default `semantic_exact_first`: the chunk that the lexical store and the word layer alone rank best over the
store gets the largest fused score there is (1 + word_weight + semantic_weight added), so rank 1 is the
exact-words answer and the semantic source orders the rest. Why: where a needle's own sentence embeds poorly (cut
by a chunk boundary, or run into filler) a look-alike's semantic score outvotes the chunk holding the exact key
at any weight that helps reworded questions; on dev the needles' hit@1 and hit@5 then stay as without the layer
(91.7% / 98.9%) at every weight, for 1-3 points of dev-pair recall@5. Manifests saved before the setting, which
lack it, load with it off (they ranked without it)."""

SEMANTIC_POWER_BEFORE = 1
"""The `semantic_power` of stores saved before the setting existed (their manifests lack it): the semantic source
as it is, which is how they ranked."""

MERGE_STRATEGIES = ("raw", "max", "rrf")
"""How the segments' rankings are merged (pipelines/merge.py): raw scores (default), per-segment max, or RRF."""


@dataclass(frozen=True)
class StoreSettings:
    """How a store chunks, streams and limits its documents. Immutable; `replace(**changes)` gives a copy.

    chunk_tokens: tokens per retrieval chunk (the core span a write is attributed to).
    chunk_overlap: tokens of left context added to each returned chunk's text (< chunk_tokens).
    piece_tokens: tokens per model call while ingesting (documents are packed into pieces).
    per_slot: strongest writers the provenance table keeps per memory slot.
    passes: times each document is streamed through the memory (spec §9).
    show_progress: a tqdm bar with tokens/s while ingesting.
    max_query_tokens: longest question / prompt in tokens (None: the default, 8192).
    max_document_chars: longest document in characters (None: no limit).
    segment_tokens: stream tokens per segment (docs/segments.md): a segment holding this many is sealed and a new
        one opens; a longer document is split across segments at chunk boundaries. None: one unbounded segment.
    merge: how the segments' rankings are merged: "raw" scores (default), "max" (per-segment normalised), "rrf".
    word_layer: also address every chunk by its words alone (a `WordLayer` per segment, docs/addressing.md "In
        the store") and rank by the fusion of the two sources: each source's scores divided by its maximum over
        the whole store for the question, the word layer weighted `word_weight`, the lexical store 1. Finds a
        chunk by its words in another order, and one fact among thousands of look-alikes (capacity hit@1 100% at
        64 x N/k facts, 10% without); costs ~6.4 MB per open segment and ~5 bytes per token sealed. On by default
        (`DEFAULT_WORD_LAYER`); a store saved without it loads without it. Needs merge="raw" (the fusion is the
        merge): merge="max" or "rrf" take word_layer=False.
    word_weight: the word layer's weight in the fusion (> 0; default 8, chosen on the addressing task's dev split:
        `DEFAULT_WORD_WEIGHT`).
    word_topk: slots the word layer reads and writes per word (default 2, `DEFAULT_WORD_TOPK`); every segment
        of a store uses the same (its manifest records it; a store saved before the setting used 4).
    semantic_layer: also address every chunk by the meaning of its sentences (a `ChunkSemanticLayer` per segment,
        pipelines/chunk_semantic.py: MiniLM sentence embeddings read as product keys, a chunk scored by its best
        sentence; docs/addressing.md "A chunk-level semantic layer") and fuse its scores with the other sources.
        Finds a chunk by a question in other words (the paraphrase task's recall@5: the layer alone 89%, MiniLM +
        FAISS 67%; the fused store: docs/benchmarks.md, "The semantic source in the fusion"). Off by default: it
        needs all-MiniLM-L6-v2 (the `baselines` extra), a MiniLM forward per sentence at ingest and per question,
        and ~21 more bytes per corpus token. Needs merge="raw".
    semantic_weight: the semantic layer's weight in the fusion (> 0; default 128, `DEFAULT_SEMANTIC_WEIGHT`).
    semantic_power: an int >= 1: the semantic source's normalised score x (its maximum over the store scores 1)
        counts 1 - (1 - x)^power (`word_layer.flat_top`; 1: x itself; default 2, `DEFAULT_SEMANTIC_POWER`). A
        larger power makes every chunk near the semantic best count almost fully, so that the lexical sources
        decide among look-alikes. A store saved before the setting loads with 1.
    semantic_exact_first: rank first the chunk that the lexical store and the word layer alone rank best (it gets
        1 + word_weight + semantic_weight added, the largest fused score there is), the semantic source ordering
        the rest (default True, `DEFAULT_SEMANTIC_EXACT_FIRST`): exact-key questions keep their answer at rank 1
        whatever the semantic weight. A store saved before the setting loads with it off.
    """

    chunk_tokens: int = 256
    chunk_overlap: int = 0
    piece_tokens: int = 2048
    per_slot: int = 32
    passes: int = 1
    show_progress: bool = False
    max_query_tokens: Optional[int] = DEFAULT_MAX_QUERY_TOKENS
    max_document_chars: Optional[int] = DEFAULT_MAX_DOCUMENT_CHARS
    segment_tokens: Optional[int] = DEFAULT_SEGMENT_TOKENS  # measured: see DEFAULT_SEGMENT_TOKENS
    merge: str = "raw"
    word_layer: bool = DEFAULT_WORD_LAYER  # measured: see DEFAULT_WORD_LAYER
    word_weight: float = DEFAULT_WORD_WEIGHT  # dev-chosen: see DEFAULT_WORD_WEIGHT
    word_topk: int = DEFAULT_WORD_TOPK  # measured: see DEFAULT_WORD_TOPK
    semantic_layer: bool = False
    semantic_weight: float = DEFAULT_SEMANTIC_WEIGHT  # dev-chosen: see DEFAULT_SEMANTIC_WEIGHT
    semantic_power: int = DEFAULT_SEMANTIC_POWER  # dev-chosen: see DEFAULT_SEMANTIC_POWER
    semantic_exact_first: bool = DEFAULT_SEMANTIC_EXACT_FIRST  # dev-chosen: see DEFAULT_SEMANTIC_EXACT_FIRST

    def __post_init__(self) -> None:
        # Validated in the order earlier versions did, so a call with two bad values names the same one.
        check_max_document_chars(self.max_document_chars)
        if self.max_query_tokens is None:  # None has always meant "the default limit"
            object.__setattr__(self, "max_query_tokens", DEFAULT_MAX_QUERY_TOKENS)
        check_int("max_query_tokens", self.max_query_tokens, 1)
        for name, low in (("chunk_tokens", 1), ("piece_tokens", 1), ("per_slot", 1), ("passes", 1),
                          ("chunk_overlap", 0)):
            check_int(name, getattr(self, name), low)
        if self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens "
                              f"({self.chunk_tokens})")
        check_int("segment_tokens", self.segment_tokens, 2, optional=True)
        if not isinstance(self.merge, str) or self.merge not in MERGE_STRATEGIES:
            raise ConfigError(f"merge must be one of {', '.join(map(repr, MERGE_STRATEGIES))}, got {self.merge!r}")
        if not isinstance(self.word_layer, bool):
            raise ConfigError(f"word_layer must be True or False, got {self.word_layer!r}")
        w = self.word_weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w > 0):
            raise ConfigError(f"word_weight must be a finite number > 0, got {w!r}")
        object.__setattr__(self, "word_weight", float(w))
        check_int("word_topk", self.word_topk, 1)
        if not isinstance(self.semantic_layer, bool):
            raise ConfigError(f"semantic_layer must be True or False, got {self.semantic_layer!r}")
        w = self.semantic_weight
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w > 0):
            raise ConfigError(f"semantic_weight must be a finite number > 0, got {w!r}")
        object.__setattr__(self, "semantic_weight", float(w))
        check_int("semantic_power", self.semantic_power, 1)
        if not isinstance(self.semantic_exact_first, bool):
            raise ConfigError(f"semantic_exact_first must be True or False, got {self.semantic_exact_first!r}")
        if self.semantic_layer and self.merge != "raw":
            raise ConfigError(f"semantic_layer=True ranks by the fusion of the store's sources over the whole store "
                              f"(docs/addressing.md), which replaces the merge strategy: merge must be 'raw', got "
                              f"{self.merge!r}")
        if self.word_layer and self.merge != "raw":
            raise ConfigError(f"word_layer=True (the default) ranks by the fusion of the lexical and word scores over "
                              f"the whole store (docs/addressing.md), which replaces the merge strategy: merge must be "
                              f"'raw', got {self.merge!r} (merge={self.merge!r} needs word_layer=False)")

    @classmethod
    def field_names(cls) -> frozenset:
        """The names a store accepts as settings (from_texts / from_documents pick these out of **kwargs)."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> "StoreSettings":
        """A copy with `changes` applied and validated (an unknown name raises TypeError, like a bad kwarg)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The settings a snapshot's manifest records (`SNAPSHOT_FIELDS`)."""
        return {name: getattr(self, name) for name in SNAPSHOT_FIELDS}

    def store_dict(self) -> dict:
        """The settings a segmented store's manifest records (`STORE_FIELDS`, and `WORD_FIELDS` when the word
        layer is on)."""
        names = STORE_FIELDS + (WORD_FIELDS if self.word_layer else ()) + (SEMANTIC_FIELDS if self.semantic_layer else ())
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], **overrides: Any) -> "StoreSettings":
        """Settings from a manifest's `settings` entry, with `overrides` (any field) on top."""
        unknown = set(saved) - set(STORE_FIELDS) - set(WORD_FIELDS) - set(SEMANTIC_FIELDS)
        if unknown:
            raise ConfigError(f"unknown store settings in the snapshot: {sorted(unknown)}")
        saved = dict(saved)
        saved.setdefault("word_layer", False)  # a manifest without it describes a store without the layer
        if saved.get("word_layer") and "word_topk" not in saved:  # saved before the setting: its layers read 4
            saved["word_topk"] = WORD_TOPK_BEFORE
        if saved.get("semantic_layer") and "semantic_power" not in saved:  # saved before the setting
            saved["semantic_power"] = SEMANTIC_POWER_BEFORE
        if saved.get("semantic_layer") and "semantic_exact_first" not in saved:  # saved before the setting
            saved["semantic_exact_first"] = False
        return cls(**{**saved, **overrides})


def check_max_document_chars(value) -> Optional[int]:
    """A `max_document_chars` value (None: no limit), for the store and for one add call."""
    return check_int("max_document_chars", value, 1, optional=True)
