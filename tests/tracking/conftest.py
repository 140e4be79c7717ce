"""The MLflow store of the tests of pipeline.tracking, shared by the modules that need one."""

from __future__ import annotations

import pytest

from tests.conftest import skip_module_if_allowed_missing

skip_module_if_allowed_missing("mlflow")  # benchmarks/gpu_check.sh on a machine without it

from mlflow import MlflowClient  # noqa: E402

from pipeline.tracking import PipelineTracker  # noqa: E402
from tests.tracking.helpers import EXPERIMENT  # noqa: E402


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for tests/tracking/: creating it runs MLflow's migrations, which is
    slow. The tests share it safely: each works under its own unique key or model name."""
    directory = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{(directory / 'mlflow.db').as_posix()}"
    PipelineTracker(uri, EXPERIMENT, "warm-up", {}, "warm-up").finish_pipeline({})
    return uri


@pytest.fixture(scope="session")
def client(store_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
