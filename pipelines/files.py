"""Text files as documents: reading with clear errors, and the (id, text, metadata) items `MemoryIndex.add` takes."""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional

from fwpkm_rag.errors import DocumentTooLargeError, InputError, InputTypeError


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


def file_documents(paths: Iterable, max_chars: Optional[int] = None) -> Iterator[tuple[str, str, dict]]:
    """(id = the path, text, {"source": path}) per file, read one at a time as the caller iterates."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise InputTypeError("add_files() takes an iterable of paths; wrap a single path in a list")

    def items():  # a generator inside, so that the check above runs when called, not on first iteration
        for path in paths:
            if not isinstance(path, (str, os.PathLike)):
                raise InputTypeError(f"add_files() takes str or os.PathLike paths, got {type(path).__name__}")
            yield os.fspath(path), read_text_file(path, max_chars), {"source": os.fspath(path)}

    return items()
