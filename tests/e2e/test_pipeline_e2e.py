"""End to end: the real DVC pipeline in a temporary git repository, tracked in a real MLflow
SQLite store, exported to ONNX and timed with ONNX Runtime. Nothing is mocked.

One repository is built per module and the tests build on each other, in file order:
reproduce -> inspect the tracking store -> experiment -> bad input. Queued experiments
(parallel workers on one store) are in test_concurrency.py.
The tiny configuration (digits at 8x8, one epoch per training) keeps the module within a
few minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import onnx
import pytest
import torch
from mlflow import MlflowClient

from pipeline.config import parse_config
from pipeline.tracking import file_md5
from pipeline.train import training_numerics
from tests.e2e.e2e_repo import (
    STAGES,
    E2ERepo,
    Result,
    experiment_metric,
    normalized,
    walk_experiments,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXPERIMENT = "jst-pipeline"
MODEL_NAME = "compact-cnn"
ALIAS = "newest"


@pytest.fixture(scope="module")
def repo(tiny_repo: E2ERepo) -> E2ERepo:
    return tiny_repo  # shared with test_reproduce.py (tests/e2e/conftest.py)


@pytest.fixture(scope="module")
def client(repo: E2ERepo) -> MlflowClient:
    return MlflowClient(tracking_uri=repo.tracking_uri, registry_uri=repo.tracking_uri)


# --------------------------------------------------------------------------- store queries


def experiment_id(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r} in the store"
    return experiment.experiment_id


def parent_runs(client: MlflowClient, status: str | None = None) -> list:
    query = "tags.`pipeline.kind` = 'pipeline'"
    if status:
        query += f" and attributes.status = '{status}'"
    return client.search_runs(
        [experiment_id(client)], filter_string=query, order_by=["attributes.start_time ASC"]
    )


def stage_runs(client: MlflowClient, parent_id: str | None = None) -> list:
    query = "tags.`pipeline.kind` = 'stage'"
    if parent_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
    return client.search_runs(
        [experiment_id(client)], filter_string=query, order_by=["attributes.start_time ASC"]
    )


def model_versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'"))


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output, result.describe()


# --------------------------------------------------------------------------- 1. dvc repro


def test_repro_produces_models_metrics_and_plots(repo: E2ERepo) -> None:
    # The stages must run the copied code, not the checkout's (the editable install).
    probe = repo.python(
        "-c",
        "import pipeline, stages.common; print(pipeline.__file__); print(stages.common.__file__)",
    )
    for line in probe.output.split():
        assert Path(line).resolve().is_relative_to(repo.root.resolve()), probe.describe()

    result = repo.reproduce_once()
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in result.output
        assert (repo.root / "metrics" / f"{stage}.json").is_file(), stage
    # Each model stage ends with the line that says what it did; MLflow's routine lines and
    # its pip warning are not printed.
    output = " ".join(result.output.split())
    for summary in (
        "search: jst kept ",
        "finetune: val top-1 ",
        "export: models/model.onnx ",
        "evaluate: test top-1 ",
        f"registered {MODEL_NAME} version 1 (@{ALIAS})",
    ):
        assert summary in output, (summary, result.describe())
    for noise in ("SQLAlchemy engine", "database tables", "Failed to resolve installed pip"):
        assert noise not in output, (noise, result.describe())

    params = repo.read_params()
    target = params["search"]["target_flops"]
    evaluate = repo.metrics("evaluate")
    for key in ("top1", "top5"):
        assert 0.0 <= evaluate[key] <= 1.0, (key, evaluate[key])
    assert evaluate["top5"] >= evaluate["top1"]
    assert target - 0.01 <= evaluate["flops_ratio"] <= target, evaluate["flops_ratio"]
    assert evaluate["flops_ratio"] == pytest.approx(evaluate["flops"] / evaluate["dense_flops"])
    assert 0 < evaluate["params"] < evaluate["dense_params"]
    assert evaluate["latency_ms"] > 0 and evaluate["dense_latency_ms"] > 0
    assert evaluate["speedup"] == pytest.approx(
        evaluate["dense_latency_ms"] / evaluate["latency_ms"]
    )
    assert evaluate["provider"] == "CPUExecutionProvider"
    assert evaluate["latency_batch"] == max(params["evaluate"]["batch_sizes"])

    export = repo.metrics("export")
    assert export["max_abs_diff"] < 1e-4
    search = repo.metrics("search")
    assert search["arch_sha256"] == evaluate["arch_sha256"] == export["arch_sha256"]
    assert repo.prepared_meta()["input_shape"] == [1, 8, 8]

    for relative in (
        "models/compact/arch.json",
        "models/compact/weights.safetensors",
        "models/model.onnx",
        "models/dense.onnx",
        "metrics/plots/search_history.csv",
        "metrics/plots/kept_widths.csv",
        "metrics/plots/finetune_history.csv",
    ):
        path = repo.root / relative
        assert path.is_file() and path.stat().st_size > 0, relative
    onnx_model = onnx.load(str(repo.root / "models" / "model.onnx"))
    metadata = {p.key: p.value for p in onnx_model.metadata_props}
    assert metadata["arch_sha256"] == search["arch_sha256"]

    status = repo.dvc("status")
    assert "up to date" in status.output, status.describe()

    shown_plots = repo.dvc_json("plots", "show", "--json")
    assert not shown_plots.get("errors"), shown_plots["errors"]
    plots = shown_plots["data"]
    for name in ("search history", "fine-tuning", "kept widths per group"):
        assert name in plots, sorted(plots)
        rendered = plots[name][0]
        assert rendered["type"] == "vega"
        assert rendered["content"]["data"]["values"], name
    shown = repo.dvc("plots", "show", "-o", str(repo.root.parent / "plots-html"))
    assert (repo.root.parent / "plots-html" / "index.html").is_file(), shown.describe()


# --------------------------------------------------------------------------- 2. MLflow store


def test_tracking_store_has_nested_runs_and_registered_model(
    repo: E2ERepo, client: MlflowClient, tmp_path: Path
) -> None:
    assert repo.reproduce_once().returncode == 0
    head = repo.head()
    evaluate = repo.metrics("evaluate")
    search = repo.metrics("search")

    parents = parent_runs(client)
    assert len(parents) == 1, [(r.info.run_name, r.info.status) for r in parents]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert Path(parent.info.artifact_uri.removeprefix("file://")).is_relative_to(repo.root)
    params = parent.data.params
    search_params = repo.read_params()["search"]
    assert params["search.method"] == search_params["method"]
    assert float(params["search.target_flops"]) == search_params["target_flops"]
    assert params["data.image_size"] == "8"
    assert params["model.arch"] == "resnet20"
    for key in ("top1", "top5", "flops_ratio", "latency_ms", "speedup"):
        assert parent.data.metrics[key] == pytest.approx(evaluate[key]), key
    assert parent.data.metrics["model_version"] == 1

    children = stage_runs(client, parent.info.run_id)
    assert [r.data.tags["dvc.stage"] for r in children] == list(STAGES)
    assert len(stage_runs(client)) == len(STAGES)  # no stray stage runs elsewhere
    by_stage = {r.data.tags["dvc.stage"]: r for r in children}
    for stage, run in by_stage.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED", stage
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["pipeline.key"] == parent.data.tags["pipeline.key"]
        assert tags["git.commit"] == head, stage
        assert run.info.artifact_uri.startswith((repo.root / "mlartifacts").as_uri()), stage
        if stage != "prepare":  # digits come from scikit-learn: prepare reads no input file
            assert any(key.startswith("input.") for key in tags), (stage, sorted(tags))
    # Input hashes are those of the files the stages read, which are still in place.
    assert by_stage["search"].data.tags["input.data/prepared"] == file_md5(
        repo.root / "data" / "prepared"
    )
    assert by_stage["evaluate"].data.tags["input.models/model.onnx"] == file_md5(
        repo.root / "models" / "model.onnx"
    )
    assert by_stage["finetune"].data.tags["input.models/searched"] == file_md5(
        repo.root / "models" / "searched"
    )

    search_run = by_stage["search"].info.run_id
    assert search_run and by_stage["search"].data.tags["arch_sha256"] == search["arch_sha256"]
    assert [a.path for a in client.list_artifacts(search_run, "architecture")] == [
        "architecture/arch.json"
    ]
    assert "plots/kept_widths.png" in [a.path for a in client.list_artifacts(search_run, "plots")]
    downloaded = Path(client.download_artifacts(search_run, "architecture/arch.json", tmp_path))
    assert downloaded.read_bytes() == (repo.root / "models" / "searched" / "arch.json").read_bytes()
    assert by_stage["search"].data.metrics["flops_ratio"] == pytest.approx(search["flops_ratio"])
    # What train.precision / memory_format "auto" resolved to on this machine, recorded.
    expected = training_numerics(parse_config({}).train, torch.device("cpu"))
    for stage in ("search", "finetune"):
        assert {k: repo.metrics(stage)[k] for k in expected} == expected, stage
        tags = by_stage[stage].data.tags
        assert {k: tags[f"train.{k}"] for k in expected} == expected, stage

    assert model_versions(client) == [1]
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == by_stage["evaluate"].info.run_id
    assert version.tags["arch_sha256"] == search["arch_sha256"]
    assert float(version.tags["flops_ratio"]) == pytest.approx(evaluate["flops_ratio"], abs=1e-4)
    assert float(version.tags["top1"]) == pytest.approx(evaluate["top1"], abs=1e-4)
    assert version.tags["method"] == search_params["method"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, ALIAS).version) == "1"


# --------------------------------------------------------------------------- 3. dvc exp run


def test_experiment_reruns_from_search_and_registers_a_new_version(
    repo: E2ERepo, client: MlflowClient
) -> None:
    assert repo.reproduce_once().returncode == 0
    head = repo.commit("baseline results")  # experiments are relative to a commit
    parents_before = len(parent_runs(client, "FINISHED"))
    prepare_runs_before = len(
        [r for r in stage_runs(client) if r.data.tags["dvc.stage"] == "prepare"]
    )
    versions_before = model_versions(client)
    earlier = {
        path: file_md5(repo.root / path)
        for path in ("models/compact/weights.safetensors", "models/searched/weights.safetensors")
    }
    earlier_arch = repo.metrics("search")["arch_sha256"]

    result = repo.dvc(
        "exp",
        "run",
        "-n",
        "e2e-flops-03",
        "-S",
        "search.target_flops=0.3",
        timeout=420,
        check=False,
    )
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result)
    assert "Stage 'prepare' didn't change, skipping" in result.output, result.describe()
    assert "Running stage 'prepare'" not in result.output
    for stage in STAGES[1:]:
        assert f"Running stage '{stage}'" in result.output

    assert repo.read_params()["search"]["target_flops"] == 0.3  # applied to the workspace
    evaluate = repo.metrics("evaluate")
    assert 0.29 <= evaluate["flops_ratio"] <= 0.3, evaluate["flops_ratio"]
    assert repo.metrics("search")["target_flops"] == 0.3

    shown = repo.dvc_json("exp", "show", "--json")
    ratios = {
        entry["name"]: experiment_metric(entry, "metrics/evaluate.json", "flops_ratio")
        for entry in walk_experiments(shown)
    }
    assert "e2e-flops-03" in ratios, sorted(ratios)
    assert ratios["e2e-flops-03"] <= 0.3
    baseline = [r for name, r in ratios.items() if name != "e2e-flops-03" and r is not None]
    assert any(0.49 <= r <= 0.5 for r in baseline), ratios  # the committed baseline
    csv = repo.dvc("exp", "show", "--csv").output
    assert "e2e-flops-03" in csv
    table = repo.run(["python", "-m", "pipeline.cli", "experiments"], timeout=120)
    assert table.returncode == 0, table.describe()
    row = next(line for line in table.output.splitlines() if line.startswith("e2e-flops-03"))
    assert "FLOPs 0.3" in row and f"{ratios['e2e-flops-03']:.3f}" in row, table.describe()

    diff = repo.dvc("metrics", "diff")
    assert diff.returncode == 0
    assert "flops_ratio" in diff.output, diff.describe()
    diff_json = repo.dvc_json("metrics", "diff", "--json")
    ratio_change = diff_json["metrics/evaluate.json"]["flops_ratio"]
    assert ratio_change["new"] == pytest.approx(evaluate["flops_ratio"])
    assert ratio_change["new"] < ratio_change["old"]

    # MLflow: no new prepare run, one new finished parent, one new model version.
    stages = stage_runs(client)
    assert len([r for r in stages if r.data.tags["dvc.stage"] == "prepare"]) == prepare_runs_before
    finished = parent_runs(client, "FINISHED")
    assert len(finished) == parents_before + 1
    newest_parent = finished[-1]
    assert float(newest_parent.data.params["search.target_flops"]) == 0.3
    children = stage_runs(client, newest_parent.info.run_id)
    assert [r.data.tags["dvc.stage"] for r in children] == list(STAGES[1:])
    assert all(r.info.status == "FINISHED" and r.data.tags["git.commit"] == head for r in children)
    assert newest_parent.data.metrics["flops_ratio"] == pytest.approx(evaluate["flops_ratio"])

    new_version = max(versions_before) + 1
    assert model_versions(client) == [*versions_before, new_version]
    assert new_version == 2
    newest = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert str(newest.version) == str(new_version)
    assert newest.tags["arch_sha256"] == repo.metrics("search")["arch_sha256"]
    assert float(newest.tags["flops_ratio"]) <= 0.3

    # The earlier model is not lost: DVC's cache keeps its files, the registry its version.
    for path, md5 in earlier.items():
        assert file_md5(repo.root / path) != md5, path  # the workspace holds the new model
        assert (repo.root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).is_file(), path
    previous = client.get_model_version(MODEL_NAME, str(max(versions_before)))
    assert previous.tags["arch_sha256"] == earlier_arch
    folder = Path(
        mlflow.artifacts.download_artifacts(
            client.get_model_version_download_uri(MODEL_NAME, previous.version)
        )
    )
    (onnx_file,) = folder.rglob("*.onnx")
    metadata = {p.key: p.value for p in onnx.load(onnx_file).metadata_props}
    assert metadata["arch_sha256"] == earlier_arch


def test_int8_experiment_reruns_export_and_evaluate_only_and_registers_an_int8_model(
    repo: E2ERepo, client: MlflowClient
) -> None:
    assert repo.reproduce_once().returncode == 0
    repo.commit("results before int8")
    # The tiny model trains for seconds: its int8 loss (about a point) is not the point here.
    overrides = ("-S", "export.quantize=int8", "-S", "export.int8_max_drop=0.2")
    result = repo.dvc("exp", "run", "-n", "e2e-int8", *overrides, timeout=420, check=False)
    assert result.returncode == 0, result.describe()
    assert_no_traceback(result)
    for stage in ("prepare", "search", "finetune"):
        assert f"Running stage '{stage}'" not in result.output, stage
    export, evaluate = repo.metrics("export"), repo.metrics("evaluate")
    assert export["quantize"] == "int8"
    assert export["val_top1_fp32"] - export["val_top1_int8"] <= 0.2
    assert evaluate["quantization"] == "int8"
    assert {"fp32_top1", "fp32_latency_ms", "int8_speedup", "dense_latency_ms"} <= set(evaluate)
    ops = {node.op_type for node in onnx.load(repo.root / "models" / "model.onnx").graph.node}
    assert "QuantizeLinear" in ops
    newest = client.get_model_version_by_alias(MODEL_NAME, ALIAS)
    assert newest.tags["quantization"] == "int8"


# --------------------------------------------------------------------------- 4. bad input


BAD_PARAMS = [
    pytest.param({"search": {"method": "bogus"}}, "search.method", id="unknown-method"),
    pytest.param({"search": {"target_flops": 1.5}}, "search.target_flops", id="budget-above-1"),
    pytest.param({"model": {"arch": "resnet9000"}}, "model.arch", id="unknown-arch"),
    pytest.param({"data": {"dataset": "mnist"}}, "data.dataset", id="unknown-dataset"),
    pytest.param(
        {"data": {"dataset": "imagefolder", "root": "nope"}},
        "data.root",
        id="imagefolder-missing-root",
    ),
]

PROTECTED = (
    "models/compact/weights.safetensors",
    "models/compact/arch.json",
    "models/model.onnx",
    "data/prepared/splits.safetensors",
    "metrics/prepare.json",
    "metrics/search.json",
    "metrics/evaluate.json",
    "metrics/plots/search_history.csv",
    "metrics/plots/kept_widths.csv",
    "dvc.lock",
)


@pytest.mark.parametrize(("overrides", "parameter"), BAD_PARAMS)
def test_bad_parameters_fail_cleanly_and_leave_outputs_untouched(
    repo: E2ERepo, overrides: dict, parameter: str
) -> None:
    assert repo.reproduce_once().returncode == 0
    before = {relative: repo.sha256(relative) for relative in PROTECTED}
    original = repo.params_path.read_bytes()
    params = repo.read_params()
    for section, values in overrides.items():
        params[section].update(values)
    repo.write_params(params)
    try:
        result = repo.dvc("repro", timeout=180, check=False)
    finally:
        repo.params_path.write_bytes(original)

    assert result.returncode != 0, result.describe()
    assert_no_traceback(result)
    message = normalized(result.output)
    assert parameter in message, result.describe()
    assert "error:" in message
    after = {relative: repo.sha256(relative) for relative in PROTECTED}
    assert after == before, [k for k in PROTECTED if after[k] != before[k]]
    status = repo.dvc("status")
    assert "up to date" in status.output, status.describe()
