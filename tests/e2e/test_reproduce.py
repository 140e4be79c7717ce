"""End to end: a registered model version rebuilt from what its runs recorded.

The source is the shared tiny repository after its first ``dvc repro`` (tests/e2e/conftest.py);
``jst reproduce`` clones it at the recorded commit into a fresh folder and runs ``dvc repro``
there for real, on CPU. Version 1 is the one used: later tests of test_pipeline_e2e.py add
commits and versions but leave its records as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.provenance import RECORD_FILE
from pipeline.reproduce import is_timing, locked_deps, rebuilt_evaluation
from pipeline.tracking import RecordedModelVersion, recorded_model_version
from tests.e2e.e2e_repo import STAGES, TINY_PARAMS, E2ERepo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODEL_NAME = "compact-cnn"
PACKAGES = ("python", "torch", "torchvision", "onnx", "onnxruntime", "mlflow", "dvc", "numpy")


@pytest.fixture(scope="module")
def source(reproduced_repo: E2ERepo) -> E2ERepo:
    return reproduced_repo


@pytest.fixture(scope="module")
def recorded(source: E2ERepo) -> RecordedModelVersion:
    return recorded_model_version(source.tracking_uri, MODEL_NAME, 1)


@pytest.fixture(scope="module")
def records(
    source: E2ERepo, recorded: RecordedModelVersion, tmp_path_factory: pytest.TempPathFactory
) -> dict[str | None, dict]:
    """The provenance record of each run of version 1's pipeline execution; key None: parent."""
    client = MlflowClient(tracking_uri=source.tracking_uri)
    parent_id = recorded.run_tags["mlflow.parentRunId"]
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
    )
    folder = tmp_path_factory.mktemp("records")
    found = {}
    for run_id in [parent_id, *(run.info.run_id for run in children)]:
        path = client.download_artifacts(run_id, RECORD_FILE, str(folder / run_id))
        record = json.loads(Path(path).read_text())
        found[record["stage"]] = record | {"run_tags": client.get_run(run_id).data.tags}
    return found


def first_commit(repo: E2ERepo) -> str:
    return repo.git("rev-list", "--max-parents=0", "HEAD").output.strip()


def test_every_run_records_commit_inputs_params_packages_and_device(
    source: E2ERepo, recorded: RecordedModelVersion, records: dict
) -> None:
    commit = first_commit(source)  # version 1 ran on the repository's first commit
    assert sorted(records, key=str) == sorted([None, *STAGES], key=str)
    dvc_yaml = yaml.safe_load((source.root / "dvc.yaml").read_text())["stages"]
    committed_params = source.git("show", f"{commit}:params.yaml").output
    for stage, record in records.items():
        git = record["git"]
        assert (git["commit"], git["dirty"]) == (commit, False), stage
        # The resolved parameters, and params.yaml as the stage read it.
        assert record["params"]["data"]["image_size"] == TINY_PARAMS["data"]["image_size"]
        assert "target_flops" in record["params"]["search"]
        assert record["params_yaml"] == committed_params, stage
        assert sorted(record["packages"]) == sorted(PACKAGES)
        assert "unknown" not in record["packages"].values(), record["packages"]
        assert record["device"]["torch"] == "cpu"
        assert record["device"]["torch_threads"] >= 1
        tags = record["run_tags"]
        assert (tags["git.commit"], tags["git.dirty"]) == (commit, "false"), stage
        assert tags["version.onnxruntime"] == record["packages"]["onnxruntime"]
        assert tags["torch.threads"] == str(record["device"]["torch_threads"])
        declared = [] if stage is None else dvc_yaml[stage]["deps"]
        assert sorted(record["dvc"]["deps"]) == sorted(declared), stage
    assert recorded.tags["git.commit"] == commit
    assert recorded.tags["git.dirty"] == "false"
    assert recorded.tags["arch_sha256"] == recorded.run_tags["arch_sha256"]
    assert recorded.record["stage"] == "evaluate"


