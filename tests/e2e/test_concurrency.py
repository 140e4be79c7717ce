"""End to end under concurrency and faults: parallel DVC queue workers on one SQLite store,
two pipelines on one real `mlflow server`, and that server killed in the middle of a stage.
Nothing is mocked: real git+DVC repositories, `dvc repro`/`dvc queue`, a real MLflow server
process on loopback that is really SIGKILLed.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.provenance import RECORD_FILE
from tests.e2e.e2e_repo import (
    STAGES,
    E2ERepo,
    Result,
    experiment_metric,
    normalized,
    walk_experiments,
)
from tests.mlflow_server import (
    LOG_FILE_NAME,
    free_port,
    log_tail,
    server_environment,
    start_mlflow_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXPERIMENT = "jst-pipeline"
MODEL_NAME = "compact-cnn"
ALIAS = "newest"
QUEUE_WAIT_S = 1500
QUEUED_FLOPS = (0.3, 0.4, 0.6, 0.7)
QUEUED_STAGES = tuple(stage for stage in STAGES if stage != "prepare")


# --------------------------------------------------------------------------- store checks


def pipeline_runs(client: MlflowClient) -> dict[float, tuple]:
    """{target_flops: (parent run, {stage: child run})} of every pipeline execution."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children: dict[str, dict[str, object]] = {}
    for run in runs:
        if run.data.tags.get("pipeline.kind") == "stage":
            parent_id = run.data.tags["mlflow.parentRunId"]
            stages = children.setdefault(parent_id, {})
            assert run.data.tags["pipeline.stage"] not in stages, f"two {run.info.run_name} runs"
            stages[run.data.tags["pipeline.stage"]] = run
    parents = [run for run in runs if run.data.tags.get("pipeline.kind") == "pipeline"]
    return {
        float(p.data.params["search.target_flops"]): (p, children.get(p.info.run_id, {}))
        for p in parents
    }


def assert_complete_pipeline(
    client: MlflowClient, parent, stages: dict, repo: E2ERepo | None, expected=STAGES
) -> None:
    """Parent and its ``expected`` stage runs FINISHED, with their metrics, artifacts, model."""
    evaluate = repo.metrics("evaluate") if repo is not None else None
    assert parent.info.status == "FINISHED", parent.info
    assert sorted(stages) == sorted(expected), sorted(stages)
    for stage, run in stages.items():
        assert run.info.status == "FINISHED", (stage, run.info.status)
    parent_metrics = parent.data.metrics
    for key in ("top1", "flops_ratio", "latency_ms", "model_version"):
        assert key in parent_metrics, (key, sorted(parent_metrics))
    if evaluate is not None:
        assert parent_metrics["top1"] == pytest.approx(evaluate["top1"])
    assert "flops_ratio" in stages["search"].data.metrics
    assert "max_abs_diff" in stages["export"].data.metrics
    assert "top1" in stages["evaluate"].data.metrics

    def artifacts(stage: str, folder: str) -> list[str]:
        return [a.path for a in client.list_artifacts(stages[stage].info.run_id, folder)]

    assert artifacts("search", "architecture") == ["architecture/arch.json"]
    assert "plots/kept_widths.png" in artifacts("search", "plots")
    assert artifacts("export", "onnx") == ["onnx/model.onnx"]
    assert any(path.startswith("plots/") for path in artifacts("finetune", "plots"))

    version = client.get_model_version(MODEL_NAME, str(int(parent_metrics["model_version"])))
    assert version.run_id == stages["evaluate"].info.run_id
    assert float(version.tags["flops_ratio"]) == pytest.approx(
        stages["evaluate"].data.metrics["flops_ratio"], abs=1e-4
    )


def model_versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.describe()


# --------------------------------------------------------------------------- 1. dvc queue -j 2


@pytest.fixture(scope="module")
def queue_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2ERepo]:
    repo = E2ERepo.create(tmp_path_factory.mktemp("queue") / "repo")
    # A baseline as users have it: data prepared and committed (the experiments skip it).
    repo.dvc("repro", "prepare", timeout=300)
    repo.commit("prepared data")
    yield repo
    # A queue worker that outlived a failed test must not keep running after the module.
    repo.dvc("queue", "stop", "--kill", timeout=60, check=False)


