"""What MLflow's UI shows of the pipeline's runs, written to a real SQLite store: the
experiment's kind (model training, not GenAI), the prepared data set as each run's dataset
input (also when spooled and replayed), and a registered version's description.

The same records read back through a real `mlflow server` from a real `dvc repro`:
tests/e2e/test_mlflow_view.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from pipeline.data import save_prepared
from pipeline.errors import DataError
from pipeline.pruning.slicing import dense_spec
from pipeline.pruning.spec import ArchSpec
from pipeline.tracking import (
    EXPERIMENT_KIND,
    TAG_EXPERIMENT_KIND,
    PipelineTracker,
    dataset_origin,
    file_md5,
    prepared_dataset,
)
from pipeline.tracking.calls import execute
from pipeline.tracking.spool import replay_all
from tests.conftest import synthetic_data
from tests.tracking.helpers import EXPERIMENT, PARAMS, new_tracker, tiny_onnx_model, unique

CONTEXT_TAG = "mlflow.data.context"


def test_a_new_experiment_opens_as_model_training(store_uri, client):
    name = unique("kind-new")
    tracker = PipelineTracker(store_uri, name, unique("key"), PARAMS, "pipeline")
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"


def test_an_existing_experiment_gets_the_kind_once_and_keeps_a_chosen_one(store_uri, client):
    untagged = client.create_experiment(unique("kind-old"))  # made before the tag existed
    chosen = client.create_experiment(unique("kind-chosen"), tags={TAG_EXPERIMENT_KIND: "x"})
    for experiment_id in (untagged, chosen):
        name = client.get_experiment(experiment_id).name
        PipelineTracker(store_uri, name, unique("key"), PARAMS, "pipeline")
    assert client.get_experiment(untagged).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[TAG_EXPERIMENT_KIND] == "x"  # the user's choice


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / "prepared"
    save_prepared(synthetic_data(), folder)
    return folder


def flowers_dataset(prepared: Path, root: Path) -> dict[str, str]:
    return prepared_dataset(prepared, file_md5(prepared), dataset_origin("imagefolder", root))


def test_stage_and_pipeline_runs_get_the_dataset_with_digest_splits_and_source(
    store_uri, client, prepared, tmp_path
):
    tracker = new_tracker(store_uri, unique("dataset"))
    dataset = flowers_dataset(prepared, tmp_path / "flowers")
    with tracker.stage_run("evaluate") as stage:
        stage.log_dataset(dataset, "testing")
        stage.log_dataset(dataset, "testing")  # a rerun's second call links nothing new

    [stage_input] = client.get_run(stage.run_id).inputs.dataset_inputs
    [parent_input] = client.get_run(tracker.parent_run_id).inputs.dataset_inputs
    logged = stage_input.dataset
    assert (logged.name, logged.digest) == ("flowers", file_md5(prepared))
    assert logged.digest.endswith(".dir")  # DVC's directory hash, as dvc.lock holds it
    assert (logged.source_type, json.loads(logged.source)) == (
        "local",
        {"uri": str((tmp_path / "flowers").resolve())},
    )
    profile = json.loads(logged.profile)
    assert profile["splits"] == {"train": 96, "val": 32, "test": 32}
    assert (profile["input_shape"], profile["num_classes"]) == ([1, 8, 8], 4)
    features = json.loads(json.loads(logged.schema)["mlflow_tensorspec"]["features"])
    assert features[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 1, 8, 8]}
    assert {(t.key, t.value) for t in stage_input.tags} == {(CONTEXT_TAG, "testing")}
    assert parent_input.dataset.digest == logged.digest
    assert {(t.key, t.value) for t in parent_input.tags} == {(CONTEXT_TAG, "training")}


def test_origins_of_bundled_and_named_data_sets(tmp_path):
    digits = dataset_origin("digits", tmp_path / "unused")
    assert (digits["name"], digits["source_type"]) == ("digits", "code")
    assert json.loads(digits["source"])["tags"] == {
        "mlflow.source.name": "sklearn.datasets.load_digits"
    }
    cifar = dataset_origin("cifar10", tmp_path / "raw")
    assert (cifar["name"], cifar["source_type"]) == ("cifar10", "local")


def test_missing_prepared_metadata_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"meta\.json.*Rerun the prepare stage"):
        prepared_dataset(tmp_path, "0" * 32, dataset_origin("digits", tmp_path))


def compact_onnx(path: Path) -> ArchSpec:
    """A tiny ONNX file carrying the metadata the export stage writes for a halved ResNet-20."""
    dense = dense_spec("resnet20", (1, 8, 8), 4)
    spec = ArchSpec("resnet20", (1, 8, 8), 4, {k: v // 2 for k, v in dense.widths.items()})
    model = onnx.load(tiny_onnx_model(path))
    onnx.helper.set_model_props(model, {"arch_spec": spec.canonical_json()})
    onnx.save(model, path)
    return spec


VERSION_TAGS = {
    "top1": "0.9944",
    "flops_ratio": "0.4992",
    "flops": "5056832",
    "dense_flops": "10130048",
    "params": "93194",
    "dense_params": "272186",
    "method": "jst",
    "quantization": "none",
}


def assert_described(description: str, spec: ArchSpec) -> None:
    assert "**resnet20**" in description and "`jst`" in description
    assert "FLOPs 5.06 M (0.499 of dense 10.1 M)" in description
    assert "params 93.2 k (dense 272 k)" in description
    assert "test top-1 99.44 %" in description
    table = [line for line in description.splitlines() if line.startswith("|")]
    assert len({len(line) for line in table}) == 1, table  # padded: columns line up as text
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    assert cells[0] == ["channel group", "kept", "dense"]
    assert ["stages.2.0.conv1", "32", "64"] in cells  # kept vs dense width
    assert ["stem", "8", "16"] in cells
    assert spec.sha256 in description


def test_a_registered_version_describes_its_architecture(store_uri, client, tmp_path):
    spec = compact_onnx(tmp_path / "model.onnx")
    name = unique("described")
    tracker = new_tracker(store_uri, unique("describe"))
    with tracker.stage_run("evaluate") as stage:
        tags = VERSION_TAGS | {"arch_sha256": spec.sha256}
        version = stage.register_onnx_model(tmp_path / "model.onnx", name, tags)
    assert_described(client.get_model_version(name, version).description, spec)


def test_spooled_dataset_and_registration_are_replayed_with_description(
    store_uri, client, prepared, tmp_path
):
    """A stage whose store went away spools ``log_inputs`` and the registration as JSON;
    the replay logs the dataset and describes the version as the online calls do."""
    spec = compact_onnx(tmp_path / "model.onnx")
    name = unique("spooled-described")
    key = unique("spooled-dataset")
    tracker = PipelineTracker(store_uri, EXPERIMENT, key, PARAMS, "pipeline", tmp_path / "spool")
    with tracker.stage_run("evaluate") as stage:
        stage.spool.activate(ConnectionRefusedError("refused"))  # the store stopped answering
        stage.log_dataset(flowers_dataset(prepared, tmp_path / "flowers"), "testing")
        tags = VERSION_TAGS | {"arch_sha256": spec.sha256}
        assert stage.register_onnx_model(tmp_path / "model.onnx", name, tags) is None
    assert client.get_run(stage.run_id).inputs.dataset_inputs == []

    replayed = replay_all(tmp_path / "spool", store_uri, lambda op: execute(client, store_uri, op))
    assert replayed == (4, 0)  # dataset on stage and parent run, registration, stage end
    [stage_input] = client.get_run(stage.run_id).inputs.dataset_inputs
    assert stage_input.dataset.digest == file_md5(prepared)
    assert client.get_run(tracker.parent_run_id).inputs.dataset_inputs
    assert_described(client.get_model_version(name, "1").description, spec)
