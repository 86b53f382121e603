"""``cas.ObjectFile``: an object opened for reading, as a binary file (``Store.open``)."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["ObjectFile"]


class ObjectFile(io.RawIOBase):
    """A read-only, seekable binary file over one object, verified against its hash.

    Sequential reads hash what they hand out; the read that reaches the end raises
    ``cas.Corrupt`` if the bytes do not match (so bytes read before the end are not yet
    verified). The first ``seek`` that moves the position turns it into a random-access
    reader that returns nothing unverified: each 16 KiB chunk group is checked against the
    object's name (through its outboard) before any of its bytes is returned; an object
    under 4 MiB is verified whole at that seek.
    Every call is one call of the Rust reader, with the GIL released.
    """

    def __init__(self, reader: Any, hash: str) -> None:
        super().__init__()
        self._r = reader
        self.hash = hash
        self.name = hash

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        self._closed_check()
        return self._r.read(-1 if size is None else size)  # type: ignore[no-any-return]

    def readall(self) -> bytes:
        self._closed_check()
        return self._r.read(-1)  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        self._closed_check()
        view = memoryview(buffer).cast("B")
        data = self._r.read(len(view))
        n = len(data)
        view[:n] = data
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._closed_check()
        return self._r.seek(offset, whence)  # type: ignore[no-any-return]

    def tell(self) -> int:
        self._closed_check()
        return self._r.tell()  # type: ignore[no-any-return]

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        self._closed_check()
        return self._r.size()  # type: ignore[no-any-return]

    def close(self) -> None:
        if not self.closed:
            self._r.close()
        super().close()

    def _closed_check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def __repr__(self) -> str:
        return f"<cas.ObjectFile {self.hash}{' closed' if self.closed else ''}>"
