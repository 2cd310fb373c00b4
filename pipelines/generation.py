"""Answers: prompt formatting, the one decode loop (`stream_generate`), answers from memory and reader mode.

No LangChain here (`ChatFwPKM` is a thin adapter over `stream_answer`). Every answer path decodes with
`stream_generate`, on a cache whose memories are either a store's (read only: the store is never changed by a
question) or fresh (a private memory that the prompt writes as usual).

Two modes (`stream_answer`):
- "memory": the model answers from the store's memory by generation (the paper's mechanism).
- "reader": classic RAG — a pretrained instruct model (the *reader*, by default SmolLM2-135M-Instruct,
  offline: `modeling.reader.load_reader`) answers from text. With a store, the store's top k chunks for the
  last user message go into its prompt (`reader_prompt`); without one, it reads the conversation as given
  (e.g. a prompt an LCEL chain filled with retrieved chunks). Whatever model indexes the store, the reader is
  a real instruct model: the tiny index model cannot read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from fwpkm_rag.errors import InputError, QueryTooLongError, check_int
from fwpkm_rag.modeling.protocol import MemoryLM, TextDecoder, Tokenizer
from fwpkm_rag.pipelines.retrieval import check_k
from fwpkm_rag.pipelines.segments import SegmentedIndex
from fwpkm_rag.pipelines.settings import DEFAULT_MAX_QUERY_TOKENS

def format_prompt(tok: Tokenizer, messages: Sequence[tuple[str, str]], prompt_format: str = "chat") -> list[int]:
    """Token ids of a conversation, ending where the assistant's answer starts.

    "chat": the tokenizer's chat format (`tok.chat_ids`: for the project tokenizer eos, then per message its
    role token <|system|> / <|user|> / <|assistant|> and its text, then <|assistant|>; a transformers tokenizer
    uses its chat template). "qa": the last user message as "\n\nQuestion: ...\nAnswer:" (the format the
    shipped model was trained on), after the system text if any.
    """
    if prompt_format == "chat":
        return tok.chat_ids(list(messages))
    if prompt_format == "qa":
        system = "\n".join(t for r, t in messages if r == "system")
        users = [t for r, t in messages if r == "user"]
        question = users[-1] if users else (messages[-1][1] if messages else "")
        return [tok.eos_id] + tok.encode((system + "\n" if system else "") + f"\n\nQuestion: {question}\nAnswer:")
    raise InputError(f"prompt_format must be 'chat' or 'qa', got {prompt_format!r}")


READER_TEMPLATE = ("Read the text and answer the question.\n\nText:\n{context}\n\n"
                   "Question: {question}\nReply with the answer only.")
"""The user message of a classic RAG reader, as a format string ({context}, {question}): also usable as a
LangChain prompt template (`ChatPromptTemplate.from_messages([("human", READER_TEMPLATE)])`)."""

CLOSED_BOOK_TEMPLATE = "Question: {question}\nReply with the answer only."


def reader_prompt(question: str, context: Optional[str]) -> str:
    """The user message of a classic RAG reader: the retrieved text, then the question (closed-book without)."""
    if context:
        return READER_TEMPLATE.format(context=context, question=question)
    return CLOSED_BOOK_TEMPLATE.format(question=question)


@dataclass
class GenerationStats:
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = "length"  # "stop" (eos / stop sequence / end of turn) or "length"
    seconds: float = 0.0
    sources: list = field(default_factory=list)  # reader mode: the retrieved chunks the answer was read from


class _Utf8Buffer:
    """Bytes -> text, holding back an incomplete multi-byte character until its last byte arrives."""

    def __init__(self):
        self.pending = b""

    def push(self, data: bytes) -> str:
        self.pending += data
        for cut in range(len(self.pending), max(len(self.pending) - 4, -1), -1):
            try:
                text = self.pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.pending = self.pending[cut:]
            return text
        text = self.pending.decode("utf-8", errors="replace")  # not a prefix of valid UTF-8: give up on it
        self.pending = b""
        return text

    def finish(self) -> str:
        text, self.pending = self.pending.decode("utf-8", errors="replace"), b""
        return text


def _sample(logits: torch.Tensor, gen: Optional[torch.Generator], temperature: float, top_p: float) -> int:
    """The next token from logits (vocab,): argmax without a generator, else temperature + top-p sampling."""
    if gen is None:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, -1)  # (vocab,)
    if top_p < 1.0:
        sp, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp, 0) - sp < top_p  # the smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


def _first_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the first occurrence of any stop string in `text`, -1 if none."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


@torch.no_grad()
def stream_generate(model: TextDecoder, cache, prompt_ids: list[int], *, read_only: bool,
                    max_new_tokens: Optional[int] = 64, temperature: float = 0.0, top_p: float = 1.0,
                    seed: Optional[int] = 0, stop: Optional[Sequence[str]] = None, timeout: Optional[float] = None,
                    stats: Optional[GenerationStats] = None) -> Iterator[str]:
    """Yield the answer's text piece by piece (about one token each).

    Greedy at temperature 0, else seeded sampling (`seed`; top-p nucleus). Ends at eos or any special token
    after the first (the first token is never one: an answer is never empty), at `max_new_tokens`, or before
    the first occurrence of a `stop` string (never emitted). `timeout` (seconds) raises TimeoutError.
    """
    tok = model.get_tokenizer()
    stats = stats if stats is not None else GenerationStats()
    stats.input_tokens = len(prompt_ids)
    stop = [s for s in (stop or []) if s]
    hold = max((len(s) for s in stop), default=1) - 1  # characters held back: a stop string may be starting
    limit = 2**31 if max_new_tokens is None else int(max_new_tokens)
    gen = None
    if temperature and temperature > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) if seed is not None else int(time.time_ns() % 2**31))

    def next_logits(ids: list) -> torch.Tensor:  # (vocab,) logits after feeding ids
        x = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, T)
        return model(x, cache=cache, read_only=read_only, logits_to_keep=1).logits[0, -1].float().cpu()

    start = time.perf_counter()
    logits = next_logits(prompt_ids)
    special = tok.special_token_mask(logits.shape[-1])  # (vocab,) ids that end an answer
    logits[special] = float("-inf")  # an answer starts with text
    buf, text, emitted, cut = _Utf8Buffer(), "", 0, -1
    stats.finish_reason = "length"
    for step in range(limit):
        if timeout is not None and time.perf_counter() - start > timeout:
            raise TimeoutError(f"generation took longer than timeout={timeout} s")
        nxt = _sample(logits, gen, temperature, top_p)
        if special[nxt]:
            stats.finish_reason = "stop"
            break
        stats.output_tokens += 1
        text += buf.push(tok.decode_bytes([nxt]))
        cut = _first_stop(text, stop)
        if cut >= 0:
            if cut > emitted:
                yield text[emitted:cut]
            emitted = cut
            stats.finish_reason = "stop"
            break
        safe = len(text) - hold
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
        if step + 1 < limit:
            logits = next_logits([nxt])
    if cut < 0:  # not ended by a stop sequence: release what was held back
        text += buf.finish()
        end = _first_stop(text, stop) if stop else -1
        if end >= 0:
            text = text[:end]
        if len(text) > emitted:
            yield text[emitted:]
    stats.seconds = time.perf_counter() - start


# ---- answers ----------------------------------------------------------------------------------------------------
MODES = ("memory", "reader")


def check_conversation(conversation: Sequence[tuple[str, str]]) -> None:
    """Every message's text must be valid Unicode (a lone surrogate cannot be tokenized)."""
    for n, (_, text) in enumerate(conversation):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"message #{n} is not valid Unicode: {text[exc.start]!r} at index {exc.start}") from None


