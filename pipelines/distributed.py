"""Scale-out on Ray: a segmented store whose segments live in Ray actors (docs/scale-out.md, issue 14 item 4).

`DistributedIndex` has the interface `FwPKMStore` uses of `SegmentedIndex` (add, delete, get, search, doc_ids,
len, compact, rebuild, ...); `RayFwPKMStore` (pipelines/langchain/ray_store.py) is the LangChain adapter.

- **Workers.** `num_workers` Ray actors (`SegmentWorker`), each holding its own `SegmentedIndex` over the same
  model: the default model is loaded inside each actor from the package (nothing shipped); a given model is
  `ray.put` once (pickled module, one copy in the object store, any MemoryLM: FwPKMForCausalLM or an attached
  backbone) and every actor takes it from there. The fingerprint check on save/load verifies it.
- **Segment ids are global.** Before each write the driver reserves a range of ids for every actor it calls
  (an upper bound of the segments the call can create: one per chunk plus one) and sets the actor's
  `next_segment` to its range's start; so ids never collide across actors and sort in creation order. The
  store's segment order is the order of the ids, on Ray and in the folder a save writes.
- **Ingestion** spreads whole documents over the actors: an id the store already holds goes to the actor that
  holds it (the replace stays one actor's transaction), a new one to the least-loaded actor (characters of live
  documents). Inputs are checked on the driver first, so a bad input changes nothing on any actor.
- **Queries** fan out to every actor twice: first each returns its idf counts for the question's tokens
  (chunks, chunks containing each token), which the driver adds up; then each returns every segment's own top
  k ranked with that store-wide idf (`segments.rank_segments` / `hits_of`), and the driver merges them with
  `merge.merge_hits` and the store's strategy, in segment-id order: the same merge, on the same lists, as the
  local store.
- **Persistence** writes the local store's format (version 2, persistence.py): every actor writes its segment
  folders (sealed ones once) into the folder, the driver writes the catalog, the manifest and CURRENT. The
  folder must be reachable at the same path from every actor (always so with a local Ray; shared storage on a
  cluster). `load` reads any store folder and hands its segments to the actors (a document split over several
  segments keeps all of them on one actor).
- **Fault tolerance.** The driver keeps every acknowledged document (id, text, metadata, actor) in order. An
  actor that dies is replaced and its documents re-ingested from that log before the call that noticed it is
  retried (`MAX_RESTARTS` times, then FwPKMError): nothing acknowledged is lost. Re-ingested segments are new
  memories of the same documents (rankings may differ from before the death, as after `rebuild`).

- **The word layer** (`word_layer=True`, docs/addressing.md "In the store"): each actor's segments keep their
  word layers; a question takes three rounds — idf counts (the question tokens' and its words'), each actor's
  maxima of the lexical and word scores, then each actor's fused top k with the store-wide idf and maxima — so
  the ranking is the local store's over the same segments (tested against the saved store loaded locally).

No LangChain here; `ray` is imported on first use (`import fwpkm_rag.pipelines` never loads it).
"""
from __future__ import annotations

import json
import math
import os
import secrets
import threading
import time
from typing import Iterable, Optional

from fwpkm_rag.errors import FwPKMError, InputError, InputTypeError, check_int
from fwpkm_rag.pipelines import chunking
from fwpkm_rag.pipelines.docstore import dump_metadata
from fwpkm_rag.pipelines.merge import merge_hits
from fwpkm_rag.pipelines.retrieval import Hit, check_k
from fwpkm_rag.pipelines.settings import StoreSettings, check_max_document_chars

MAX_RESTARTS = 2
"""How many times one call replaces a dead actor (and re-ingests its documents) before it gives up."""

WORKER_START_TIMEOUT = 600.0
"""Seconds to wait for an actor to start (no CPU free in the cluster: FwPKMError instead of a hang)."""

_KEEP = object()
_STARTED_RAY = {"count": 0}  # stores relying on a Ray this module started (shut down when the last closes)


