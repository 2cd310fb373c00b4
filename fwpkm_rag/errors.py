"""Exception classes of fwpkm-rag.

Every error the library raises on bad input derives from :class:`FwPKMError`, and also from the built-in class
a caller would expect (``ValueError`` for a bad value, ``TypeError`` for a bad type), so ``except ValueError``
keeps working.
"""
from __future__ import annotations


class FwPKMError(Exception):
    """Base class of every error raised by fwpkm-rag."""


class ConfigError(FwPKMError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class InputError(FwPKMError, ValueError):
    """A tensor or value handed to the library has the wrong shape, dtype, device or content."""


class StateError(FwPKMError, ValueError):
    """A memory state does not fit the layer or the call it is used with."""


class StateFormatError(FwPKMError, ValueError):
    """A saved memory state cannot be read: truncated, corrupted, or written by another format version."""


class ModelMismatchError(FwPKMError, ValueError):
    """A saved store or memory was built with another model (config or weights differ) than the one given."""


class InputTypeError(InputError, TypeError):
    """A value handed to the library has the wrong type (bytes instead of str, an id that is not a str, ...)."""


class DuplicateIdError(InputError):
    """The same document id appears twice in one add call (ids within one batch must be unique)."""


class QueryTooLongError(InputError):
    """A question or prompt has more tokens than the store's `max_query_tokens` limit."""


class DocumentTooLargeError(InputError):
    """A document has more characters than the store's `max_document_chars` limit (opt in to huge documents by
    raising the limit or passing `max_document_chars=None`)."""


def check_int(name: str, value, low: int | None = None, *, error: type = None, optional: bool = False):
    """`value` as an int (bools refused) that is >= `low`; raises `error` (default ConfigError) naming `name`.

    `optional=True` lets None through (returned as is). The one place for the "an int >= N, got ..." rule.
    """
    import numbers

    error = ConfigError if error is None else error
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        none = "None or " if optional else ""
        raise error(f"{name} must be {none}an int{bound}, got {value!r}")
    return int(value)
