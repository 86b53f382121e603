"""The exception hierarchy: kinds, the OS error as the cause, names in the message."""

from __future__ import annotations

import errno
import pathlib

import pytest

import cas


def test_hierarchy() -> None:
    assert issubclass(cas.NotFound, cas.Error) and issubclass(cas.NotFound, KeyError)
    assert issubclass(cas.Locked, cas.Error) and issubclass(cas.Locked, TimeoutError)
    assert issubclass(cas.Malformed, cas.Error) and issubclass(cas.Malformed, ValueError)
    for c in (cas.Corrupt, cas.Conflict, cas.NotAStore):
        assert issubclass(c, cas.Error)


def test_not_found_names_the_hash_and_path(store: cas.Store) -> None:
    h = "ab" * 32
    with pytest.raises(KeyError) as e:
        store.get(h)
    err = e.value
    assert isinstance(err, cas.NotFound)
    assert h in str(err) and str(err) == err.args[0]  # not quoted as KeyError would
    assert err.hash == h and err.path is not None and h[2:] in err.path


def test_os_error_is_the_cause(store: cas.Store, tmp_path: pathlib.Path) -> None:
    with pytest.raises(cas.Error) as e:
        store.put_file(tmp_path / "absent.bin")
    err = e.value
    assert "absent.bin" in str(err)
    assert err.errno == errno.ENOENT
    assert isinstance(err.__cause__, FileNotFoundError)
    assert err.__cause__.errno == errno.ENOENT
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(cas.Error) as e2:
        store.get_file(store.put(b"x"), d)
    assert str(d) in str(e2.value) and e2.value.filename is not None
    assert isinstance(e2.value.__cause__, OSError)


def test_malformed_inputs_are_value_errors(store: cas.Store) -> None:
    for bad in ("", "xyz", "AB" * 32, "../" + "a" * 61):
        with pytest.raises(ValueError) as e:
            store.get(bad)
        assert isinstance(e.value, cas.Malformed) and "hash" in str(e.value)