def test_dry_run_prints_the_recorded_commit_and_commands(
    source: E2ERepo, recorded: RecordedModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(source.root)  # in-process: a CLI subprocess would cost ~25 s here
    runner = CliRunner()
    dry = ["reproduce", "--model", MODEL_NAME, "--version", "1", "--dry-run"]
    result = runner.invoke(app, dry)
    commit = recorded.record["git"]["commit"]
    assert result.exit_code == 0, result.output
    assert f"commit {commit}" in result.output
    assert f"checkout --quiet --detach {commit}" in result.output
    assert "$ dvc repro" in result.output
    missing = runner.invoke(app, ["reproduce", "--version", "99", "--dry-run"])
    assert missing.exit_code == 1
    assert "has no version 99" in missing.output and missing.exception is not None
    assert isinstance(missing.exception, SystemExit)  # a message, not a traceback


def test_rebuild_from_records_gives_the_same_architecture_and_metrics(
    source: E2ERepo,
    recorded: RecordedModelVersion,
    records: dict,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    workdir = tmp_path_factory.mktemp("rebuild") / "v1"
    versions_before = MlflowClient(registry_uri=source.tracking_uri).search_model_versions(
        f"name='{MODEL_NAME}'"
    )
    result = source.run(
        ["python", "-m", "pipeline.cli", "reproduce", "--version", "1", "--workdir", str(workdir)],
        timeout=480,
        check=False,
    )
    assert result.returncode == 0, result.describe()
    # On the same CPU the rebuild is exact: the verdict says so, within no tolerance.
    assert "reproduced bit for bit: architecture and every non-timing metric equal" in (
        result.output
    ), result.describe()
    assert "recorded | rebuilt | difference (accuracies may differ by 0.01" in result.output
    for name in ("arch_sha256", "top1", "top5", "flops", "params"):
        assert f"  same      {name}: " in result.output, name
    for stage in STAGES:  # a real rebuild from nothing, not a cache restore
        assert f"Running stage '{stage}'" in result.output

    # Checked here again, independently of the command's own comparison.
    commit = recorded.record["git"]["commit"]
    head = E2ERepo(workdir).git("rev-parse", "HEAD").output.strip()
    assert head == commit
    rebuilt = rebuilt_evaluation(workdir)  # metrics/evaluate.json + metrics/details/
    assert rebuilt["arch_sha256"] == recorded.tags["arch_sha256"]
    compared = [name for name in recorded.metrics if not is_timing(name)]
    assert {"top1", "top5", "flops", "params", "flops_ratio"} <= set(compared)
    for name in compared:
        assert float(rebuilt[name]) == recorded.metrics[name], name  # exactly, on CPU
    # The DVC hashes each stage recorded at its start are those DVC wrote into the rebuild's
    # dvc.lock: same computation, and data, weights and ONNX files rebuilt bit for bit in
    # another checkout (the export drops the exporter's absolute source paths).
    for stage in STAGES:
        locked, hashed = locked_deps(workdir / "dvc.lock", stage), records[stage]["dvc"]["deps"]
        assert locked == hashed, stage
    client = MlflowClient(tracking_uri=source.tracking_uri)
    model_id = client.get_model_version(MODEL_NAME, "1").source.removeprefix("models:/")
    logged = Path(client.get_logged_model(model_id).artifact_location.removeprefix("file://"))
    rebuilt_onnx = (workdir / "models" / "model.onnx").read_bytes()
    assert (logged / "model.onnx").read_bytes() == rebuilt_onnx

    # The rebuild logged to its own store: the source registry has no new version.
    assert (workdir / "mlflow.db").is_file()
    versions_after = MlflowClient(registry_uri=source.tracking_uri).search_model_versions(
        f"name='{MODEL_NAME}'"
    )
    assert len(versions_after) == len(versions_before)