def require_ray():
    """The `ray` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("RayFwPKMStore needs Ray: pip install 'fwpkm-rag[distributed]' (ray>=2.40)") from None
    return ray


class _Counter:
    """Stands in for the tqdm bar inside an actor: counts the tokens the store streams (the driver polls it)."""

    def __init__(self):
        self.tokens = 0

    def update(self, n: int) -> None:
        self.tokens += int(n)

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


class SegmentWorker:
    """One Ray actor's share of a distributed store: a SegmentedIndex over the model (see the module doc)."""

    def __init__(self, model, settings: StoreSettings, threads: int, first_segment: int):
        import torch

        from fwpkm_rag.pipelines.index import MemoryIndex
        from fwpkm_rag.pipelines.segments import Segment, SegmentedIndex

        torch.set_num_threads(threads)
        if model is None:
            from fwpkm_rag.default_model import load_default_model

            model = load_default_model()
        self.model = model
        self.settings = settings
        self.index = SegmentedIndex(model, settings, _segments=[Segment(first_segment, MemoryIndex(model, settings))],
                                    _next_segment=first_segment + 1)
        self.docs_done = 0
        self.counter: Optional[_Counter] = None
        self.crash_after: Optional[int] = None

    def _new_counter(self) -> _Counter:
        self.counter = _Counter()
        return self.counter

    def ready(self) -> int:
        return os.getpid()

    def arm_crash(self, after_docs: int) -> None:
        """Tests: the next add call exits the process after taking `after_docs` documents (a death mid-ingest)."""
        self.crash_after = after_docs

    # ---- loading a share of a saved store ----------------------------------------------------------------
    def load(self, directory: str, segment_ids: list, catalog: list, next_segment: int, overrides: dict) -> None:
        from fwpkm_rag.pipelines import persistence
        from fwpkm_rag.pipelines.segments import Segment, SegmentedIndex

        self.index.close()
        name = persistence.current_name(directory)
        if name.startswith("snap-"):  # version 1: one segment, id 0
            index = persistence.load_index(directory, self.model, **overrides)
            segments = [Segment(0, index)]
            settings = index.settings
        else:
            manifest = persistence.read_store_manifest(directory, name)
            settings = StoreSettings.from_dict(manifest["settings"], **overrides)
            fingerprint = persistence.model_fingerprint(self.model)
            wanted = set(segment_ids)
            segments = persistence.load_segments(directory, [e for e in manifest["segments"] if e["id"] in wanted],
                                                 self.model, settings, fingerprint)
        self.settings = settings
        if catalog is None:  # version 1: every document in the one segment
            catalog = [[d, [0]] for d in segments[0].index.docs.doc_ids()]
        self.index = SegmentedIndex(self.model, settings, _segments=segments,
                                    _catalog={d: tuple(p) for d, p in catalog}, _next_segment=next_segment)

    # ---- writing -----------------------------------------------------------------------------------------
    def add(self, items: list, base: int, passes: Optional[int], max_document_chars, show_progress: bool):
        """Ingest (id, text, metadata) items (checked by the driver) with segment ids from `base`; returns the
        actor's next segment id."""
        self.index.next_segment = max(self.index.next_segment, base)
        self.docs_done, self.counter = 0, None

        def stream():
            for item in items:
                if self.crash_after is not None and self.docs_done >= self.crash_after:
                    os._exit(1)  # tests: an actor that dies in the middle of an add call
                yield item
                self.docs_done += 1

        # the tokens stream into a counter the driver polls (its progress bars), not into a bar in the actor
        self.index.add(stream(), passes=passes, show_progress=False, max_document_chars=max_document_chars,
                       bar=self._new_counter() if show_progress else None)
        self.docs_done = len(items)
        return self.index.next_segment

    def progress(self) -> tuple:
        return self.docs_done, (self.counter.tokens if self.counter is not None else 0)

    def delete(self, doc_ids: Optional[list], base: int) -> int:
        self.index.next_segment = max(self.index.next_segment, base)
        self.index.delete(doc_ids)
        return self.index.next_segment

    def compact(self, min_live_fraction: float, passes: Optional[int], base: int):
        self.index.next_segment = max(self.index.next_segment, base)
        return self.index.compact(min_live_fraction, passes=passes), self.index.next_segment

    def rebuild(self, passes: Optional[int], base: int) -> int:
        self.index.next_segment = max(self.index.next_segment, base)
        self.index.rebuild(passes=passes)
        return self.index.next_segment

    # ---- reading -----------------------------------------------------------------------------------------
    def idf_counts(self, query: str, words: bool = False) -> tuple:
        """(N, df per question token as a list, word counts) over this actor's segments: the driver adds every
        actor's counts so that a question's tokens weigh their idf over the whole store, as in a local store.
        Word counts (`words`: the store has the word layer): (chunks, write events (U, k) of the slots the
        question's distinct words read, as a list), or None."""
        from fwpkm_rag.pipelines.retrieval import check_query, idf_counts
        from fwpkm_rag.pipelines.word_layer import question_word_counts

        idx = self.index
        ids = check_query(idx.tok, query, idx.settings.max_query_tokens)
        views = [sv.view for sv in idx.view.segments]
        n, df = idf_counts(views, ids)
        layers = [v.words for v in views if v.words is not None]
        word = None
        if words and layers:
            word_n, writes = question_word_counts(layers, query)
            word = (word_n, writes.tolist())
        return n, df.tolist(), word

    def _ranked(self, view, query: str, k: int, idf, fusion) -> list:
        """This actor's segments ranked: lexical top k, or with `fusion` = (word idf list, source maxima, word
        weight, semantic weight, semantic power, exact first, the store's exact-words best score) the fused top k
        (`segments.fuse_words`) from a lexical top max(k, CANDIDATES)."""
        import torch

        from fwpkm_rag.pipelines.segments import rank_segments
        from fwpkm_rag.pipelines.word_layer import CANDIDATES

        counts = None if idf is None else (int(idf[0]), torch.as_tensor(idf[1], dtype=torch.int64))
        with torch.no_grad():
            if fusion is None:
                return rank_segments(view.segments, query, k, idf=counts)
            from fwpkm_rag.pipelines.segments import fuse_words

            word_idf, tops, weight, semantic_weight, semantic_power, exact_first, exact_top = fusion
            ranked = rank_segments(view.segments, query, max(k, CANDIDATES), idf=counts)
            word_idf = None if word_idf is None else torch.as_tensor(word_idf, dtype=torch.float32)
            return fuse_words(view.segments, query, ranked, k, weight, word_idf=word_idf, tops=tops,
                              semantic_weight=semantic_weight, semantic_power=semantic_power,
                              exact_first=exact_first, exact_top=exact_top)

    def source_maxima(self, query: str, k: int, idf: tuple, word_idf: Optional[list]) -> list:
        """[lexical, word layer] (+ [chunk semantic layer] when the store has it): each source's maximum score over
        this actor's segments for the question (the store-wide idf given), which the driver reduces to the store's
        maxima for the fusion. The semantic layer's scores need no store-wide counts (no slot idf by default;
        with one, each segment's own, as in a local store)."""
        import torch

        from fwpkm_rag.pipelines.segments import fusion_sources, rank_segments
        from fwpkm_rag.pipelines.word_layer import CANDIDATES, source_maxima

        idx = self.index
        counts = (int(idf[0]), torch.as_tensor(idf[1], dtype=torch.int64))
        with torch.no_grad():
            segments = idx.view.segments
            ranked = rank_segments(segments, query, max(k, CANDIDATES), idf=counts)
            w = None if word_idf is None else torch.as_tensor(word_idf, dtype=torch.float32)
            return source_maxima(fusion_sources(segments, query, ranked, w))

    def exact_maximum(self, query: str, k: int, idf: tuple, word_idf: Optional[list], tops: list,
                      word_weight: float) -> float:
        """The best exact-words fusion score (lexical store + word layer, the store's maxima `tops`) over this
        actor's segments (`segments.exact_maximum`): the driver's maximum over the actors is the store's."""
        import torch

        from fwpkm_rag.pipelines.segments import exact_maximum, rank_segments
        from fwpkm_rag.pipelines.word_layer import CANDIDATES

        counts = (int(idf[0]), torch.as_tensor(idf[1], dtype=torch.int64))
        with torch.no_grad():
            segments = self.index.view.segments
            ranked = rank_segments(segments, query, max(k, CANDIDATES), idf=counts)
            w = None if word_idf is None else torch.as_tensor(word_idf, dtype=torch.float32)
            return exact_maximum(segments, query, ranked, word_weight, word_idf=w, tops=tops)

    def search(self, query: str, k: int, with_matches: bool, match_top: int, idf: Optional[tuple] = None,
               fusion: Optional[tuple] = None) -> list:
        """[(segment id, that segment's own top k as Hits)] for every segment of this actor, in order; the
        question's tokens weighted by the store-wide idf counts `idf` = (N, df list) (default: this actor's);
        `fusion` = (word idf, source maxima, word weight, semantic weight, semantic power, exact first, exact
        top): fused with the word layer (and the chunk semantic layer) over the whole store."""
        from fwpkm_rag.pipelines.retrieval import check_query, hits_of

        idx = self.index
        k = check_k(k)
        check_query(idx.tok, query, idx.settings.max_query_tokens)
        with idx.snapshot() as (view, dbs):
            ranked = self._ranked(view, query, k, idf, fusion) if k else [None] * len(dbs)
            out = []
            for sv, db, r in zip(view.segments, dbs, ranked):
                hits = [] if r is None else hits_of(sv.index, sv.view, db, r, segment=sv.id,
                                                    with_matches=with_matches, match_top=match_top)
                out.append((sv.id, hits))
            return out

    def get(self, doc_ids: list) -> list:
        return self.index.get(doc_ids)

    def documents(self) -> list:
        return list(self.index.iter_documents())

    def stats(self) -> list:
        return self.index.segment_stats()

    def fingerprint(self) -> str:
        from fwpkm_rag.pipelines.persistence import model_fingerprint

        return model_fingerprint(self.model)

    def write_segments(self, directory: str, stamp: str, fingerprint: str, keep_empty: bool) -> tuple:
        """Write this actor's segment folders into `directory` (a sealed one only if not there yet); returns
        (manifest entries, this actor's catalog [[doc id, [segment ids]], ...]). Segments never written to
        (an actor's fresh open segment) are left out unless `keep_empty`."""
        from fwpkm_rag.pipelines.persistence import segment_folder, write_segment_folder

        entries = []
        with self.index.lock:
            for segment in self.index.segments:
                if segment.index.provenance.n_chunks == 0 and not keep_empty:
                    continue
                name = segment_folder(segment, stamp)
                if not os.path.isdir(os.path.join(directory, name)):  # a sealed one may be there already
                    write_segment_folder(segment.index, directory, name, fingerprint)
                entries.append({"id": segment.id, "sealed": segment.sealed, "folder": name,
                                "tombstones": list(segment.tombstones)})
            catalog = [[d, list(p)] for d, p in self.index.catalog.items()]
        return entries, catalog

    def close(self) -> None:
        self.index.close()