def reader_conversation(index: Optional[SegmentedIndex], conversation: list, k, stats: GenerationStats) -> list:
    """The conversation a reader answers. With a store's `index`: its system messages, then the classic RAG
    prompt (`reader_prompt`) over the store's top-k chunks for the last user message, which are named in
    `stats.sources`. Without one: the conversation as given (its prompt already holds the text to read)."""
    if index is None:
        return list(conversation)
    users = [t for r, t in conversation if r == "user"]
    if not users:
        raise InputError("mode='reader' needs a user message (the question)")
    hits = index.search(users[-1], check_k(k))
    stats.sources = [{"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score} for h in hits]
    context = "\n\n".join(h.text for h in hits)
    return [(r, t) for r, t in conversation if r == "system"] + [("user", reader_prompt(users[-1], context))]


def stream_answer(conversation: list, *, model: Optional[MemoryLM] = None, index: Optional[SegmentedIndex] = None,
                  mode: str = "memory", reader: Optional[TextDecoder] = None, k: int = 4,
                  prompt_format: str = "chat", max_new_tokens: Optional[int] = 32, temperature: float = 0.0,
                  top_p: float = 1.0, seed: Optional[int] = 0, stop: Optional[Sequence[str]] = None,
                  timeout: Optional[float] = None, stats: Optional[GenerationStats] = None) -> Iterator[str]:
    """The answer to a conversation [(role, text)], piece by piece.

    "memory" mode: with an `index` (a store's SegmentedIndex), `model` is the store's model and reads, read only,
    the published memory of the segment that retrieval ranks first for the last user message
    (`SegmentedIndex.memory_for`; the only segment when there is one); without an index, `model` answers from
    a fresh private memory. "reader" mode:
    `reader` (default: `load_reader()`, SmolLM2-135M-Instruct) answers through its chat template from the
    store's top `k` chunks when there is an `index`, else from the conversation as given (`model` and
    `prompt_format` are not used). The prompt may hold at most the store's `max_query_tokens` tokens."""
    stats = stats if stats is not None else GenerationStats()
    check_conversation(conversation)
    if mode not in MODES:
        raise InputError(f"mode must be 'memory' or 'reader', got {mode!r}")
    check_int("max_tokens", max_new_tokens, 1, error=InputError, optional=True)
    if mode == "reader":
        conversation = reader_conversation(index, conversation, k, stats)
        if reader is None:
            from fwpkm_rag.modeling.reader import load_reader  # lazy: loads SmolLM2 once (about a second)

            reader = load_reader()
        model, prompt_format = reader, "chat"
    elif model is None:
        raise InputError("mode='memory' needs the model whose memory answers")
    prompt = format_prompt(model.get_tokenizer(), conversation, prompt_format)
    limit = index.settings.max_query_tokens if index is not None else DEFAULT_MAX_QUERY_TOKENS
    if len(prompt) > limit:
        raise QueryTooLongError(f"the prompt is {len(prompt):,} tokens, over the limit of {limit:,} "
                                "(max_query_tokens); shorten the conversation")
    if mode == "reader" or index is None:
        # the reader's own fresh cache (the store is never touched), or a private memory the prompt writes
        cache, read_only = model.init_cache(1), mode == "reader"
    else:
        # a published view: a concurrent add is seen whole or not at all, and never waited for
        users = [t for r, t in conversation if r == "user"]
        memories = index.memory_for(users[-1]) if users else index.view.memory
        cache, read_only = model.init_cache(1, memories=memories), True
    yield from stream_generate(model, cache, prompt, read_only=read_only, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, stop=stop, timeout=timeout,
                               stats=stats)
