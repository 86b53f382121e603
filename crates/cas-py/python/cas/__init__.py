"""cas: a content-addressed object store on a directory, for Python.

A thin binding of the Rust library ``cas`` (crates/cas): every method of ``Store`` is one call
of the library, made with the GIL released; there is no storage logic in this package. The
store's guarantees (verified reads, atomic publication, compute once across threads,
processes and hosts by leases, no ``flock``) are the library's: see docs/python.md.

>>> import cas, tempfile, os
>>> store = cas.Store(os.path.join(tempfile.mkdtemp(), "store"))
>>> h = store.put(b"hello")
>>> store.get(h)
b'hello'
"""

from ._cas import ANY, Store, __version__
from ._errors import Conflict, Corrupt, Error, Locked, Malformed, NotAStore, NotFound
from ._file import ObjectFile

__all__ = [
    "ANY",
    "Store",
    "ObjectFile",
    "Error",
    "NotFound",
    "Corrupt",
    "Conflict",
    "Locked",
    "Malformed",
    "NotAStore",
    "__version__",
]
