"""`HFTokenizer`: a transformers tokenizer behind the project's `Tokenizer` protocol (fwpkm_rag.tokenizer).

Used for FwPKM attached to a pretrained decoder (SmolLM2's byte-level BPE): encode / decode / decode_bytes,
eos_id, special ids, token byte lengths (for provenance offsets), chat prompts through the tokenizer's own
template, and the mask of ids that end an answer.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from fwpkm_rag.errors import ConfigError, InputError
from fwpkm_rag.tokenizer import FwPKMTokenizer, check_roles, check_text, check_token_ids


def _byte_decoder() -> dict:
    """GPT-2 byte-level BPE: the printable character standing for each byte -> that byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


class HFTokenizer:
    """A transformers tokenizer behind the project tokenizer's interface (encode/decode/decode_bytes, eos_id,
    special ids, chat prompts). Text is always encoded as text: a literal "<|im_end|>" in a document never
    becomes the special token."""

    def __init__(self, hf_tokenizer, *, separator: Optional[str] = None):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        added = getattr(hf_tokenizer, "added_tokens_decoder", {}) or {}
        self._special_ids = {tok.content: int(i) for i, tok in added.items() if getattr(tok, "special", True)}
        for name in ("eos_token", "bos_token", "pad_token", "unk_token"):
            content = getattr(hf_tokenizer, name, None)
            if content and content not in self._special_ids:
                tid = hf_tokenizer.convert_tokens_to_ids(content)
                if tid is not None:
                    self._special_ids[content] = int(tid)
        sep = separator or ("<|endoftext|>" if "<|endoftext|>" in self._special_ids else hf_tokenizer.eos_token)
        if sep is None or sep not in self._special_ids:
            raise ConfigError("the tokenizer has no end-of-text / eos special token to separate documents with")
        self.eos_id = self._special_ids[sep]  # document separator (the project's eos_id meaning)
        self.bos_id = self.eos_id
        pad = getattr(hf_tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self.special_token_ids = frozenset(self._special_ids.values())
        self._bytes: Optional[list] = None
        self._lengths: Optional[np.ndarray] = None

    @property
    def special_ids(self) -> dict:
        return dict(self._special_ids)

    @property
    def name(self) -> str:
        return getattr(self.hf, "name_or_path", type(self.hf).__name__)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.hf).__name__}, vocab_size={self.vocab_size})"

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list:
        text = check_text(text)
        ids = list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)) if text else []
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self) -> list:
        """Bytes of every token id (special tokens: their names' UTF-8 bytes)."""
        if self._bytes is None:
            dec = _byte_decoder()
            pieces = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
            specials = {i: c for c, i in self._special_ids.items()}
            out = []
            for i, piece in enumerate(pieces):
                if i in specials:
                    out.append(specials[i].encode("utf-8"))
                elif piece is not None and all(ch in dec for ch in piece):
                    out.append(bytes(dec[ch] for ch in piece))
                else:  # not a byte-level BPE piece: its decoded text
                    out.append(self.hf.decode([i]).encode("utf-8"))
            self._bytes = out
        return self._bytes

    def token_byte_lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = np.asarray([len(b) for b in self.token_bytes()], dtype=np.int32)
        return self._lengths


    def _check_ids(self, ids) -> list:
        return check_token_ids(ids, self.vocab_size)

    def decode_bytes(self, ids) -> bytes:
        table = self.token_bytes()
        return b"".join(table[i] for i in self._check_ids(ids))

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def chat_ids(self, messages) -> list:
        """Token ids of a conversation [(role, text), ...] through the tokenizer's chat template, ending where
        the assistant's answer starts. InputError for a role other than system / user / assistant."""
        messages = list(messages)
        check_roles(messages)
        if not getattr(self.hf, "chat_template", None):
            raise ConfigError("this tokenizer has no chat template: use prompt_format='qa'")
        conv = [{"role": r, "content": t} for r, t in messages]
        out = self.hf.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys") and "input_ids" in out:
            out = out["input_ids"]
        if hasattr(out, "tolist"):
            out = out.tolist()
        if out and isinstance(out[0], list):
            out = out[0]
        return [int(i) for i in out]

    def special_token_mask(self, size: int) -> torch.Tensor:
        """(size,) bool: True at the ids that end an answer: the tokenizer's special tokens and any id past its
        vocabulary (a model's output rows beyond len(tokenizer))."""
        mask = torch.zeros(size, dtype=torch.bool)
        mask[[i for i in self.special_token_ids if i < size]] = True
        mask[self.vocab_size:] = True
        return mask

    def to_dict(self) -> dict:
        return {"hf_class": type(self.hf).__name__, "name": self.name, "vocab_size": self.vocab_size}


def adapt_tokenizer(tokenizer):
    """The project tokenizer as is; a transformers tokenizer wrapped in HFTokenizer."""
    if tokenizer is None or isinstance(tokenizer, (FwPKMTokenizer, HFTokenizer)):
        return tokenizer
    if hasattr(tokenizer, "convert_ids_to_tokens") and hasattr(tokenizer, "encode"):
        return HFTokenizer(tokenizer)
    raise InputError(f"tokenizer must be a transformers tokenizer or a FwPKMTokenizer, got {type(tokenizer).__name__}")
