"""End to end: what MLflow's UI shows of a real ``dvc repro`` (the shared tiny repository,
tests/e2e/conftest.py), read from its store ``<repo>/mlflow.db``: the experiment opens as
model training, every run of the execution has the prepared data set as its dataset input
(digest = the md5 ``dvc.lock`` records for ``data/prepared``) and the git source, and the
registered version describes its architecture.

Version 1's execution is the one read: later tests of test_pipeline_e2e.py add commits and
versions but change no data parameter, so ``data/prepared`` keeps its hash.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.pruning.slicing import dense_spec
from tests.e2e.e2e_repo import STAGES, E2ERepo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

EXPERIMENT = "jst-pipeline"
MODEL_NAME = "compact-cnn"
CONTEXTS = {"prepare": "training", "search": "training", "finetune": "training"}
CONTEXTS |= {"export": "testing", "evaluate": "testing", None: "training"}  # None: parent


@pytest.fixture(scope="module")
def source(reproduced_repo: E2ERepo) -> E2ERepo:
    return reproduced_repo


@pytest.fixture(scope="module")
def client(source: E2ERepo) -> MlflowClient:
    return MlflowClient(tracking_uri=source.tracking_uri, registry_uri=source.tracking_uri)


@pytest.fixture(scope="module")
def execution(client: MlflowClient) -> dict:
    """Version 1's parent run (key None) and its stage runs, by stage."""
    run_id = client.get_model_version(MODEL_NAME, "1").run_id
    parent = client.get_run(client.get_run(run_id).data.tags["mlflow.parentRunId"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    runs = {run.data.tags["dvc.stage"]: run for run in children}
    assert sorted(runs) == sorted(STAGES)
    return {None: parent, **runs}


def test_the_experiment_opens_as_model_training(client: MlflowClient) -> None:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_every_run_has_the_prepared_data_set_hashed_as_dvc_lock(
    source: E2ERepo, execution: dict
) -> None:
    lock = yaml.safe_load((source.root / "dvc.lock").read_text())
    [prepared] = [
        out for out in lock["stages"]["prepare"]["outs"] if out["path"] == "data/prepared"
    ]
    sizes = source.metrics("prepare")["sizes"]
    for stage, run in execution.items():
        [logged] = run.inputs.dataset_inputs
        dataset = logged.dataset
        assert (dataset.name, dataset.digest) == ("digits", prepared["md5"]), stage
        assert dataset.source_type == "code" and "load_digits" in dataset.source
        profile = json.loads(dataset.profile)
        assert profile["splits"] == sizes and profile["input_shape"] == [1, 8, 8]
        assert {(t.key, t.value) for t in logged.tags} == {("mlflow.data.context", CONTEXTS[stage])}


def test_every_run_names_the_repository_and_commit_it_ran(source: E2ERepo, execution: dict) -> None:
    first_commit = source.git("rev-list", "--max-parents=0", "HEAD").output.strip()
    for stage, run in execution.items():
        tags = run.data.tags
        assert tags["mlflow.source.name"] == str(source.root.resolve()), stage  # no remote
        assert tags["mlflow.source.type"] == "PROJECT"
        assert tags["mlflow.source.git.commit"] == first_commit
        assert tags.get("mlflow.project.entryPoint") == stage


def test_the_registered_version_describes_its_architecture(client: MlflowClient) -> None:
    version = client.get_model_version(MODEL_NAME, "1")
    tags, description = version.tags, version.description
    assert "**resnet20**" in description and f"`{tags['method']}`" in description
    assert f"({float(tags['flops_ratio']):.3f} of dense" in description
    assert f"test top-1 {100 * float(tags['top1']):.2f} %" in description
    assert "params " in description and tags["arch_sha256"] in description
    rows = dict(
        (group, (int(kept), int(dense)))
        # the table's columns are aligned: padded with spaces
        for group, kept, dense in re.findall(
            r"^\| ([\w.]+) +\| +(\d+) \| +(\d+) \|$", description, re.M
        )
    )
    dense = dense_spec("resnet20", (1, 8, 8), 10).widths
    assert {group: widths[1] for group, widths in rows.items()} == dense
    assert all(0 < kept <= full for kept, full in rows.values())
    assert sum(kept for kept, _ in rows.values()) < sum(dense.values())  # pruned
