"""Tests of pipeline.tracking against real MLflow stores (SQLite files and a loopback server)."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import onnx
import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from onnx import TensorProto, helper

from pipeline.errors import ArtifactError, PipelineError
from pipeline.tracking import (
    PipelineTracker,
    check_tracking_available,
    file_md5,
    finite_metrics,
    flatten_params,
    input_hash_tags,
    replay_spooled,
    reproducibility_tags,
    resolve_tracking_uri,
    retry_while_locked,
    spool_directory,
)

EXPERIMENT = "jst-tests"
PARAMS = {
    "data": {"dataset": "cifar10", "image_size": 32},
    "search": {"target_flops": 0.5, "widths": [16, 32]},
}


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module: creating it runs MLflow's migrations, which is slow."""
    directory = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{(directory / 'mlflow.db').as_posix()}"
    PipelineTracker(uri, EXPERIMENT, "warm-up", {}, "warm-up").finish_pipeline({})
    return uri


@pytest.fixture(scope="module")
def client(store_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=store_uri, registry_uri=store_uri)


def new_tracker(uri: str, key: str, run_name: str = "pipeline") -> PipelineTracker:
    return PipelineTracker(uri, EXPERIMENT, key, PARAMS, run_name)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_onnx_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], initializer=[weights]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


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


# --------------------------------------------------------------------------- runs


def test_stages_of_separate_processes_nest_under_one_parent(store_uri, client, tmp_path):
    key = unique("nest")
    report = tmp_path / "report.txt"
    report.write_text("ok")

    with new_tracker(store_uri, key).stage_run("search", tags={"jst.note": "a"}) as search:
        search.log_metrics({"loss": 1.0}, step=0)
        search.log_metrics({"loss": 0.5, "nan": math.nan, "text": "x"}, step=1)
        search.log_artifact(report, artifact_path="reports")
        search.log_dict({"widths": [16, 32]}, "spec.json")
        search.log_text("hello", "notes.txt")
        search.set_tags({"jst.extra": 1})
    second = new_tracker(store_uri, key)  # a later stage, i.e. another process
    with second.stage_run("finetune") as finetune:
        finetune.log_params({"lr": 0.1})

    parent = client.get_run(second.parent_run_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["jst.kind"] == "pipeline"
    assert parent.data.params["data.dataset"] == "cifar10"
    assert parent.data.params["search.target_flops"] == "0.5"
    assert parent.data.params["search.widths"] == "[16, 32]"

    search_run = client.get_run(search.run_id)
    assert search_run.info.status == "FINISHED"
    assert search_run.info.run_name == "search"
    assert search_run.data.tags["mlflow.parentRunId"] == second.parent_run_id
    assert search_run.data.tags["jst.stage"] == "search"
    assert search_run.data.tags["jst.note"] == "a"
    assert search_run.data.tags["jst.extra"] == "1"
    history = client.get_metric_history(search.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]
    assert set(search_run.data.metrics) == {"loss"}
    artifacts = {a.path for a in client.list_artifacts(search.run_id)}
    assert {"reports", "spec.json", "notes.txt"} <= artifacts
    assert client.get_run(finetune.run_id).data.tags["mlflow.parentRunId"] == second.parent_run_id


def test_finish_pipeline_closes_parent_and_next_execution_gets_a_new_one(store_uri, client):
    key = unique("finish")
    first = new_tracker(store_uri, key)
    with first.stage_run("evaluate"):
        pass
    first.finish_pipeline({"top1": 0.9, "bad": math.inf})

    finished = client.get_run(first.parent_run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.metrics == {"top1": 0.9}
    assert new_tracker(store_uri, key).parent_run_id != first.parent_run_id


def test_failed_stage_ends_failed_and_reraises(store_uri, client):
    tracker = new_tracker(store_uri, unique("fail"))
    with pytest.raises(RuntimeError, match="boom"), tracker.stage_run("finetune") as stage:
        raise RuntimeError("boom")
    failed = client.get_run(stage.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["jst.error"] == "RuntimeError: boom"


def test_rerun_marks_stage_run_left_by_dead_process_killed(store_uri, client):
    tracker = new_tracker(store_uri, unique("orphan"))
    abandoned = tracker.stage_run("search")
    orphan = abandoned.__enter__()  # the process "dies" inside the stage
    with new_tracker(store_uri, tracker.pipeline_key).stage_run("search"):
        pass
    assert client.get_run(orphan.run_id).info.status == "KILLED"


def test_missing_artifact_is_reported(store_uri):
    with (
        new_tracker(store_uri, unique("missing")).stage_run("export") as stage,
        pytest.raises(ArtifactError, match="does not exist"),
    ):
        stage.log_artifact("no/such/file.txt")


PARALLEL_PIPELINE = """
import sys
from pipeline.tracking import PipelineTracker

uri, key = sys.argv[1:3]
tracker = PipelineTracker(uri, "jst-parallel", key, {"data": {"seed": key}}, key)
for stage in ("prepare", "search", "finetune"):
    with tracker.stage_run(stage) as run:
        for step in range(30):
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
tracker.finish_pipeline({"top1": 0.5})
"""


def test_parallel_pipelines_share_one_sqlite_store(store_uri, client):
    """Like `dvc queue start -j 2`: two processes write to the same database at once."""
    keys = [unique("parallel"), unique("parallel")]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", PARALLEL_PIPELINE, store_uri, key],
            cwd=Path(__file__).resolve().parents[1],
            stderr=subprocess.PIPE,
            text=True,
        )
        for key in keys
    ]
    for worker in workers:
        _, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors

    experiment = client.get_experiment_by_name("jst-parallel")
    for key in keys:
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`jst.pipeline_key` = '{key}'"
        )
        assert [run.info.status for run in runs] == ["FINISHED"] * 4
        stages = [run for run in runs if run.data.tags["jst.kind"] == "stage"]
        assert {run.data.tags["jst.stage"] for run in stages} == {"prepare", "search", "finetune"}
        for run in stages:
            assert len(client.get_metric_history(run.info.run_id, "loss")) == 30


