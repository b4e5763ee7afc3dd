"""sqlite-vec loaded into the store's SQLite connections, through Python's own sqlite3 module.

Python's sqlite3 offers `enable_load_extension` only when it was built with
--enable-loadable-sqlite-extensions (the official images are; pyenv's default build is not). Without
it, the very SQLite library that module uses is asked through its C API, on the connection's handle,
so one copy of SQLite serves the whole process: a second copy (a pysqlite3 wheel) beside it would
break the file locks SQLite relies on whenever both open the same database. The handle is checked
(SQLite must name the connection's own file) before anything is loaded.
"""

from __future__ import annotations

import _sqlite3
import ctypes
import functools
import os
import sqlite3

import sqlite_vec

_ENTRY = b"sqlite3_vec_init"


class ExtensionError(RuntimeError):
    """sqlite-vec could not be loaded; the message says why, in words."""


def load(connection: sqlite3.Connection) -> None:
    """Load sqlite-vec into one connection; extension loading is switched off again after."""
    if hasattr(connection, "enable_load_extension"):
        connection.enable_load_extension(True)
        try:
            sqlite_vec.load(connection)
        finally:
            connection.enable_load_extension(False)
        return
    _load_through_c_api(connection)


@functools.cache
def _library():
    """The SQLite library Python's sqlite3 module is linked with (dlsym searches its dependencies)."""
    library = ctypes.CDLL(_sqlite3.__file__)
    library.sqlite3_enable_load_extension.argtypes = [ctypes.c_void_p, ctypes.c_int]
    library.sqlite3_load_extension.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_char_p),
    ]
    library.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    library.sqlite3_db_filename.restype = ctypes.c_char_p
    return library


def _load_through_c_api(connection: sqlite3.Connection) -> None:
    try:
        library = _library()
    except (OSError, AttributeError) as exc:
        raise ExtensionError(f"this Python's SQLite cannot load extensions ({exc})") from None
    # CPython's connection object starts with PyObject_HEAD, then the `sqlite3 *db` handle.
    handle = ctypes.c_void_p.from_address(id(connection) + object.__basicsize__).value
    expected = connection.execute("PRAGMA database_list").fetchone()[2]
    named = library.sqlite3_db_filename(handle, b"main") if handle else None
    if named is None or os.fsdecode(named) != expected:
        raise ExtensionError("this Python's sqlite3 cannot load extensions, and its connection handle was not found")
    error = ctypes.c_char_p()
    library.sqlite3_enable_load_extension(handle, 1)
    try:
        status = library.sqlite3_load_extension(handle, os.fsencode(sqlite_vec.loadable_path()), _ENTRY, error)
    finally:
        library.sqlite3_enable_load_extension(handle, 0)
    if status != 0:
        raise ExtensionError(f"sqlite-vec did not load: {(error.value or b'').decode(errors='replace')}")
