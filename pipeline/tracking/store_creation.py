"""A new or old-schema SQLite store is created or migrated by one process at a time.

MLflow creates the schema of a SQLite store (tables, then every alembic migration) in
whichever process opens it first, without any lock of its own: parallel stages opening a
new store at the same instant all run the migration, and all but one fail with
``table experiments already exists`` or ``duplicate column name: step``. Here the first
opener holds an exclusive ``flock`` on ``<db>.lock`` while MLflow opens the store; the
others wait for it, then find the schema current. A store whose schema is current already
is opened without the lock.
"""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from pipeline.tracking.store import sqlite_db_path

LOCK_SUFFIX = ".lock"


def store_creation_lock(uri: str) -> AbstractContextManager[None]:
    """Hold this while MLflow opens ``uri``: the lock when a SQLite store may still need
    its schema created or migrated, nothing when it is a server or a current store."""
    db_path = sqlite_db_path(uri)
    if db_path is None or _schema_is_current(db_path):
        return nullcontext()
    return _exclusive_lock(db_path.with_name(db_path.name + LOCK_SUFFIX))


def _schema_is_current(db_path: Path) -> bool:
    """Whether the store exists at MLflow's latest schema revision (read-only, no file made).

    A migration writes the final revision last, so reading it means the schema is complete.
    """
    if not db_path.is_file():
        return False
    try:
        connection = sqlite3.connect(f"{db_path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            connection.close()
    except sqlite3.Error:  # no schema yet, or locked by a writer: take the lock to find out
        return False
    return rows == [(_latest_schema_revision(),)]


@functools.cache
def _latest_schema_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """``flock`` on ``path``, deleted by its holder when done so that no file is left beside
    the store; a waiter whose lock is on the deleted file takes the new one instead."""
    path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for the database
    while True:
        with path.open("a") as stream:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
            if not _still_at(stream.fileno(), path):
                continue
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # before the lock is released by closing
            return


def _still_at(descriptor: int, path: Path) -> bool:
    """Whether the open file ``descriptor`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False
