"""Tests of pipeline.tracking.store: the tracking URI, and the store's availability check."""

from __future__ import annotations

import time

import pytest

from pipeline.errors import PipelineError
from pipeline.tracking import check_tracking_available, resolve_tracking_uri
from tests.mlflow_server import free_port

# --------------------------------------------------------------------------- URI resolution


def test_env_variable_overrides_tracking_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_default_uri_is_absolute_sqlite_at_repo_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(".") == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"


def test_dvc_temporary_experiment_copy_logs_to_original_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = tmp_path.resolve() / "repo"
    temp_copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert resolve_tracking_uri(temp_copy) == f"sqlite:///{repo.as_posix()}/mlflow.db"


# --------------------------------------------------------------------------- availability


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PipelineError, match="not reachable") as raised:
        check_tracking_available(uri, timeout_s=5.0)
    assert time.monotonic() - started < 6
    assert uri in str(raised.value)
    assert "MLFLOW_TRACKING_URI" in str(raised.value)


def test_sqlite_store_in_missing_directory_fails_clearly(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(PipelineError, match="does not exist") as raised:
        check_tracking_available(f"sqlite:///{missing.as_posix()}/mlflow.db")
    assert str(missing) in str(raised.value)


def test_sqlite_store_in_writable_directory_is_available(tmp_path):
    check_tracking_available(f"sqlite:///{tmp_path.as_posix()}/mlflow.db")
