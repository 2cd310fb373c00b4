"""Answer generation from a memory: prompt formatting, token streaming with stop sequences, seeded sampling.

Used by `ChatFwPKM`; no LangChain here. Generation runs on a cache whose memories are either a store's (read
only: the store is never changed by a question) or fresh (a private memory that the prompt writes as usual).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from fwpkm_rag.errors import InputError

ROLES = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}


def format_prompt(tok, messages: Sequence[tuple[str, str]], prompt_format: str = "chat") -> list[int]:
    """Token ids of a conversation, ending where the assistant's answer starts.

    "chat": eos, then per message its role token (<|system|>, <|user|>, <|assistant|>) and its text, then
    <|assistant|>. "qa": the last user message as "\\n\\nQuestion: ...\\nAnswer:" (the format the shipped model
    was trained on), after the system text if any.
    """
    if prompt_format == "chat":
        if hasattr(tok, "chat_ids"):  # a transformers tokenizer with its own chat template (HFTokenizer)
            for role, _ in messages:
                if role not in ROLES:
                    raise InputError(f"unknown message role {role!r}; expected one of {sorted(ROLES)}")
            return tok.chat_ids(list(messages))
        special = tok.special_ids
        ids = [tok.eos_id]
        for role, text in messages:
            if role not in ROLES:
                raise InputError(f"unknown message role {role!r}; expected one of {sorted(ROLES)}")
            ids.append(special[ROLES[role]])
            ids += tok.encode(text)
        ids.append(special[ROLES["assistant"]])
        return ids
    if prompt_format == "qa":
        system = "\n".join(t for r, t in messages if r == "system")
        users = [t for r, t in messages if r == "user"]
        question = users[-1] if users else (messages[-1][1] if messages else "")
        return [tok.eos_id] + tok.encode((system + "\n" if system else "") + f"\n\nQuestion: {question}\nAnswer:")
    raise InputError(f"prompt_format must be 'chat' or 'qa', got {prompt_format!r}")


def special_token_mask(tok, size: int) -> torch.Tensor:
    """(size,) bool: True at the ids that end an answer (special tokens, and ids the tokenizer does not have)."""
    mask = torch.zeros(size, dtype=torch.bool)
    ids = getattr(tok, "special_token_ids", None)
    if ids is None:  # the project tokenizer: every id from k_ranks on is special
        mask[tok.k_ranks:] = True
    else:
        mask[[i for i in ids if i < size]] = True
        mask[tok.vocab_size:] = True
    return mask


def reader_prompt(question: str, context: Optional[str]) -> str:
    """The user message of a classic RAG reader: the retrieved text, then the question (closed-book without)."""
    if context:
        return (f"Read the text and answer the question.\n\nText:\n{context}\n\n"
                f"Question: {question}\nReply with the answer only.")
    return f"Question: {question}\nReply with the answer only."


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


@torch.no_grad()
def stream_generate(model, cache, prompt_ids: list[int], *, read_only: bool, max_new_tokens: Optional[int] = 64,
                    temperature: float = 0.0, top_p: float = 1.0, seed: Optional[int] = 0,
                    stop: Optional[Sequence[str]] = None, timeout: Optional[float] = None,
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
    hold = max((len(s) for s in stop), default=1) - 1
    limit = 2**31 if max_new_tokens is None else int(max_new_tokens)
    gen = None
    if temperature and temperature > 0:
        gen = torch.Generator(device="cpu").manual_seed(int(seed) if seed is not None else int(time.time_ns() % 2**31))
    device = model.embed_tokens.weight.device
    start = time.perf_counter()
    x = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits = model(x, cache=cache, read_only=read_only, logits_to_keep=1).logits[0, -1].float().cpu()
    special = special_token_mask(tok, logits.shape[-1])
    buf, text, emitted, cut = _Utf8Buffer(), "", 0, -1
    stats.finish_reason = "length"
    for step in range(limit):
        if timeout is not None and time.perf_counter() - start > timeout:
            raise TimeoutError(f"generation took longer than timeout={timeout} s")
        if step == 0:
            logits[special] = float("-inf")  # an answer starts with text
        if gen is None:
            nxt = int(logits.argmax())
        else:
            probs = torch.softmax(logits / temperature, -1)
            if top_p < 1.0:
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if special[nxt]:
            stats.finish_reason = "stop"
            break
        stats.output_tokens += 1
        text += buf.push(tok.decode_bytes([nxt]))
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
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
            logits = model(torch.tensor([[nxt]], device=device), cache=cache, read_only=read_only,
                           logits_to_keep=1).logits[0, -1].float().cpu()
    if cut < 0:  # not ended by a stop sequence: release what was held back
        text += buf.finish()
        if stop:
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
        if len(text) > emitted:
            yield text[emitted:]
    stats.seconds = time.perf_counter() - start