def segment_bound(items: list, chunk_tokens: int) -> int:
    """An upper bound of the segments one add call of `items` can create: a new segment holds at least one
    chunk, a chunk at least one token, a token at least one UTF-8 byte; plus the open segment's successor."""
    return 2 + sum(math.ceil(len(text.encode("utf-8", "surrogatepass")) / chunk_tokens) + 1 for _, text, _ in items)


class DistributedIndex:
    """A segmented store over Ray actors (see the module doc): the SegmentedIndex interface FwPKMStore uses."""

    def __init__(self, model=None, settings: Optional[StoreSettings] = None, *, num_workers: int = 2,
                 address: Optional[str] = None, threads: int = 1, cpus_per_worker: float = 1,
                 _start: bool = True, **settings_kwargs):
        ray = require_ray()
        self.num_workers = check_int("num_workers", num_workers, 1)
        self.threads = check_int("threads", threads, 1)
        self.cpus_per_worker = cpus_per_worker
        settings = StoreSettings() if settings is None else settings
        self.settings = settings.replace(**settings_kwargs) if settings_kwargs else settings
        self.model = model
        self.lock = threading.RLock()  # one write (or save) at a time, like SegmentedIndex
        self._owns_ray = False
        self._connected = False  # this store connected the process to a cluster by address: close() disconnects
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=max(1, math.ceil(self.num_workers * cpus_per_worker)), include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
                self._owns_ray = True
                _STARTED_RAY["count"] += 1
            else:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                self._connected = True
        self._model_ref = None if model is None else ray.put(model)
        self._docs: dict = {}  # doc id -> (worker slot, text, metadata): every acknowledged document, in order
        self._load = [0] * self.num_workers  # characters of live documents per worker
        self.next_segment = 0
        self.workers: list = [None] * self.num_workers
        self.restarts = 0
        self.closed = False
        if _start:
            self._start_workers()

    # ---- actors ------------------------------------------------------------------------------------------
    def _reserve(self, n: int) -> int:
        base = self.next_segment
        self.next_segment += n
        return base

    def _new_actor(self):
        ray = require_ray()
        cls = ray.remote(SegmentWorker).options(num_cpus=self.cpus_per_worker, max_concurrency=2,
                                                 max_restarts=0)
        return cls.remote(self._model_ref, self.settings, self.threads, self._reserve(1))

    def _wait_ready(self, actors: list) -> None:
        ray = require_ray()
        try:
            ray.get([a.ready.remote() for a in actors], timeout=WORKER_START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise FwPKMError(f"the Ray workers did not start within {WORKER_START_TIMEOUT:.0f} s: the cluster has "
                             f"fewer free CPUs than num_workers x cpus_per_worker ({self.num_workers} x "
                             f"{self.cpus_per_worker})") from None

    def _start_workers(self) -> None:
        self.workers = [self._new_actor() for _ in range(self.num_workers)]
        self._wait_ready(self.workers)

    def _restart(self, slot: int) -> None:
        """Replace a dead actor and re-ingest its acknowledged documents (from the driver's log, in order)."""
        ray = require_ray()
        try:
            ray.kill(self.workers[slot])
        except Exception:  # pragma: no cover - already gone
            pass
        self.restarts += 1
        actor = self._new_actor()
        self.workers[slot] = actor
        self._wait_ready([actor])
        items = [(d, text, meta) for d, (s, text, meta) in self._docs.items() if s == slot]
        if items:
            base = self._reserve(segment_bound(items, self.settings.chunk_tokens))
            nxt = _unwrap(lambda: ray.get(actor.add.remote(items, base, None, None, False)))
            self.next_segment = max(self.next_segment, nxt)

    def _call(self, calls: dict, *, progress=None) -> dict:
        """Run `calls` {slot: function(actor) -> ObjectRef} on their actors in parallel; {slot: result}. An actor
        that died is replaced (its documents re-ingested) and its call made again, up to MAX_RESTARTS times."""
        ray = require_ray()
        refs = {slot: make(self.workers[slot]) for slot, make in calls.items()}
        results: dict = {}
        attempts = {slot: 0 for slot in calls}
        while refs:
            by_ref = {ref: slot for slot, ref in refs.items()}
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=0.5 if progress else None)
            if progress is not None:
                progress(self, [slot for slot in refs])
            for ref in ready:
                slot = by_ref[ref]
                try:
                    results[slot] = _unwrap(lambda: ray.get(ref))
                    del refs[slot]
                except ray.exceptions.RayActorError as exc:
                    attempts[slot] += 1
                    if attempts[slot] > MAX_RESTARTS:
                        raise FwPKMError(f"Ray worker {slot} died {attempts[slot]} times in one call ({exc}); its "
                                         f"documents are kept by the driver and re-ingested on the next call")
                    self._restart(slot)
                    refs[slot] = calls[slot](self.workers[slot])
        return results

    # ---- properties --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._docs)

    def doc_ids(self) -> list:
        return list(self._docs)

    def segment_stats(self) -> list:
        """Every actor's segments (id, sealed, tokens, parts, chunks, live chunks, bytes in memory, worker), in
        segment-id order."""
        out = []
        for slot, stats in self._call({s: (lambda a: a.stats.remote()) for s in range(self.num_workers)}).items():
            out += [{**st, "worker": slot} for st in stats]
        return sorted(out, key=lambda st: st["id"])

    @property
    def segments(self) -> list:
        return self.segment_stats()

    @property
    def tokens_ingested(self) -> int:
        return sum(s["tokens"] for s in self.segment_stats())

    @property
    def n_live_chunks(self) -> int:
        return sum(s["live_chunks"] for s in self.segment_stats())

    def nbytes(self) -> int:
        return sum(s["bytes_in_memory"] for s in self.segment_stats())

    # ---- writing -----------------------------------------------------------------------------------------
    def add(self, items: Iterable, *, passes: Optional[int] = None, show_progress: Optional[bool] = None,
            max_document_chars=_KEEP) -> list:
        """Check every (id, text, metadata) item on the driver, then ingest them over the actors; returns the ids.
        A bad input raises before any actor is called (the store unchanged)."""
        limit = (self.settings.max_document_chars if max_document_chars is _KEEP
                 else check_max_document_chars(max_document_chars))
        show = self.settings.show_progress if show_progress is None else show_progress
        with self.lock:
            batch = []
            for _, doc_id, text, metadata in chunking.checked_items(items, limit):
                dump_metadata(metadata)
                batch.append((doc_id, text, metadata))
            if not batch:
                return []
            load = list(self._load)
            shares: dict = {}
            for doc_id, text, metadata in batch:
                slot = self._docs[doc_id][0] if doc_id in self._docs else min(range(self.num_workers), key=load.__getitem__)
                load[slot] += len(text)
                shares.setdefault(slot, []).append((doc_id, text, metadata))
            bases = {slot: self._reserve(segment_bound(share, self.settings.chunk_tokens))
                     for slot, share in shares.items()}
            calls = {slot: (lambda a, s=slot: a.add.remote(shares[s], bases[s], passes, limit, show))
                     for slot in shares}
            bars = _Bars(len(batch)) if show else None
            try:
                done = self._call(calls, progress=bars.poll if bars else None)
            finally:
                if bars is not None:
                    bars.close(self)
            # acknowledged: into the driver's log (a replaced id moves to the end, as in the local store)
            for slot, share in shares.items():
                self.next_segment = max(self.next_segment, done[slot])
                for doc_id, text, metadata in share:
                    self._forget(doc_id)
                    self._docs[doc_id] = (slot, text, metadata)
                    self._load[slot] += len(text)
            order = {doc_id: n for n, (doc_id, _, _) in enumerate(batch)}
            tail = sorted(order, key=order.__getitem__)
            for doc_id in tail:  # the batch's documents in the batch's order
                self._docs[doc_id] = self._docs.pop(doc_id)
            return [doc_id for doc_id, _, _ in batch]

    def _forget(self, doc_id: str) -> None:
        old = self._docs.pop(doc_id, None)
        if old is not None:
            self._load[old[0]] -= len(old[1])

    def delete(self, doc_ids: Optional[Iterable[str]] = None) -> None:
        with self.lock:
            if doc_ids is None:
                shares = {slot: None for slot in range(self.num_workers)}
            else:
                shares = {}
                for doc_id in doc_ids:
                    if doc_id in self._docs:
                        shares.setdefault(self._docs[doc_id][0], []).append(doc_id)
            bases = {slot: self._reserve(1) for slot in shares}
            done = self._call({slot: (lambda a, s=slot: a.delete.remote(shares[s], bases[s])) for slot in shares})
            for slot, nxt in done.items():
                self.next_segment = max(self.next_segment, nxt)
            for doc_id in (list(self._docs) if doc_ids is None else [d for ids in shares.values() for d in ids]):
                self._forget(doc_id)

    def compact(self, min_live_fraction: float = 0.5, *, passes: Optional[int] = None) -> list:
        with self.lock:
            bases = {slot: self._reserve(1) for slot in range(self.num_workers)}
            done = self._call({s: (lambda a, s=s: a.compact.remote(min_live_fraction, passes, bases[s]))
                               for s in bases})
            out = []
            for ids, nxt in done.values():
                out += ids
                self.next_segment = max(self.next_segment, nxt)
            return sorted(out)

    def rebuild(self, *, passes: Optional[int] = None, show_progress=None) -> None:
        with self.lock:
            bases = {slot: self._reserve(1) for slot in range(self.num_workers)}
            done = self._call({s: (lambda a, s=s: a.rebuild.remote(passes, bases[s])) for s in bases})
            self.next_segment = max([self.next_segment, *done.values()])

    # ---- reading -----------------------------------------------------------------------------------------
    def memory_for(self, question: str):
        raise FwPKMError("answers from memory (ChatFwPKM(mode='memory')) read a segment's memory in this process: "
                         "save the RayFwPKMStore and open the folder with FwPKMStore.load, or use mode='reader'")

    @property
    def view(self):
        return self.memory_for("")

    def search(self, query: str, k: int, *, with_matches: bool = False, match_top: int = 8,
               strategy: Optional[str] = None, words: Optional[bool] = None) -> list[Hit]:
        """Every actor ranks each of its segments' top k; the driver merges them (merge_hits, segment-id order).
        With the word layer or the chunk semantic layer (`words`, default: whether the store has either) one more
        round: each actor's maxima of the sources, whose maximum over the actors every actor's fusion divides by,
        as the local store's."""
        k = check_k(k)
        if words is None:  # as SegmentedIndex._fused
            words = self.settings.word_layer or self.settings.semantic_layer
        elif not isinstance(words, bool):
            raise InputTypeError(f"words must be True, False or None, got {type(words).__name__}")
        elif words and not self.settings.word_layer:
            raise InputError("words=True needs a store built with word_layer=True")
        strategy = self.settings.merge if strategy is None else strategy
        if words and strategy != "raw":
            raise InputError(f"a store with word_layer=True ranks by the fusion of its sources over the whole store "
                             f"(docs/addressing.md); the merge strategy can only be 'raw', got {strategy!r}")
        idf = fusion = None
        if k:  # the store-wide idf: every actor's counts added (a write between the calls may shift them)
            with_words = words and self.settings.word_layer
            counts = self._call({s: (lambda a: a.idf_counts.remote(query, with_words))
                                 for s in range(self.num_workers)})
            idf = (sum(c[0] for c in counts.values()), [sum(col) for col in zip(*(c[1] for c in counts.values()))])
            if words:
                fusion = self._fusion(query, k, idf, [c[2] for c in counts.values() if c[2] is not None])
        done = self._call({s: (lambda a: a.search.remote(query, k, with_matches, match_top, idf, fusion))
                           for s in range(self.num_workers)})
        per_segment = sorted((pair for pairs in done.values() for pair in pairs), key=lambda p: p[0])
        return merge_hits([hits for _, hits in per_segment], k, strategy)

    def _fusion(self, query: str, k: int, idf: tuple, word_counts: list) -> tuple:
        """(word idf list, [lexical max, word max (, semantic max)] over every actor, word weight, semantic weight,
        semantic power, exact first, the exact-words fusion's best score over every actor) for the actors' fusion:
        with the semantic layer and `semantic_exact_first` one more round, since that best score needs the
        maxima."""
        import torch

        from fwpkm_rag.pipelines.word_layer import idf_from_counts

        word_idf = None
        if word_counts:
            writes = sum(torch.as_tensor(w, dtype=torch.float32) for _, w in word_counts)
            word_idf = idf_from_counts(sum(n for n, _ in word_counts), writes).tolist()
        maxima = self._call({s: (lambda a: a.source_maxima.remote(query, k, idf, word_idf))
                             for s in range(self.num_workers)})
        n_sources = 3 if self.settings.semantic_layer else 2
        tops = [max((m[i] if i < len(m) else 0.0) for m in maxima.values()) for i in range(n_sources)]
        st = self.settings
        exact_first, exact_top = st.semantic_layer and st.semantic_exact_first, None
        if exact_first:
            best = self._call({s: (lambda a: a.exact_maximum.remote(query, k, idf, word_idf, tops, st.word_weight))
                               for s in range(self.num_workers)})
            exact_top = max(best.values(), default=0.0)
        return word_idf, tops, st.word_weight, st.semantic_weight, st.semantic_power, exact_first, exact_top

    def get(self, doc_ids: Iterable[str]) -> list:
        doc_ids = list(doc_ids)
        shares: dict = {}
        for doc_id in doc_ids:
            if doc_id in self._docs:
                shares.setdefault(self._docs[doc_id][0], []).append(doc_id)
        done = self._call({s: (lambda a, s=s: a.get.remote(shares[s])) for s in shares})
        found = {doc_id: (doc_id, text, meta) for rows in done.values() for doc_id, text, meta in rows}
        return [found[d] for d in doc_ids if d in found]

    def iter_documents(self):
        for doc_id in self.doc_ids():
            yield from self.get([doc_id])

    # ---- persistence -------------------------------------------------------------------------------------
    def save(self, directory) -> str:
        """Write the store in the local store's format (persistence.py, version 2) into `directory`: the actors
        write their segment folders, the driver the catalog, the manifest and CURRENT; returns the manifest."""
        from fwpkm_rag.pipelines import persistence

        directory = os.path.abspath(os.fspath(directory))
        os.makedirs(directory, exist_ok=True)
        with self.lock:
            fingerprint = self._call({0: lambda a: a.fingerprint.remote()})[0]
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
            written = self._call({s: (lambda a: a.write_segments.remote(directory, stamp, fingerprint, False))
                                  for s in range(self.num_workers)})
            if not any(entries for entries, _ in written.values()):  # an empty store still has one segment
                written[0] = self._call({0: lambda a: a.write_segments.remote(directory, stamp, fingerprint, True)})[0]
            entries = sorted((e for es, _ in written.values() for e in es), key=lambda e: e["id"])
            parts = {d: p for _, catalog in written.values() for d, p in catalog}
            manifest_name = persistence.write_manifest(
                directory, stamp, entries, [[d, parts[d]] for d in self._docs], settings=self.settings,
                fingerprint=fingerprint, n_memories=self._n_memories(directory, entries), next_segment=self.next_segment)
            persistence.point_current(directory, manifest_name)
            persistence.remove_unnamed(directory, entries, stamp)
            return os.path.join(directory, manifest_name)

    @staticmethod
    def _n_memories(directory: str, entries: list) -> int:
        with open(os.path.join(directory, entries[0]["folder"], "manifest.json")) as fh:
            return json.load(fh)["n_memories"]

    @classmethod
    def load(cls, directory, model=None, *, num_workers: int = 2, address: Optional[str] = None, threads: int = 1,
             cpus_per_worker: float = 1, **overrides) -> "DistributedIndex":
        """Open any store folder (written by FwPKMStore or RayFwPKMStore, version 1 or 2) on `num_workers`
        actors: its segments are spread over them by tokens, a document's parts staying on one actor."""
        from fwpkm_rag.pipelines import persistence

        directory = os.path.abspath(os.fspath(directory))
        name = persistence.current_name(directory)
        if name.startswith("snap-"):
            saved = persistence.read_manifest(os.path.join(directory, name))["settings"]
            settings = StoreSettings.from_dict(saved, **overrides)
            seg_ids, catalog, next_segment, sizes = [0], None, 1, {0: 1}
        else:
            manifest = persistence.read_store_manifest(directory, name)
            settings = StoreSettings.from_dict(manifest["settings"], **overrides)
            seg_ids = [e["id"] for e in manifest["segments"]]
            with open(os.path.join(directory, manifest["catalog"]["file"])) as fh:
                catalog = json.load(fh)
            next_segment = manifest["next_segment"]
            sizes = {e["id"]: _folder_bytes(os.path.join(directory, e["folder"], "store.sqlite"))
                     for e in manifest["segments"]}
        store = cls(model, settings, num_workers=num_workers, address=address, threads=threads,
                    cpus_per_worker=cpus_per_worker, _start=False)
        store.next_segment = next_segment
        # groups of segments that share a document stay together; groups go to the least-loaded actor
        parent = {s: s for s in seg_ids}

        def find(s):
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s

        for _, parts in catalog or []:
            for a, b in zip(parts, parts[1:]):
                parent[find(a)] = find(b)
        groups: dict = {}
        for s in seg_ids:
            groups.setdefault(find(s), []).append(s)
        load = [0] * store.num_workers
        owner = {}
        for group in sorted(groups.values(), key=lambda g: -sum(sizes.get(s, 0) for s in g)):
            slot = min(range(store.num_workers), key=load.__getitem__)
            load[slot] += sum(sizes.get(s, 0) for s in group) or 1
            owner.update({s: slot for s in group})
        try:
            store._start_workers()
            shares = {slot: [s for s in seg_ids if owner[s] == slot] for slot in range(store.num_workers)}
            sub = {slot: [[d, p] for d, p in (catalog or []) if owner[p[0]] == slot] for slot in shares}
            store._call({slot: (lambda a, s=slot: a.load.remote(directory, shares[s], sub[s] if catalog is not None
                                                                  else None, next_segment, overrides))
                         for slot in shares if shares[slot]})
            # the driver's log of documents, in the store's order (version 1: the segment's own order)
            docs = {}
            for slot, rows in store._call({s: (lambda a: a.documents.remote())
                                           for s in shares if shares[s]}).items():
                docs.update({d: (slot, text, meta) for d, text, meta in rows})
            order = [d for d, _ in catalog] if catalog is not None else list(docs)
            store._docs = {d: docs[d] for d in order}
            for slot, text, _ in store._docs.values():
                store._load[slot] += len(text)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        ray = require_ray()
        live = [a for a in self.workers if a is not None]
        try:  # let each actor close its segments (databases, spilled memory folders) before it is killed
            ray.get([a.close.remote() for a in live], timeout=60)
        except Exception:  # a dead or stuck actor: killing it below is all that is left
            pass
        for actor in self.workers:
            if actor is not None:
                try:
                    ray.kill(actor)
                except Exception:  # pragma: no cover
                    pass
        self.workers = [None] * self.num_workers
        if self._owns_ray:
            _STARTED_RAY["count"] -= 1
            if _STARTED_RAY["count"] == 0:
                ray.shutdown()
        elif self._connected:  # leaves the cluster running; only this process's connection ends
            ray.shutdown()


