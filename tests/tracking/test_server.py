"""Tests of pipeline.tracking through a real `mlflow server` on loopback: runs logged through
it, and the server killed mid-stage, the calls spooled (spool.py) and replayed (replay.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.data import save_prepared
from pipeline.provenance import collect, record_tags
from pipeline.tracking import (
    PipelineTracker,
    check_tracking_available,
    dataset_origin,
    file_md5,
    prepared_dataset,
    replay_spooled,
    spool_directory,
)
from tests.conftest import synthetic_data
from tests.mlflow_server import free_port, server_environment, start_mlflow_server, stop_server
from tests.tracking.helpers import PARAMS, tiny_onnx_model, unique


class TrackingServer:
    """A module's `mlflow server` over the tests' store; a test may kill and restart it."""

    def __init__(self, store_uri: str, directory: Path) -> None:
        self.store_uri, self.directory = store_uri, directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:  # on the same port and store every time
        self.process = start_mlflow_server(
            self.store_uri, self.directory, self.port, server_environment()
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_server(self.process, sig)


@pytest.fixture(scope="module")
def tracking_server(store_uri, tmp_path_factory) -> TrackingServer:
    # The tests' store is already migrated, which saves the server several seconds.
    server = TrackingServer(store_uri, tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


def test_stage_run_logs_through_a_tracking_server(tracking_server, client):
    url = tracking_server.url
    check_tracking_available(url)
    tracker = PipelineTracker(url, "jst-server", unique("server"), PARAMS, "pipeline")
    with tracker.stage_run("prepare") as stage:
        stage.log_metrics({"train_size": 100}, step=0)
        stage.log_dict({"classes": 10}, "prepare.json")

    logged = client.get_run(stage.run_id)  # read straight from the server's database
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics == {"train_size": 100.0}
    assert logged.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert client.get_run(tracker.parent_run_id).data.params["data.dataset"] == "cifar10"
    assert (tracking_server.directory / "artifacts" / tracker.experiment_id).is_dir()
    assert [a.path for a in MlflowClient(url).list_artifacts(stage.run_id)] == ["prepare.json"]


def ui_api(url: str, path: str, body: dict | None = None) -> dict:
    """What the MLflow UI's browser code asks the server (its ``ajax-api`` routes)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{url}/ajax-api/2.0/mlflow/{path}", data, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_ui_gets_kind_dataset_and_source_of_the_runs(tracking_server, tmp_path):
    """The records behind the UI's model-training view, its Dataset and Source columns and
    the version's description, as the server hands them to the browser."""
    url = tracking_server.url
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "init"]):
        config = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run(["git", *config, *args], cwd=repo, check=True)
    save_prepared(synthetic_data(), tmp_path / "prepared")
    origin = dataset_origin("digits", tmp_path)
    dataset = prepared_dataset(tmp_path / "prepared", file_md5(tmp_path / "prepared"), origin)
    parent_record = collect(repo, {}, None)
    tracker = PipelineTracker(
        url, unique("jst-ui"), unique("ui"), PARAMS, "pipeline", provenance=parent_record
    )
    with tracker.stage_run("search", record_tags(collect(repo, {}, "search"))) as stage:
        stage.log_dataset(dataset, "training")

    experiment = ui_api(url, f"experiments/get?experiment_id={tracker.experiment_id}")
    tags = {tag["key"]: tag["value"] for tag in experiment["experiment"]["tags"]}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    runs = ui_api(url, "runs/search", {"experiment_ids": [tracker.experiment_id]})["runs"]
    assert len(runs) == 2
    for run in runs:
        [logged] = run["inputs"]["dataset_inputs"]
        assert (logged["dataset"]["name"], logged["dataset"]["digest"]) == (
            "digits",
            dataset["digest"],
        )
        run_tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
        assert run_tags["mlflow.source.name"] == str(repo.resolve())
        assert run_tags["mlflow.source.type"] == "PROJECT"
        assert run_tags["mlflow.source.git.commit"] == parent_record["git"]["commit"]


def test_server_killed_mid_stage_spools_calls_and_replay_logs_them(
    tracking_server, client, tmp_path
):
    url = tracking_server.url
    model_name = unique("spooled-model")
    onnx_path = tiny_onnx_model(tmp_path / "model.onnx")
    chart = tmp_path / "tmp-chart.png"
    chart.write_bytes(b"png bytes")
    save_prepared(synthetic_data(), tmp_path / "prepared")
    origin = dataset_origin("digits", tmp_path)
    dataset = prepared_dataset(tmp_path / "prepared", file_md5(tmp_path / "prepared"), origin)
    tracker = PipelineTracker(
        url, "jst-server", unique("spool"), PARAMS, "pipeline", spool_directory(tmp_path)
    )
    with tracker.stage_run("evaluate") as stage:
        stage.log_metrics({"loss": 1.0}, step=0)
        tracking_server.stop(signal.SIGKILL)  # dies mid-stage, no chance to finish
        started = time.monotonic()
        stage.log_metrics({"loss": 0.5}, step=1)  # retried briefly, then spooled
        first_failure_s = time.monotonic() - started
        started = time.monotonic()
        for step in range(2, 40):
            stage.log_metrics({"loss": 1.0 / step}, step=step)
        offline_s = time.monotonic() - started
        stage.set_tags({"arch_sha256": "abc"})
        stage.log_dataset(dataset, "testing")  # on the stage and the parent run
        stage.log_artifact(chart, "plots")
        assert stage.register_onnx_model(onnx_path, model_name, {"top1": 0.5}) is None
        stage.finish_pipeline({"top1": 0.75})
    chart.unlink()  # temporary, like the stages' charts: the spool kept a copy
    assert first_failure_s < 15, first_failure_s  # bounded retries, not minutes
    assert offline_s < 2, offline_s  # once offline, calls go straight to the spool
    spools = list(spool_directory(tmp_path).glob("*.jsonl"))
    assert len(spools) == 1 and "evaluate" in spools[0].name, spools
    assert client.get_run(stage.run_id).info.status == "RUNNING"  # nothing reached it

    tracking_server.start()  # back, on the same port and store
    # metrics 1 + 38, tags, 2 datasets, artifact, model, parent metrics + end, stage end
    assert replay_spooled(url, tmp_path) == (1 + 38 + 1 + 2 + 1 + 1 + 2 + 1, 0)
    assert not list(spool_directory(tmp_path).iterdir())  # spool and copied files gone

    run = client.get_run(stage.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["arch_sha256"] == "abc"
    history = client.get_metric_history(stage.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(40))
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"top1": 0.75, "model_version": 1.0}
    version = client.get_model_version(model_name, "1")
    assert (version.run_id, version.tags) == (stage.run_id, {"top1": "0.5"})
    assert "test top-1 50.00 %" in version.description
    for run_id in (stage.run_id, tracker.parent_run_id):
        [logged] = client.get_run(run_id).inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("digits", dataset["digest"])
    assert str(client.get_model_version_by_alias(model_name, "newest").version) == "1"
    artifacts = tracking_server.directory / "artifacts" / tracker.experiment_id / stage.run_id
    artifacts /= "artifacts"
    assert (artifacts / "plots" / "tmp-chart.png").read_bytes() == b"png bytes"
