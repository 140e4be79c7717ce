"""The MLflow store of the tests of pipeline.tracking, shared by the modules that need one.

MLflow is imported in the fixtures, not here: where it is absent and allowed to be
(``JST_TESTS_ALLOW_MISSING``, benchmarks/gpu_check.sh), each test module's own import of it
is then reported as a skip with the reason, whichever test files are named."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mlflow import MlflowClient


@pytest.fixture(scope="session")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for tests/tracking/: creating it runs MLflow's migrations, which is
    slow. The tests share it safely: each works under its own unique key or model name."""
    from pipeline.tracking import PipelineTracker
    from tests.tracking.helpers import EXPERIMENT

    directory = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{(directory / 'mlflow.db').as_posix()}"
    PipelineTracker(uri, EXPERIMENT, "warm-up", {}, "warm-up").finish_pipeline({})
    return uri


@pytest.fixture(scope="session")
def client(store_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)
