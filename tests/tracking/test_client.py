"""Tests of pipeline.tracking.client: calls retried while the SQLite store is locked."""

from __future__ import annotations

import pytest

from pipeline.tracking import retry_while_locked
from pipeline.tracking.client import make_client


def test_retry_while_locked_retries_lock_errors_only():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert retry_while_locked(flaky, delays_s=(0, 0, 0)) == "done"
    assert len(attempts) == 3
    with pytest.raises(ValueError):
        retry_while_locked(lambda: (_ for _ in ()).throw(ValueError("other")), delays_s=(0,))


def test_connecting_prints_none_of_mlflows_routine_info_lines(tmp_path, capfd):
    """Every stage connects to the store; MLflow's "Create SQLAlchemy engine ..." and
    "Creating initial MLflow database tables..." INFO lines are silenced, its warnings not."""
    import logging

    make_client(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    printed = capfd.readouterr()
    assert "SQLAlchemy" not in printed.err + printed.out
    assert "database tables" not in printed.err + printed.out
    assert logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.WARNING)
    environment = logging.getLogger("mlflow.utils.environment")
    harmless = logging.LogRecord(
        environment.name, logging.WARNING, __file__, 1,
        "Failed to resolve installed pip version. ``pip`` will be added", None, None,
    )  # fmt: skip
    real = logging.LogRecord(
        environment.name, logging.WARNING, __file__, 1, "something else", None, None
    )
    assert not environment.filter(harmless) and environment.filter(real)
