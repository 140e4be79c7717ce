"""Tests of pipeline.tracking's runs (stage_run.py, pipeline_run.py) against a real SQLite
store: stage runs of separate processes nested under one pipeline run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ArtifactError
from tests.tracking.helpers import new_tracker, unique


def test_stages_of_separate_processes_nest_under_one_parent(store_uri, client, tmp_path):
    key = unique("nest")
    report = tmp_path / "report.txt"
    report.write_text("ok")

    with new_tracker(store_uri, key).stage_run("search", tags={"pipeline.note": "a"}) as search:
        search.log_metrics({"loss": 1.0}, step=0)
        search.log_metrics({"loss": 0.5, "nan": math.nan, "text": "x"}, step=1)
        search.log_artifact(report, artifact_path="reports")
        search.log_dict({"widths": [16, 32]}, "spec.json")
        search.log_text("hello", "notes.txt")
        search.set_tags({"pipeline.extra": 1})
    second = new_tracker(store_uri, key)  # a later stage, i.e. another process
    with second.stage_run("finetune") as finetune:
        finetune.log_params({"lr": 0.1})

    parent = client.get_run(second.parent_run_id)
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["pipeline.kind"] == "pipeline"
    assert parent.data.params["data.dataset"] == "cifar10"
    assert parent.data.params["search.target_flops"] == "0.5"
    assert parent.data.params["search.widths"] == "[16, 32]"

    search_run = client.get_run(search.run_id)
    assert search_run.info.status == "FINISHED"
    assert search_run.info.run_name == "search"
    assert search_run.data.tags["mlflow.parentRunId"] == second.parent_run_id
    assert search_run.data.tags["pipeline.stage"] == "search"
    assert search_run.data.tags["pipeline.note"] == "a"
    assert search_run.data.tags["pipeline.extra"] == "1"
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
    assert failed.data.tags["pipeline.error"] == "RuntimeError: boom"


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
            cwd=Path(__file__).resolve().parents[2],
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
            [experiment.experiment_id], filter_string=f"tags.`pipeline.key` = '{key}'"
        )
        assert [run.info.status for run in runs] == ["FINISHED"] * 4
        stages = [run for run in runs if run.data.tags["pipeline.kind"] == "stage"]
        assert {run.data.tags["pipeline.stage"] for run in stages} == {
            "prepare",
            "search",
            "finetune",
        }
        for run in stages:
            assert len(client.get_metric_history(run.info.run_id, "loss")) == 30
