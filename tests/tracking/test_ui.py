"""`jst ui`: the MLflow UI on the project's store, addressed on the model-training view."""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.tracking.ui import MODEL_TRAINING_QUERY, model_training_url
from tests.mlflow_server import (
    free_port,
    server_environment,
    start_logged,
    stop_server,
    wait_for_health,
)
from tests.tracking.helpers import EXPERIMENT

runner = CliRunner()


def test_the_url_opens_the_experiments_runs_in_the_model_training_view(store_uri, client):
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    url = model_training_url("http://127.0.0.1:5000/", store_uri, EXPERIMENT)
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )


def test_an_experiment_not_yet_logged_gets_the_experiment_list(store_uri):
    url = model_training_url("http://h:1", store_uri, "no-such-experiment")
    assert url == f"http://h:1/#/experiments?{MODEL_TRAINING_QUERY}"


def test_ui_without_a_store_says_to_run_the_pipeline_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["ui"])
    assert result.exit_code == 1
    assert "there is no tracking store" in result.output and "dvc repro" in result.output
    assert not (tmp_path / "mlflow.db").exists()  # MLflow would have created an empty one


def test_ui_refuses_a_port_in_use_before_starting_mlflow(store_uri, tmp_path, monkeypatch):
    import socket

    shutil.copy(Path(store_uri.removeprefix("sqlite:///")), tmp_path / "mlflow.db")
    (tmp_path / "params.yaml").write_text(f"tracking:\n  experiment: {EXPERIMENT}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["ui", "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.output
    assert "starting MLflow's UI" not in result.output


@pytest.mark.timeout(180)
def test_ui_serves_the_store_and_prints_the_model_training_address(store_uri, client, tmp_path):
    shutil.copy(Path(store_uri.removeprefix("sqlite:///")), tmp_path / "mlflow.db")
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (tmp_path / "params.yaml").write_text(f"tracking:\n  experiment: {EXPERIMENT}\n")
    port = free_port()
    env = server_environment() | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "ui.log"
    command = [sys.executable, "-m", "pipeline.cli", "ui", "--port", str(port)]
    process = start_logged(command, tmp_path, env, log_path)
    base = f"http://127.0.0.1:{port}"
    expected = f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"
    try:
        deadline = time.monotonic() + 120
        while expected not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        # The address is printed once the UI answers: opening it at once works.
        with urllib.request.urlopen(base, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
        wait_for_health(base, process, 10, log_path, name="jst ui")
    finally:
        stop_server(process)
