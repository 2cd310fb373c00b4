"""LangChain integration: `FwPKMStore` (VectorStore), `FwPKMRetriever` (BaseRetriever), `ChatFwPKM` (BaseChatModel).

Thin classes over the core in ingest.py / retrieval.py / persistence.py / generation.py.

Two views of a search result (docs/usage.md):
- `similarity_search[_with_score]` return Documents exactly as stored: page_content = the chunk text,
  metadata = the parent document's metadata unchanged, id = the parent document's id (LangChain's contract).
- `search_with_provenance` returns `Hit`s, and `FwPKMRetriever` (also `store.as_retriever()`) returns Documents
  whose metadata carries one extra key, "fwpkm": {chunk_id, chunk_index, score, rank, source, matched_slots}.
"""
from __future__ import annotations

import os
from typing import Any, AsyncIterator, Iterable, Iterator, Optional, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.callbacks.manager import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict, Field

from fwpkm_rag.errors import DocumentTooLargeError, InputError, InputTypeError, QueryTooLongError
from fwpkm_rag.pipelines.generation import GenerationStats, format_prompt, reader_prompt, stream_generate
from fwpkm_rag.pipelines.ingest import DEFAULT_MAX_DOCUMENT_CHARS, MemoryIndex
from fwpkm_rag.pipelines.retrieval import Hit, check_k, query_cache, rank_chunks


def _default_model():
    from fwpkm_rag.default_model import load_default_model  # lazy: the shipped checkpoint is optional here

    return load_default_model()


