"""Helpers for the sharing tests: a committed copy of the tiny repository, clones, remotes.

The shared ``tiny_repo`` is only read: each test works on its own copy (``owned_copy``),
so that committing results and configuring remotes there changes nothing other tests see.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.e2e_repo import E2ERepo

# What a colleague gets from git + `dvc pull`: the models and data (DVC cache) and the
# metrics and plots (in git).
SHARED_OUTPUTS = (
    "data/prepared/splits.safetensors",
    "models/searched/weights.safetensors",
    "models/compact/arch.json",
    "models/compact/weights.safetensors",
    "models/model.onnx",
    "models/dense.onnx",
    "metrics/evaluate.json",
    "metrics/plots/search_history.csv",
)

# Local state of one machine, not part of what a colleague or a runner gets.
_NOT_COPIED = {"mlflow.db", ".mlflow-spool", "checkpoints", "tmp"}

# Fake credentials for the S3 server on loopback; no real AWS configuration is read.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def owned_copy(source: E2ERepo, destination: Path, message: str) -> E2ERepo:
    """A copy of ``source`` (git history, DVC cache, workspace) with its results committed."""
    result = source.reproduce_once()
    assert result.returncode == 0, result.describe()
    shutil.copytree(source.root, destination, ignore=_ignore_local_state, symlinks=True)
    repo = E2ERepo(destination)
    status = repo.dvc("status")
    assert "up to date" in status.output, "the tiny repo is not reproduced:\n" + status.describe()
    repo.git("branch", "-M", "main")
    repo.commit(message)
    return repo


def _ignore_local_state(directory: str, names: list[str]) -> set[str]:
    ignored = {name for name in names if name in _NOT_COPIED}
    if not directory.endswith(".dvc"):
        ignored.discard("tmp")  # only .dvc/tmp is machine state
    return ignored


def clone(source: E2ERepo, destination: Path) -> E2ERepo:
    """``git clone`` of ``source``: what a colleague or a CI runner starts from."""
    source.run(["git", "clone", "-q", str(source.root), str(destination)], timeout=60)
    repo = E2ERepo(destination)
    repo.git("config", "user.name", "colleague")
    repo.git("config", "user.email", "colleague@example.invalid")
    repo.git("config", "commit.gpgsign", "false")
    return repo


def remote_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@contextmanager
def s3_server() -> Iterator[str]:
    """An S3-compatible object store (moto) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=FAKE_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=bucket)
