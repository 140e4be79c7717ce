"""Tests of pipeline.tracking.registry: ONNX models registered as versions with tags and alias."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from mlflow.artifacts import download_artifacts

from pipeline.errors import ArtifactError
from tests.tracking.helpers import new_tracker, tiny_onnx_model, unique


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
