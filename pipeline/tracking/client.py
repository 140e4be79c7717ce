"""The MLflow client: retried while a SQLite store is locked, with short HTTP retries."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pipeline.tracking.store import TRACKING_URI_ENV
from pipeline.tracking.store_creation import store_creation_lock

logger = logging.getLogger(__name__)

# Delays between retries of an operation that found the SQLite store locked. SQLite already
# waits busy_timeout (20 s in MLflow) for most locks; these cover the cases where it gives up
# at once (a read transaction that must upgrade to a write while another process writes).
LOCK_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

# A few quick retries of a request to a tracking server (MLflow's default, 7 retries with
# factor 2, waits minutes): about 6 s, then the stage spools its calls and goes on.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

# No "Downloading artifacts: 100%|███" bars when jst reproduce or jst predict read a run's
# files, nor upload bars in stage logs.
QUIET_DEFAULTS = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

_T = TypeVar("_T")


def retry_while_locked(
    operation: Callable[[], _T], delays_s: Iterable[float] = LOCK_RETRY_DELAYS_S
) -> _T:
    """Run ``operation``, retrying with backoff while SQLite reports the database locked."""
    for delay in (*delays_s, None):
        try:
            return operation()
        except Exception as error:
            if delay is None or "database is locked" not in str(error):
                raise
            logger.info("MLflow store is locked by another process; retrying in %.1f s", delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class LockTolerantClient:
    """An ``MlflowClient`` whose methods are retried while the SQLite store is locked.

    A failed SQLite transaction is rolled back, so retrying a write never duplicates it.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_while_locked(lambda: attribute(*args, **kwargs))

        return call


def make_client(uri: str) -> LockTolerantClient:
    """A lock-tolerant ``MlflowClient`` for ``uri`` (tracking and registry); imports MLflow."""
    if uri.startswith("sqlite:"):
        # A connection per session instead of a pool: no process keeps the file open between
        # operations, which is what parallel `dvc queue start -j N` workers need.
        os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    for variable, value in (HTTP_RETRY_DEFAULTS | QUIET_DEFAULTS).items():  # a user's wins
        os.environ.setdefault(variable, value)
    from mlflow import MlflowClient

    quiet_mlflow_logs()
    with store_creation_lock(uri):  # MLflow creates or migrates the schema here
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return LockTolerantClient(client)


# MLflow's routine INFO lines on every connection to a SQLite store ("Create SQLAlchemy
# engine with pool options ...", "Creating initial MLflow database tables...") say nothing a
# user acts on; its warnings and errors still show.
_ROUTINE_INFO_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")
# Warnings that flag no problem here: uv environments have no pip, and a model's conda.yaml
# then names pip without a version, which nobody installs from (serving uses this env).
_HARMLESS_WARNINGS = ("Failed to resolve installed pip version",)


class _DropHarmlessWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_HARMLESS_WARNINGS)


def quiet_mlflow_logs() -> None:
    """Silence MLflow's routine INFO lines and its harmless pip warning (idempotent)."""
    for name in _ROUTINE_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    environment = logging.getLogger("mlflow.utils.environment")
    if not any(isinstance(f, _DropHarmlessWarnings) for f in environment.filters):
        environment.addFilter(_DropHarmlessWarnings())


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for the block.

    ``Model.log`` and the registry's resolution of ``models:/`` sources ignore the client and
    read the global URI; ``set_tracking_uri`` also writes the environment variable, so both
    are restored.
    """
    import mlflow

    saved_env = os.environ.get(TRACKING_URI_ENV)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if saved_env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = saved_env


def is_already_exists(error: Exception) -> bool:
    """Whether MLflow refused to create something because it exists already."""
    return getattr(error, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
