"""Sharing through a DVC remote, end to end: the owner pushes, a colleague clones and pulls.

Real remotes only: a local directory, and an S3 bucket on an S3-compatible server (moto)
on 127.0.0.1 with fake credentials. After ``git clone`` + ``dvc pull`` the colleague's
repository is up to date: ``dvc repro`` reruns nothing and the files are byte-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.e2e_repo import STAGES, E2ERepo
from tests.e2e.sharing import (
    FAKE_AWS_ENV,
    SHARED_OUTPUTS,
    clone,
    create_bucket,
    owned_copy,
    remote_files,
    s3_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def owner(tiny_repo: E2ERepo, tmp_path_factory: pytest.TempPathFactory) -> E2ERepo:
    return owned_copy(tiny_repo, tmp_path_factory.mktemp("owner") / "repo", "results")


RAW_IMAGES = ("data/raw/cat/0.png", "data/raw/dog/0.png")


def add_raw_images(repo: E2ERepo) -> None:
    """``dvc add data/raw``: raw data in the DVC cache, ``data/raw.dvc`` in git."""
    for index, relative in enumerate(RAW_IMAGES):
        path = repo.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes([index]) * 64)  # stand-ins: digits is the configured data set
    repo.dvc("add", "data/raw")
    assert (repo.root / "data" / "raw.dvc").is_file()


def assert_colleague_is_up_to_date(owner: E2ERepo, colleague: E2ERepo) -> None:
    status = colleague.dvc("status")
    assert "Data and pipelines are up to date." in status.output, status.describe()
    repro = colleague.dvc("repro", timeout=180)
    assert "Data and pipelines are up to date." in repro.output, repro.describe()
    for stage in STAGES:
        assert f"Running stage '{stage}'" not in repro.output, repro.describe()
    for relative in SHARED_OUTPUTS:
        assert colleague.sha256(relative) == owner.sha256(relative), relative
    assert colleague.git("status", "--porcelain").output.strip() == ""


def test_local_directory_remote_round_trip(owner: E2ERepo, tmp_path: Path) -> None:
    storage = tmp_path / "dvc-storage"
    owner.dvc("remote", "add", "-d", "storage", str(storage))
    add_raw_images(owner)  # how imagefolder/CIFAR data gets to colleagues and runners
    owner.commit("DVC remote: a local directory")  # .dvc/config: colleagues get the remote
    pushed = owner.dvc("push")
    assert "pushed" in pushed.output, pushed.describe()
    assert remote_files(storage), "dvc push stored nothing"

    colleague = clone(owner, tmp_path / "colleague")
    assert not (colleague.root / "models" / "model.onnx").exists()  # not in git
    pulled = colleague.dvc("pull")
    assert "model.onnx" in pulled.output, pulled.describe()
    assert_colleague_is_up_to_date(owner, colleague)
    for relative in RAW_IMAGES:
        assert colleague.sha256(relative) == owner.sha256(relative), relative


def test_s3_remote_round_trip(owner: E2ERepo, tmp_path: Path) -> None:
    with s3_server() as endpoint:
        create_bucket(endpoint, "jst-models")
        owner.env.update(FAKE_AWS_ENV)
        owner.dvc("remote", "add", "s3", "s3://jst-models/cache")
        owner.dvc("remote", "modify", "s3", "endpointurl", endpoint)
        owner.commit("DVC remote: an S3 bucket")
        pushed = owner.dvc("push", "-r", "s3")
        assert "pushed" in pushed.output, pushed.describe()

        colleague = clone(owner, tmp_path / "colleague")
        colleague.env.update(FAKE_AWS_ENV)
        pulled = colleague.dvc("pull", "-r", "s3")
        assert "model.onnx" in pulled.output, pulled.describe()
        assert_colleague_is_up_to_date(owner, colleague)