# --------------------------------------------------------------------------- model registry


def test_register_onnx_model_adds_versions_tags_and_alias(store_uri, client, tmp_path):
    name = unique("jst-model")
    onnx_path = tiny_onnx_model(tmp_path / "model.onnx")
    tracker = new_tracker(store_uri, unique("register"))
    with tracker.stage_run("export") as stage:
        first = stage.register_onnx_model(onnx_path, name, {"flops_ratio": 0.5})
        second = stage.register_onnx_model(onnx_path, name, {"flops_ratio": 0.4, "top1": 0.8})

    assert (first, second) == ("1", "2")
    newest = client.get_model_version_by_alias(name, "newest")
    assert str(newest.version) == "2"
    assert newest.tags == {"flops_ratio": "0.4", "top1": "0.8"}
    assert newest.run_id == stage.run_id
    # The SQLite registry keeps the logged model only in the version's source URI.
    logged = client.get_logged_model(newest.source.removeprefix("models:/"))
    assert logged.experiment_id == tracker.experiment_id
    assert logged.source_run_id == stage.run_id
    download_uri = client.get_model_version_download_uri(name, "2")
    local = Path(download_artifacts(artifact_uri=download_uri, dst_path=str(tmp_path)))
    assert "onnx" in (local / "MLmodel").read_text()
    restored = onnx.load(str(local / "model.onnx"))
    assert restored.graph.node[0].op_type == "MatMul"


def test_register_rejects_missing_onnx_file(store_uri, tmp_path):
    with (
        new_tracker(store_uri, unique("noonnx")).stage_run("export") as stage,
        pytest.raises(ArtifactError, match="does not exist"),
    ):
        stage.register_onnx_model(tmp_path / "absent.onnx", unique("m"), {})


# --------------------------------------------------------------------------- helpers


def test_flatten_params_stringifies_lists_and_truncates():
    flat = flatten_params({"a": {"b": [1, "x"], "c": None}, "long": "y" * 7000})
    assert flat["a.b"] == '[1, "x"]'
    assert flat["a.c"] == "None"
    assert len(flat["long"]) == 6000


def test_finite_metrics_keeps_numbers_only():
    assert finite_metrics({"a": 1, "b": 2.5, "c": math.nan, "d": "3", "e": None}) == {
        "a": 1.0,
        "b": 2.5,
    }


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


