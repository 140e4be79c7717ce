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


def test_connecting_prints_none_of_mlflows_routine_info_lines(tmp_path, capfd, monkeypatch):
    """Every stage connects to the store; MLflow's "Create SQLAlchemy engine ..." and
    "Creating initial MLflow database tables..." INFO lines and its artifact progress bars
    are silenced, its warnings not."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    import logging

    client = make_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("quiet"))
    (tmp_path / "record.json").write_text("{}")
    client.log_artifact(run.info.run_id, str(tmp_path / "record.json"))
    client.download_artifacts(run.info.run_id, "record.json", str(tmp_path))
    printed = capfd.readouterr()
    for noise in ("SQLAlchemy", "database tables", "Downloading artifacts"):
        assert noise not in printed.err + printed.out
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