class _Bars:
    """Driver-side progress: documents done and tokens streamed, polled from the actors while an add runs."""

    def __init__(self, n_docs: int):
        from tqdm.auto import tqdm

        self.docs = tqdm(total=n_docs, unit="doc", desc="documents", dynamic_ncols=True)
        self.tokens = tqdm(unit="tok", unit_scale=True, desc="tokens", dynamic_ncols=True)
        self.start = time.perf_counter()
        self.seen: dict = {}

    def poll(self, store: DistributedIndex, slots: list) -> None:
        ray = require_ray()
        for slot in slots:
            try:
                self.seen[slot] = ray.get(store.workers[slot].progress.remote(), timeout=5)
            except Exception:  # a dead or busy actor: keep its last numbers
                pass
        docs = sum(d for d, _ in self.seen.values())
        tokens = sum(t for _, t in self.seen.values())
        self.docs.update(max(0, docs - self.docs.n))
        self.tokens.update(max(0, tokens - self.tokens.n))
        self.tokens.set_postfix_str(f"{tokens / max(time.perf_counter() - self.start, 1e-9):,.0f} tok/s",
                                    refresh=False)

    def close(self, store: DistributedIndex) -> None:
        try:
            self.poll(store, list(self.seen))
        finally:
            self.docs.close()
            self.tokens.close()


def _unwrap(get):
    """Run `get()` (a ray.get); an exception raised inside an actor method is re-raised as itself."""
    ray = require_ray()
    try:
        return get()
    except ray.exceptions.RayActorError:
        raise
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise








def _folder_bytes(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