@pytest.mark.timeout(1700)
def test_four_queued_experiments_on_two_workers_all_log_to_one_store(queue_repo: E2ERepo):
    repo = queue_repo
    names = [f"q-flops-{int(flops * 10):02d}" for flops in QUEUED_FLOPS]
    for name, flops in zip(names, QUEUED_FLOPS, strict=True):
        repo.dvc("exp", "run", "--queue", "-n", name, "-S", f"search.target_flops={flops}")
    start_queue_workers(repo, 2)
    states = wait_for_queued(repo, names, QUEUE_WAIT_S)
    logs = {name: repo.dvc("queue", "logs", name, check=False).output for name in names}
    failed = {name: state for name, state in states.items() if state != "Success"}
    assert not failed, f"{failed}\n" + "\n".join(f"--- {n}\n{logs[n][-3000:]}" for n in failed)
    for name, log in logs.items():
        assert "database is locked" not in log, (name, log[-4000:])
        assert "Traceback" not in log, (name, log[-4000:])
        assert "is unavailable" not in log, (name, log[-4000:])  # nothing had to be spooled
        assert "Stage 'prepare' didn't change, skipping" in log, (name, log[-4000:])

    shown = repo.dvc_json("exp", "show", "--json")
    ratios = {
        entry["name"]: experiment_metric(entry, "metrics/evaluate.json", "flops_ratio")
        for entry in walk_experiments(shown)
    }
    for name, flops in zip(names, QUEUED_FLOPS, strict=True):
        assert name in ratios, sorted(ratios)
        assert flops - 0.01 <= ratios[name] <= flops, (name, ratios[name])

    # The temporary copies in .dvc/tmp/exps logged to the repository's store, not their own.
    assert not [p for p in repo.root.rglob("mlflow.db") if p != repo.root / "mlflow.db"]
    assert not list(repo.root.glob(".mlflow-spool/*.jsonl"))
    client = MlflowClient(tracking_uri=repo.tracking_uri, registry_uri=repo.tracking_uri)
    pipelines = pipeline_runs(client)
    # The fixture's `dvc repro prepare` opened the baseline's pipeline run: prepare only.
    _, baseline_stages = pipelines.pop(repo.read_params()["search"]["target_flops"])
    assert sorted(baseline_stages) == ["prepare"]
    assert sorted(pipelines) == sorted(QUEUED_FLOPS), sorted(pipelines)
    for name, flops in zip(names, QUEUED_FLOPS, strict=True):
        parent, stages = pipelines[flops]
        # DVC skipped the unchanged prepare stage, so it opened no run in the experiment.
        assert_complete_pipeline(client, parent, stages, repo=None, expected=QUEUED_STAGES)
        assert parent.data.metrics["flops_ratio"] == pytest.approx(ratios[name])
        assert stages["search"].data.tags["dvc.experiment"] == name
        for run in stages.values():
            assert run.info.artifact_uri.startswith((repo.root / "mlartifacts").as_uri())
    assert model_versions(client) == [1, 2, 3, 4]