def read_text_file(path, max_chars: Optional[int] = None) -> str:
    """A file's text (UTF-8), with clear errors for missing, unreadable or non-UTF-8 files. A file of more than
    4 x `max_chars` bytes (more than `max_chars` characters whatever it holds) raises DocumentTooLargeError
    without being read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder: pass files (e.g. a shell glob of them)")
    size = os.path.getsize(path)
    if max_chars is not None and size > 4 * max_chars:  # UTF-8: at most 4 bytes per character
        raise DocumentTooLargeError(
            f"{path} is {size:,} bytes, so at least {-(-size // 4):,} characters, over the limit of {max_chars:,} "
            "(max_document_chars): split it into several files, or opt in with max_document_chars=None "
            "(CLI: --max-document-chars 0)")
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                         "convert it (e.g. iconv -t utf-8) or pass its text decoded yourself") from None


class FwPKMStore(VectorStore):
    """A LangChain vector store whose index is an FwPKM language model's memory (no embeddings).

    `FwPKMStore(model=None, chunk_tokens=256, chunk_overlap=0, ...)`: with no model, the shipped default
    (`fwpkm_rag.load_default_model()`). Each store has its own isolated memory (one collection).

    `max_document_chars` (default 10,000,000, about 2.5M tokens): a longer document raises
    DocumentTooLargeError before it is tokenized and its add call changes nothing; pass None (here or to one
    add call) to ingest documents of any size, in memory proportional to the document (about 6 bytes per
    character on top of the text itself) and at the model's usual tokens/s.
    """

    def __init__(self, model=None, *, chunk_tokens: int = 256, chunk_overlap: int = 0, piece_tokens: int = 2048,
                 per_slot: int = 32, passes: int = 1, show_progress: bool = False, max_query_tokens: Optional[int] = None,
                 max_document_chars: Optional[int] = DEFAULT_MAX_DOCUMENT_CHARS, _index: Optional[MemoryIndex] = None):
        if _index is None:
            model = model if model is not None else _default_model()
            _index = MemoryIndex(model, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
                                 piece_tokens=piece_tokens, per_slot=per_slot, passes=passes,
                                 show_progress=show_progress, max_query_tokens=max_query_tokens,
                                 max_document_chars=max_document_chars)
        self.index = _index

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def model(self):
        return self.index.model

    @property
    def embeddings(self) -> Optional[Embeddings]:
        return None  # no embedding model: the memory is the index

    def __len__(self) -> int:
        with self.index.snapshot() as (view, db):
            return view.docs.n_documents(db)

    def __repr__(self) -> str:
        return (f"FwPKMStore(documents={len(self)}, chunks={self.index.n_live_chunks}, "
                f"tokens_ingested={self.index.tokens_ingested}, chunk_tokens={self.index.chunk_tokens})")

    # ---- adding -------------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: Optional[Iterable[dict]] = None, *,
                  ids: Optional[Iterable[Optional[str]]] = None, **kwargs: Any) -> list[str]:
        """Stream texts (any iterable, e.g. a generator) into the memory; returns their ids."""
        if isinstance(texts, (str, bytes, bytearray)):
            raise InputTypeError("add_texts() takes an iterable of texts; wrap a single text in a list")
        if isinstance(metadatas, dict):
            raise InputTypeError("metadatas must be an iterable of dicts (one per text), got a single dict")
        _check_ids_arg(ids, "add_texts")
        meta_it = iter(metadatas) if metadatas is not None else None
        id_it = iter(ids) if ids is not None else None

        def items():
            for n, text in enumerate(texts):
                meta = _next(meta_it, "metadatas", n) if meta_it is not None else None
                doc_id = _next(id_it, "ids", n) if id_it is not None else None
                yield doc_id, text, meta

        return self.index.add(items(), **_add_kwargs(kwargs))

    def add_documents(self, documents: Iterable[Document], **kwargs: Any) -> list[str]:
        """Stream Documents (any iterable); ids from `ids=` or else each Document's own id (or new uuids)."""
        if isinstance(documents, Document):
            raise InputTypeError("add_documents() takes an iterable of Documents; wrap a single Document in a list")
        ids = kwargs.pop("ids", None)
        _check_ids_arg(ids, "add_documents")
        id_it = iter(ids) if ids is not None else None

        def items():
            for n, doc in enumerate(documents):
                if not isinstance(doc, Document):
                    raise InputTypeError(f"add_documents() takes Documents, got {type(doc).__name__} at #{n}")
                doc_id = _next(id_it, "ids", n) if id_it is not None else doc.id
                yield doc_id, doc.page_content, dict(doc.metadata)

        return self.index.add(items(), **_add_kwargs(kwargs))

    def add_files(self, paths: Iterable, **kwargs: Any) -> list[str]:
        """Ingest text files one by one (each a document; id = its path, metadata {"source": path})."""

        if isinstance(paths, (str, bytes, os.PathLike)):
            raise InputTypeError("add_files() takes an iterable of paths; wrap a single path in a list")
        add_kwargs = _add_kwargs(kwargs)
        limit = add_kwargs.get("max_document_chars", self.index.max_document_chars)

        def items():
            for path in paths:
                if not isinstance(path, (str, os.PathLike)):
                    raise InputTypeError(f"add_files() takes str or os.PathLike paths, got {type(path).__name__}")
                yield os.fspath(path), read_text_file(path, limit), {"source": os.fspath(path)}

        return self.index.add(items(), **add_kwargs)

    @classmethod
    def from_texts(cls, texts: Iterable[str], embedding: Optional[Embeddings] = None,
                   metadatas: Optional[Iterable[dict]] = None, *, ids: Optional[Iterable[str]] = None,
                   model=None, **kwargs: Any) -> "FwPKMStore":
        """A new store holding `texts`. `embedding` is accepted for LangChain compatibility and ignored."""
        store_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _STORE_ARGS}
        store = cls(model=model, **store_kwargs)
        store.add_texts(texts, metadatas, ids=ids, **kwargs)
        return store

    @classmethod
    def from_documents(cls, documents: Iterable[Document], embedding: Optional[Embeddings] = None, *,
                       model=None, **kwargs: Any) -> "FwPKMStore":
        store_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _STORE_ARGS}
        store = cls(model=model, **store_kwargs)
        store.add_documents(documents, **kwargs)
        return store

    # ---- deleting and reading back ------------------------------------------------------------------------
    def delete(self, ids: Optional[Sequence[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Drop documents by id (all when ids is None); their chunks are never returned again."""
        self.index.delete(None if ids is None else _id_list(ids, "delete"))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        ids = _id_list(ids, "get_by_ids")
        with self.index.snapshot() as (view, db):
            return [Document(page_content=text, metadata=meta, id=doc_id)
                    for doc_id, text, meta in view.docs.get_documents(ids, db)]

    def rebuild(self, **kwargs: Any) -> "FwPKMStore":
        """Re-ingest the live documents into a fresh memory and provenance table, so that deleted or replaced
        content is gone from the fast weights too (a delete alone only hides its chunks from retrieval).
        Costs a full re-ingestion; readers keep being served from the old state until the swap."""
        add_kwargs = _add_kwargs(kwargs)
        add_kwargs.pop("max_document_chars", None)  # the live documents were admitted already
        self.index.rebuild(**add_kwargs)
        return self

    # ---- search -------------------------------------------------------------------------------------------
    def search_with_provenance(self, query: str, k: int = 4, *, matched_slots: int = 8) -> list[Hit]:
        """Hits with their provenance: chunk id and index, score, rank, the parent's metadata, matched slots."""
        return rank_chunks(self.index, query, k, with_matches=matched_slots > 0, match_top=matched_slots)

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return [(Document(page_content=h.text, metadata=h.metadata, id=h.doc_id), h.score)
                for h in rank_chunks(self.index, query, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self):
        return lambda score: score / (1.0 + score)  # memory scores are >= 0; map to [0, 1)

    def as_retriever(self, **kwargs: Any) -> "FwPKMRetriever":
        """A FwPKMRetriever over this store (Documents with the "fwpkm" provenance metadata).

        Accepts LangChain's `search_kwargs={"k": 4}` as well as `k=4`."""
        search_kwargs = kwargs.pop("search_kwargs", None) or {}
        kwargs.pop("search_type", None)
        k = kwargs.pop("k", search_kwargs.get("k", 4))
        return FwPKMRetriever(store=self, k=k, **kwargs)

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, directory) -> str:
        """Snapshot the store into `directory` atomically; returns the snapshot folder."""
        from fwpkm_rag.pipelines.persistence import save_index

        return save_index(self.index, directory)

    @classmethod
    def load(cls, directory, model=None, **overrides: Any) -> "FwPKMStore":
        """Load the current snapshot of a store folder. `model` must be the model it was built with (default:
        the shipped model); raises ModelMismatchError otherwise, StateFormatError for a corrupted snapshot."""
        from fwpkm_rag.pipelines.persistence import load_index

        model = model if model is not None else _default_model()
        return cls(_index=load_index(directory, model, **overrides))

    def close(self) -> None:
        self.index.docs.close()


_STORE_ARGS = {"chunk_tokens", "chunk_overlap", "piece_tokens", "per_slot", "passes", "show_progress",
               "max_query_tokens", "max_document_chars"}


def _check_ids_arg(ids, where: str) -> None:
    if isinstance(ids, (str, bytes, bytearray)):
        raise InputTypeError(f"{where}(): ids must be a list of str (one per text), got a single {type(ids).__name__}")


def _id_list(ids, where: str) -> list[str]:
    """A list of str ids; a bare str (which would iterate as characters) or non-str ids raise."""
    if isinstance(ids, (str, bytes, bytearray)):
        raise InputTypeError(f"{where}() takes a list of ids, got a single {type(ids).__name__} {ids!r}; "
                             f"wrap it in a list")
    out = list(ids)
    for n, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            raise InputTypeError(f"{where}(): ids must be str, got {type(doc_id).__name__} {doc_id!r} at #{n}")
    return out


def _add_kwargs(kwargs: dict) -> dict:
    out = {k: kwargs.pop(k) for k in ("passes", "show_progress", "max_document_chars") if k in kwargs}
    return out


def _next(it, what: str, n: int):
    try:
        return next(it)
    except StopIteration:
        raise InputError(f"{what} has fewer entries than the texts (ran out at #{n})") from None


class FwPKMRetriever(BaseRetriever):
    """Retriever over a FwPKMStore: Documents with the parent's metadata plus "fwpkm" provenance."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 4
    matched_slots: int = 8

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: Optional[int] = None) -> list[Document]:
        hits = self.store.search_with_provenance(query, check_k(self.k if k is None else k),
                                                 matched_slots=self.matched_slots)
        return [Document(page_content=h.text, metadata={**h.metadata, "fwpkm": h.provenance()}, id=h.doc_id)
                for h in hits]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: Optional[int] = None) -> list[Document]:
        from langchain_core.runnables.config import run_in_executor

        return await run_in_executor(None, self._get_relevant_documents, query,
                                     run_manager=run_manager.get_sync(), k=k)


def _role(message: BaseMessage) -> str:
    kind = message.type
    if kind in ("human", "user"):
        return "user"
    if kind in ("ai", "assistant"):
        return "assistant"
    if kind in ("system", "developer"):
        return "system"
    if kind == "tool":
        return "user"
    if kind == "chat":
        role = getattr(message, "role", "user")
        return role if role in ("system", "user", "assistant") else "user"
    raise InputError(f"ChatFwPKM cannot format a {kind!r} message")


class ChatFwPKM(BaseChatModel):
    """A chat model that answers from an FwPKM model's memory by generation.

    `ChatFwPKM(store=store)`: the store's model, reading the store's memory (read only: a question never changes
    the store). `ChatFwPKM(model=m)`: a given FwPKMForCausalLM with a fresh memory per call. Neither: the
    shipped default model with a fresh memory.

    `mode="reader"` (with a store): classic RAG with the same model — the store's top `k` chunks for the last
    user message are put in the prompt (`generation.reader_prompt`) and the model reads them with its memory
    off (an attached backbone's `as_reader()`); `response_metadata["sources"]` names those chunks.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    store: Optional[Any] = Field(default=None, exclude=True)
    model: Optional[Any] = Field(default=None, exclude=True)  # an FwPKMForCausalLM
    model_name: str = "fwpkm-rag"
    temperature: float = 0.0
    max_tokens: Optional[int] = 32
    top_p: float = 1.0
    seed: Optional[int] = 0
    timeout: Optional[float] = None
    stop: Optional[list[str]] = Field(default=None, alias="stop_sequences")
    max_retries: int = 0  # local model: nothing to retry; accepted for LangChain compatibility
    prompt_format: str = "chat"  # "chat" (role special tokens) or "qa" ("Question: ...\nAnswer:")
    # "memory": answer from the store's memory by generation; "reader": classic RAG with the same backbone —
    # the store retrieves `k` chunks for the last user message and the model reads them (memory off).
    mode: str = "memory"
    k: int = 4

    @property
    def _llm_type(self) -> str:
        return "fwpkm-chat"

    @property
    def _identifying_params(self) -> dict:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "prompt_format": self.prompt_format, "bound_to_store": self.store is not None, "mode": self.mode}

    def _lm(self):
        if self.store is not None:
            return self.store.model
        if self.model is None:
            self.model = _default_model()
        return self.model

    def _cache(self, lm, view=None):
        if self.store is not None:
            return query_cache(lm, view), True  # the store's published memory, read only
        return lm.init_cache(1), False

    def _stream_text(self, messages: list[BaseMessage], stop: Optional[list[str]], stats: GenerationStats, **kwargs):
        lm = self._lm()
        tok = lm.get_tokenizer()
        conv = [(_role(m), m.text if hasattr(m, "text") else str(m.content)) for m in messages]
        for n, (_, text) in enumerate(conv):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"message #{n} is not valid Unicode: {text[exc.start]!r} at index {exc.start}") from None
        mode = kwargs.get("mode", self.mode)
        if mode not in ("memory", "reader"):
            raise InputError(f"mode must be 'memory' or 'reader', got {mode!r}")
        if mode == "reader":
            lm, conv = self._reader_conversation(lm, conv, kwargs.get("k", self.k), stats)
            tok = lm.get_tokenizer()
        prompt = format_prompt(tok, conv, kwargs.get("prompt_format", self.prompt_format))
        limit = self.store.index.max_query_tokens if self.store is not None else MemoryIndex.max_query_tokens
        if len(prompt) > limit:
            raise QueryTooLongError(f"the prompt is {len(prompt):,} tokens, over the limit of {limit:,} "
                                    "(max_query_tokens); shorten the conversation")
        max_new = kwargs.get("max_tokens", self.max_tokens)
        if max_new is not None and (isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1):
            raise InputError(f"max_tokens must be None or an int >= 1, got {max_new!r}")
        stops = list(stop if stop is not None else (self.stop or []))
        # The store's published view: a concurrent add is seen whole or not at all, and never waited for.
        view = self.store.index.view if self.store is not None else None
        if mode == "reader":
            cache, read_only = lm.init_cache(1), True  # the reader's own fresh cache: the store is never touched
        else:
            cache, read_only = self._cache(lm, view)
        yield from stream_generate(
            lm, cache, prompt, read_only=read_only,
            max_new_tokens=max_new,
            temperature=kwargs.get("temperature", self.temperature), top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed), stop=stops, timeout=kwargs.get("timeout", self.timeout),
            stats=stats)

    def _reader_conversation(self, lm, conv: list, k, stats: GenerationStats):
        """(reader model, conversation): the store's top-k chunks for the last user message, in the classic RAG
        prompt (generation.reader_prompt); an attached backbone reads with its memory off (`as_reader`)."""
        if self.store is None:
            raise InputError("mode='reader' needs a store to retrieve from: ChatFwPKM(store=store, mode='reader')")
        users = [t for r, t in conv if r == "user"]
        if not users:
            raise InputError("mode='reader' needs a user message (the question)")
        hits = rank_chunks(self.store.index, users[-1], check_k(k))
        stats.sources = [{"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score} for h in hits]
        context = "\n\n".join(h.text for h in hits)
        reader = lm.as_reader() if hasattr(lm, "as_reader") else lm
        return reader, [(r, t) for r, t in conv if r == "system"] + [("user", reader_prompt(users[-1], context))]

    def _usage(self, stats: GenerationStats) -> UsageMetadata:
        return UsageMetadata(input_tokens=stats.input_tokens, output_tokens=stats.output_tokens,
                             total_tokens=stats.input_tokens + stats.output_tokens)

    def _generate(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        stats = GenerationStats()
        text = "".join(self._stream_text(messages, stop, stats, **kwargs))
        meta = {"model_name": self.model_name, "finish_reason": stats.finish_reason}
        if stats.sources:
            meta["sources"] = stats.sources  # reader mode: the chunks the answer was read from
        message = AIMessage(content=text, usage_metadata=self._usage(stats), response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=dict(meta))])

    def _stream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        stats = GenerationStats()
        first = True
        for piece in self._stream_text(messages, stop, stats, **kwargs):
            usage = None
            if first:  # input tokens are counted once, on the first chunk
                usage = UsageMetadata(input_tokens=stats.input_tokens, output_tokens=0, total_tokens=stats.input_tokens)
                first = False
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, usage_metadata=usage))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        out_usage = UsageMetadata(input_tokens=0 if not first else stats.input_tokens,
                                  output_tokens=stats.output_tokens,
                                  total_tokens=stats.output_tokens + (0 if not first else stats.input_tokens))
        meta = {"model_name": self.model_name, "finish_reason": stats.finish_reason}
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=out_usage, response_metadata=meta,
                                                         chunk_position="last"),
                                  generation_info=meta)

    async def _astream(self, messages: list[BaseMessage], stop: Optional[list[str]] = None,
                       run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        import asyncio
        import threading

        # The whole generation runs in one worker thread (it holds the store's lock while it reads the
        # memory); chunks come back through a queue.
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        def produce():
            try:
                for chunk in self._stream(messages, stop, None, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        threading.Thread(target=produce, daemon=True, name="fwpkm-chat-stream").start()
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            if run_manager:
                await run_manager.on_llm_new_token(item.text, chunk=item)
            yield item