def test_hashes_of_files_and_directories(monkeypatch, tmp_path):
    data = tmp_path / "data" / "prepared"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"a")
    (data / "sub" / "b.bin").write_bytes(b"b")
    before = file_md5(data)
    assert file_md5(data / "a.bin") == "0cc175b9c0f1b6a831c399e269772661"
    (data / "sub" / "b.bin").write_bytes(b"changed")
    assert file_md5(data) != before

    monkeypatch.chdir(tmp_path)
    tags = input_hash_tags(["data/prepared"])
    assert tags == {"input.data/prepared": file_md5(data)}


def test_reproducibility_tags(tmp_path):
    tags = reproducibility_tags(tmp_path)
    assert tags["git.commit"] == "unknown"
    assert tags["device"]
    assert tags["version.python"].count(".") == 2

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "code.py").write_text("x = 1")
    (tmp_path / "params.yaml").write_text("seed: 0")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    tags = reproducibility_tags(tmp_path)
    assert len(tags["git.commit"]) == 40
    assert tags["git.dirty"] == "false"
    # parameters and DVC outputs change in every experiment: not "dirty" code
    (tmp_path / "params.yaml").write_text("seed: 1")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'")
    assert reproducibility_tags(tmp_path)["git.dirty"] == "false"
    (tmp_path / "pipeline" / "code.py").write_text("x = 2")
    assert reproducibility_tags(tmp_path)["git.dirty"] == "true"


# --------------------------------------------------------------------------- tracking server


def wait_for_health(url: str, server: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server at {url} did not answer /health within {timeout_s} s")


def server_environment() -> dict[str, str]:
    # PYTEST_CURRENT_TEST would switch the server into MLflow's own test-time checks; the job
    # runner is a further process this test does not need.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {
        **environment,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def start_server(store_uri: str, directory: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on loopback over ``store_uri``, answering /health."""
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store_uri,
        "--artifacts-destination",
        (directory / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with (directory / "server.log").open("a") as log:
        server = subprocess.Popen(
            command,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            start_new_session=True,
        )
    wait_for_health(url, server)
    return server


def stop_server(server: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if server.poll() is not None:
        return
    os.killpg(server.pid, sig)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


class TrackingServer:
    """A module's `mlflow server` over the module's store; a test may kill and restart it."""

    def __init__(self, store_uri: str, directory: Path) -> None:
        self.store_uri, self.directory = store_uri, directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:  # on the same port and store every time
        self.process = start_server(self.store_uri, self.directory, self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_server(self.process, sig)


@pytest.fixture(scope="module")
def tracking_server(store_uri, tmp_path_factory) -> TrackingServer:
    # The module's store is already migrated, which saves the server several seconds.
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


def test_server_killed_mid_stage_spools_calls_and_replay_logs_them(
    tracking_server, client, tmp_path
):
    url = tracking_server.url
    model_name = unique("spooled-model")
    onnx_path = tiny_onnx_model(tmp_path / "model.onnx")
    chart = tmp_path / "tmp-chart.png"
    chart.write_bytes(b"png bytes")
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
        stage.set_tags({"jst.arch_sha256": "abc"})
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
    # metrics 1 + 38, tags, artifact, model, parent metrics + end, stage end
    assert replay_spooled(url, tmp_path) == (1 + 38 + 1 + 1 + 1 + 2 + 1, 0)
    assert not list(spool_directory(tmp_path).iterdir())  # spool and copied files gone

    run = client.get_run(stage.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["jst.arch_sha256"] == "abc"
    history = client.get_metric_history(stage.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(40))
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"top1": 0.75, "model_version": 1.0}
    version = client.get_model_version(model_name, "1")
    assert (version.run_id, version.tags) == (stage.run_id, {"top1": "0.5"})
    assert str(client.get_model_version_by_alias(model_name, "newest").version) == "1"
    artifacts = tracking_server.directory / "artifacts" / tracker.experiment_id / stage.run_id
    artifacts /= "artifacts"
    assert (artifacts / "plots" / "tmp-chart.png").read_bytes() == b"png bytes"