def start_queue_workers(repo: E2ERepo, jobs: int) -> None:
    """``dvc queue start -j jobs``. Its workers outlive it and inherit its stdout: with a pipe
    (``repo.dvc``) the call would wait for them, so the output goes to a file."""
    log_path = repo.root.parent / "queue-start.log"
    with log_path.open("w") as log:
        started = subprocess.run(
            [sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
            cwd=repo.root,
            env=repo.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert started.returncode == 0, log_path.read_text()


def wait_for_queued(repo: E2ERepo, names: list[str], timeout_s: float) -> dict[str, str]:
    """Poll ``dvc queue status`` until every experiment is done; their final states."""
    deadline = time.monotonic() + timeout_s
    states = dict.fromkeys(names, "not listed")
    while time.monotonic() < deadline:
        status = repo.dvc("queue", "status", check=False).output
        for name in names:
            match = re.search(rf"^\S+\s+{re.escape(name)}\s+.*?(\w+)\s*$", status, re.MULTILINE)
            states[name] = match.group(1) if match else "not listed"
        if all(state in ("Success", "Failed") for state in states.values()):
            return states
        time.sleep(3)
    repo.dvc("queue", "kill", *names, check=False, timeout=60)
    return {name: f"still {state} after {timeout_s} s" for name, state in states.items()}


# --------------------------------------------------------------------------- mlflow server


class MlflowServer:
    """A real `mlflow server` on a loopback port, with a SQLite store and served artifacts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.db_path = directory / "server.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120) -> None:
        # MLFLOW_* as well as PYTEST_*: none of the tests' MLflow settings reach the server.
        self.process = start_mlflow_server(
            f"sqlite:///{self.db_path}",
            self.directory,
            self.port,
            server_environment(drop_prefixes=("PYTEST_", "MLFLOW_")),
            timeout_s,
        )

    def kill(self) -> None:
        """SIGKILL the server and its workers: no chance to finish anything."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def log(self) -> str:
        return log_tail(self.directory / LOG_FILE_NAME)

    def stage_run_ids(self, stage: str) -> set[str]:
        """Read straight from the server's database (the server may be busy or dead)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute(
                "SELECT run_uuid FROM tags WHERE key = 'pipeline.stage' AND value = ?", (stage,)
            ).fetchall()
        return {row[0] for row in rows}

    def has_artifact(self, run_id: str, name: str) -> bool:
        """Whether the server stored artifact ``name`` of ``run_id`` (served artifacts)."""
        return any(run_id in path.parts for path in (self.directory / "artifacts").rglob(name))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def server_client(server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def server_repo(root: Path, server: MlflowServer, target_flops: float) -> E2ERepo:
    repo = E2ERepo.create(root)
    params = repo.read_params()
    params["search"]["target_flops"] = target_flops
    repo.write_params(params)
    repo.commit(f"target {target_flops}")
    repo.env["MLFLOW_TRACKING_URI"] = server.url
    return repo


def start_repro(repo: E2ERepo) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo.root,
        env=repo.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout_s: float = 1000) -> Result:
    start = time.monotonic()
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return Result(process.args, process.returncode, output, time.monotonic() - start)


@pytest.fixture(scope="module")
def server_repos(
    server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[E2ERepo, Result]]:
    """Two pipelines with different parameters, reproduced at the same time on one server."""
    base = tmp_path_factory.mktemp("server-repos")
    repos = [server_repo(base / "a", server, 0.5), server_repo(base / "b", server, 0.4)]
    processes = [start_repro(repo) for repo in repos]
    return [(repo, finish(process)) for repo, process in zip(repos, processes, strict=True)]


# --------------------------------------------------------------------------- 2. two pipelines


@pytest.mark.timeout(1200)  # includes the fixture's two pipelines; slow on a busy machine
def test_two_pipelines_log_to_one_server_at_the_same_time(server_repos, server_client):
    for repo, result in server_repos:
        assert result.returncode == 0, result.describe()
        assert_no_traceback(result)
        assert "is unavailable" not in result.output, result.describe()
        assert "up to date" in repo.dvc("status").output
        assert not (repo.root / "mlflow.db").exists()  # logged to the server only

    pipelines = pipeline_runs(server_client)
    assert sorted(pipelines) == [0.4, 0.5], sorted(pipelines)
    for repo, _ in server_repos:
        flops = repo.read_params()["search"]["target_flops"]
        parent, stages = pipelines[flops]
        assert_complete_pipeline(server_client, parent, stages, repo)
        assert stages["search"].data.tags["arch_sha256"] == repo.metrics("search")["arch_sha256"]
    assert model_versions(server_client) == [1, 2]


# --------------------------------------------------------------------------- 3. server killed


@pytest.mark.timeout(900)
def test_server_killed_mid_stage_spools_and_replays(server, server_repos, server_client):
    repo, first = server_repos[0]
    assert first.returncode == 0, first.describe()
    evaluate_runs = server.stage_run_ids("evaluate")
    # More latency repeats: only evaluate reruns, and it is still measuring when killed.
    params = repo.read_params()
    params["evaluate"]["repeats"] = 1500
    repo.write_params(params)

    process = start_repro(repo)
    deadline = time.monotonic() + 480
    # Kill once the stage surely holds its run: the provenance record it logs right after
    # creating the run is on the server. A kill as soon as the run's row exists can lose the
    # reply to the create call itself, and a stage that never learned its run id stops with
    # a clear error by design (nothing to spool to yet), which is not what this test is for.
    while not any(
        server.has_artifact(run_id, RECORD_FILE)
        for run_id in server.stage_run_ids("evaluate") - evaluate_runs
    ):
        assert process.poll() is None, finish(process).describe()
        assert time.monotonic() < deadline, "the evaluate stage never opened its run"
        time.sleep(0.05)
    server.kill()
    result = finish(process)

    # The stage finished without the server: DVC outputs complete, calls spooled, a warning.
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result)
    message = normalized(result.output)
    assert f"MLflow tracking store {server.url} is unavailable" in message, result.describe()
    assert "jst tracking replay" in message
    assert "up to date" in repo.dvc("status").output
    assert repo.metrics("evaluate")["top1"] >= 0
    spools = list((repo.root / ".mlflow-spool").glob("*.jsonl"))
    assert len(spools) == 1, spools
    repo.git("check-ignore", "-q", str(spools[0]))  # the spool is not for git

    # While the server is down, replay refuses at once and keeps the spool.
    down = repo.python("-m", "pipeline.cli", "tracking", "replay", check=False)
    assert down.returncode == 1 and "not reachable" in down.output, down.describe()
    assert spools[0].exists()

    server.start()  # same port, same database
    replayed = repo.python("-m", "pipeline.cli", "tracking", "replay")
    assert "0 spool file(s) left" in replayed.output, replayed.describe()
    assert not spools[0].exists()

    new_parents = runs_with_param(server_client, "evaluate.repeats", "1500")
    assert len(new_parents) == 1, new_parents
    parent, stages = pipeline_runs_by_id(server_client, new_parents[0])
    assert sorted(stages) == ["evaluate"]  # only evaluate reran
    evaluate = stages["evaluate"]
    assert evaluate.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert evaluate.data.metrics["top1"] == pytest.approx(repo.metrics("evaluate")["top1"])
    assert parent.data.metrics["top1"] == pytest.approx(repo.metrics("evaluate")["top1"])
    assert model_versions(server_client) == [1, 2, 3]
    assert parent.data.metrics["model_version"] == 3
    newest = server_client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert (str(newest.version), newest.run_id) == ("3", evaluate.info.run_id)


def runs_with_param(client: MlflowClient, key: str, value: str) -> list[str]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"params.`{key}` = '{value}'"
    )
    return [run.info.run_id for run in runs if run.data.tags.get("pipeline.kind") == "pipeline"]


def pipeline_runs_by_id(client: MlflowClient, parent_id: str) -> tuple:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    return client.get_run(parent_id), {r.data.tags["pipeline.stage"]: r for r in children}
