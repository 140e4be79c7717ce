"""End to end: DVC's model registry sees the compact model that dvc.yaml declares.

The source is the shared tiny repository after its first ``dvc repro`` (tests/e2e/conftest.py).
It is copied, so its git state stays as the other modules expect; in the copy the results are
committed and a version is registered the GTO way (``gto register``: an annotated git tag),
then DVC's own tooling finds the artifact (``dvc.api.artifacts_show``) and downloads it
(``dvc artifacts get``), and ONNX Runtime runs what came back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from dvc.api import artifacts_show
from dvc.repo import Repo
from mlflow import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.tracking import file_md5
from tests.e2e.e2e_repo import E2ERepo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NAME = "compact-cnn"
PATH = "models/model.onnx"
# DVC's locks and temporary files, and the MLflow store: the copy needs neither.
NOT_COPIED = (".dvc/tmp", "mlflow.db", "mlartifacts", "mlruns", ".mlflow-spool")


@pytest.fixture(scope="module")
def registry(tiny_repo: E2ERepo, tmp_path_factory: pytest.TempPathFactory) -> E2ERepo:
    """A copy of the tiny repository with its results committed and version 1.0.0 tagged."""
    result = tiny_repo.reproduce_once()
    assert result.returncode == 0, result.describe()
    root = tmp_path_factory.mktemp("artifacts") / "repo"

    def skipped(folder: str, names: list[str]) -> set[str]:
        relative = Path(folder).relative_to(tiny_repo.root)
        return {n for n in names if (relative / n).as_posix().removeprefix("./") in NOT_COPIED}

    shutil.copytree(tiny_repo.root, root, ignore=skipped)
    copy = E2ERepo(root)
    copy.commit("pipeline results")
    copy.run(["gto", "register", NAME, "--version", "v1.0.0"])
    return copy


def test_dvc_yaml_declares_the_compact_model_as_a_model_artifact(
    registry: E2ERepo, tiny_repo: E2ERepo
) -> None:
    with Repo(str(registry.root)) as repo:  # DVC parses and validates dvc.yaml's artifacts
        artifact = repo.artifacts.read()["dvc.yaml"][NAME]
    assert artifact.path == PATH and artifact.type == "model"
    assert "ONNX" in artifact.desc and "pruned" in artifact.desc
    assert {"onnx", "pruned"} <= set(artifact.labels)
    # The name the pipeline registers the same ONNX file under in MLflow.
    assert TrackingConfig().registered_model == NAME
    client = MlflowClient(registry_uri=tiny_repo.tracking_uri)
    assert client.get_registered_model(NAME).name == NAME


def test_the_registered_version_is_found_and_downloaded_by_dvc(
    registry: E2ERepo, tmp_path: Path
) -> None:
    shown = artifacts_show(NAME, version="v1.0.0", repo=str(registry.root))
    assert shown == {"rev": registry.head(), "path": PATH}

    out = tmp_path / "model.onnx"
    get = [
        *("python", "-m", "dvc", "artifacts", "get"),
        *(str(registry.root), NAME, "--rev", "v1.0.0", "-o", str(out)),
    ]
    result = registry.run(get, timeout=120)
    assert "Downloaded 1 file" in result.output, result.describe()
    locked = yaml.safe_load((registry.root / "dvc.lock").read_text())["stages"]["export"]
    md5 = next(o["md5"] for o in locked["outs"] if o["path"] == PATH)
    assert file_md5(out) == md5  # the committed version's file, bit for bit

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    given = session.get_inputs()[0]
    shape = [dim if isinstance(dim, int) else 2 for dim in given.shape]
    dtype = np.uint8 if given.type == "tensor(uint8)" else np.float32
    (logits,) = session.run(None, {given.name: np.zeros(shape, dtype)})
    assert logits.shape == (2, len(registry.prepared_meta()["classes"]))
