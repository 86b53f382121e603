"""The exceptions of cas: one base, a subclass per kind of failure.

Raised by the compiled module (``cas._cas``) from the Rust library's error kinds. The message
names the object, key, ref or path and the cause; the operating system's error, if any, is
the ``__cause__`` (an ``OSError``), and ``errno``/``filename`` are copied from it.
"""

from __future__ import annotations

from typing import Optional

__all__ = ["Error", "NotFound", "Corrupt", "Conflict", "Locked", "Malformed", "NotAStore"]


class Error(Exception):
    """Base class of every error cas raises (producer exceptions pass through unchanged)."""

    errno: Optional[int] = None
    filename: Optional[str] = None
    #: The file or directory the error is about (an object, a lock, a ref, the store).
    path: Optional[str] = None
    #: The object's hash, for NotFound and Corrupt objects.
    hash: Optional[str] = None

    def __str__(self) -> str:
        # KeyError would print the message quoted; every cas error prints it as it is.
        return str(self.args[0]) if self.args else ""


class NotFound(Error, KeyError):
    """The object, key or ref does not exist (also a ``KeyError``)."""


class Corrupt(Error):
    """An object's bytes do not hash to its name; it was moved to ``quarantine/``."""


class Conflict(Error):
    """A compare-and-swap lost: the ref or key did not hold the expected value."""


class Locked(Error, TimeoutError):
    """A lock, or another caller's computation, outlasted the timeout (also a ``TimeoutError``)."""


class Malformed(Error, ValueError):
    """An argument (hash, ref name, option) or a file in the store is not valid (also a ``ValueError``)."""


class NotAStore(Error):
    """The path holds no store (and ``create=False``), or something that must not become one."""
