"""`ChatFwPKM`: a LangChain BaseChatModel over `generation.stream_answer` (answers from an FwPKM model's memory,
or a pretrained reader over retrieved text). Thin: LangChain messages become (role, text) pairs, the answer's
pieces become message chunks with usage metadata."""
from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Optional

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from fwpkm_rag.errors import InputError
from fwpkm_rag.pipelines.generation import GenerationStats, stream_answer


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
    """A chat model over an FwPKM store: a reader of retrieved text, or the model answering from its memory.

    `mode="reader"`: classic RAG. A pretrained instruct model (`reader`; default SmolLM2-135M-Instruct, offline)
    answers through its chat template. With a store it first retrieves the store's top `k` chunks for the last
    user message (`response_metadata["sources"]` names them); without one it reads the messages as given, e.g.
    in an LCEL chain `{"context": retriever | join, "question": ...} | prompt | ChatFwPKM(mode="reader")`.
    The reader is never the index model: the tiny default model cannot read.

    `mode="memory"` (the default; the paper's mechanism): `ChatFwPKM(store=store)` generates from the store's
    memory (read only: a question never changes the store); `ChatFwPKM(model=m)` from a fresh memory of `m`
    per call; neither: the shipped default model with a fresh memory. Its accuracy is measured, and still low,
    in docs/model-card.md.
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
    reader: Optional[Any] = Field(default=None, exclude=True)  # reader mode's model (default: load_reader())

    @property
    def _llm_type(self) -> str:
        return "fwpkm-chat"

    @property
    def _identifying_params(self) -> dict:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "prompt_format": self.prompt_format, "bound_to_store": self.store is not None, "mode": self.mode}

    def _lm(self, mode: str):
        if mode == "reader":
            return None  # the reader answers; stream_answer loads the default one when `reader` is None
        if self.store is not None:
            return self.store.model
        if self.model is None:
            from fwpkm_rag.default_model import load_default_model  # lazy: the shipped checkpoint is optional

            self.model = load_default_model()
        return self.model

    def _stream_text(self, messages: list[BaseMessage], stop: Optional[list[str]], stats: GenerationStats, **kwargs):
        """The answer's text pieces (generation.stream_answer), with per-call overrides of the fields."""
        conversation = [(_role(m), m.text if hasattr(m, "text") else str(m.content)) for m in messages]
        mode = kwargs.get("mode", self.mode)
        yield from stream_answer(
            conversation, model=self._lm(mode), index=self.store.index if self.store is not None else None,
            mode=mode, reader=self.reader, k=kwargs.get("k", self.k),
            prompt_format=kwargs.get("prompt_format", self.prompt_format),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature), top_p=kwargs.get("top_p", self.top_p),
            seed=kwargs.get("seed", self.seed), stop=list(stop if stop is not None else (self.stop or [])),
            timeout=kwargs.get("timeout", self.timeout), stats=stats)

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
