"""Needle *answering* (issue 7): exact-match answers from FwPKM memory vs a reader over each retriever's chunks.

Three ways to answer one RULER-style item (the same items and chunks as the retrieval sweep):

* **FwPKM generation** — :func:`fwpkm_rag.benchmarks.niah.ask_from_memory`: the haystack streams through
  the model's memory, then "Question: ...\\nAnswer: <the needle's words before the value>" is completed
  greedily with the memory frozen. Correct when the generation starts with the value (``niah.is_correct``).
  The *memory-frozen* ablation streams the same text with every write off.
* **Reader + retriever** — SmolLM2-135M-Instruct (the library's default reader, ``modeling.reader``) is
  given each retriever's top chunks at an **equal token budget** (``budget`` tokens of context, i.e. the best
  ``budget // chunk_size`` chunks in rank order) and the question, through its chat template. Correct when the
  value appears in its reply (a chat model phrases a sentence around it; ``startswith`` would punish that).
  An *oracle* row (the gold chunk alone) is the reader's ceiling.
* **Closed-book floor** — the reader with no context at all.

Identical contexts (two retrievers returning the same chunks) are answered once: greedy decoding is
deterministic, so the reply is reused rather than recomputed.
"""
from __future__ import annotations

import hashlib
import time
from typing import Optional

from fwpkm_rag.benchmarks.niah import answer_prompt, ask_from_memory, is_correct
from fwpkm_rag.modeling.reader import load_reader, reader_status

READER_SYSTEMS = ("fwpkm", "bm25", "minilm-faiss-flat", "minilm-faiss-hnsw")


class Reader:
    """SmolLM2-135M-Instruct as a plain reader (no memory): the library's default reader
    (`fwpkm_rag.modeling.reader.load_reader`, offline), answering through ChatFwPKM's reader path
    (`generation.stream_answer` in reader mode: the reader prompt through the chat template, the one decode
    loop). Replies to identical prompts are memoised (greedy decoding is deterministic)."""

    def __init__(self, max_context_tokens: int = 2048):
        why = reader_status()
        if why:
            raise ImportError(why)
        start = time.perf_counter()
        self.model = load_reader()
        self.load_s = time.perf_counter() - start
        self.max_context_tokens = max_context_tokens
        self._memo: dict[str, str] = {}
        self.calls = 0

    def answer(self, question: str, context: Optional[str], max_new_tokens: int = 32) -> str:
        from fwpkm_rag.pipelines.generation import reader_prompt, stream_answer

        content = reader_prompt(question, context)
        key = hashlib.sha256(f"{max_new_tokens}\x00{content}".encode()).hexdigest()
        if key not in self._memo:
            self._memo[key] = "".join(stream_answer([("user", content)], mode="reader", reader=self.model,
                                                    max_new_tokens=max_new_tokens))
            self.calls += 1
        return self._memo[key]


def reader_correct(reply: str, answer: str) -> bool:
    """The value appears in the reply (case-insensitive; whitespace collapsed)."""
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    return norm(answer) in norm(reply)


def context_from(chunks: list[str], ranked: list[int], budget: int, chunk_size: int) -> tuple[str, list[int]]:
    """The best ``budget // chunk_size`` chunks (at least one), in rank order, joined by blank lines."""
    n = max(1, budget // chunk_size)
    chosen = ranked[:n]
    return "\n\n".join(chunks[i] for i in chosen), chosen


def answer_item(item, chunked, built: dict, model, tokenizer, reader: Optional[Reader], *, budget: int,
                chunk_size: int, k: int = 5) -> list[dict]:
    """All answer rows for one item (FwPKM generation, frozen ablation, reader per retriever, oracle, floor)."""
    base = dict(length=item.length, depth=item.depth, distractors=item.n_distractors, template=item.template,
                answer=item.answer)
    rows = []
    max_new = len(tokenizer.encode(" " + item.answer)) + 2
    for frozen in (False, True):
        start = time.perf_counter()
        gen, rate = ask_from_memory(model, tokenizer, item.text, answer_prompt(item), max_new_tokens=max_new,
                                    frozen=frozen)
        rows.append(dict(base, method="fwpkm-generation" + (" (memory frozen)" if frozen else ""),
                         output=gen, correct=is_correct(gen, item.answer), seconds=time.perf_counter() - start,
                         context_chunks=None, gold_in_context=None))
    if reader is None:
        return rows
    gold = set(chunked.gold_chunks)
    reader_new = max_new + 24  # room for a short sentence around the value
    for name, b in built.items():
        ranked = [i for i, _ in b.system.search(item.question, k)]
        ctx, chosen = context_from(chunked.chunks, ranked, budget, chunk_size)
        start = time.perf_counter()
        reply = reader.answer(item.question, ctx, reader_new)
        rows.append(dict(base, method=f"reader + {name}", output=reply, correct=reader_correct(reply, item.answer),
                         seconds=time.perf_counter() - start, context_chunks=chosen,
                         gold_in_context=bool(gold & set(chosen))))
    ctx = "\n\n".join(chunked.chunks[i] for i in sorted(gold))
    reply = reader.answer(item.question, ctx, reader_new)
    rows.append(dict(base, method="reader + oracle (gold chunk)", output=reply,
                     correct=reader_correct(reply, item.answer), seconds=None, context_chunks=sorted(gold),
                     gold_in_context=True))
    reply = reader.answer(item.question, None, reader_new)
    rows.append(dict(base, method="reader closed-book (floor)", output=reply,
                     correct=reader_correct(reply, item.answer), seconds=None, context_chunks=[],
                     gold_in_context=False))
    return rows
