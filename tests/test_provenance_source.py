"""Where a run's code came from (pipeline.provenance): the git repository, branch and commit,
recorded as MLflow's own source tags, which fill the UI's Source and Version columns.

The tags on the runs of a real ``dvc repro``: tests/e2e/test_mlflow_view.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.provenance import collect, record_tags, without_credentials

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        [*GIT, "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    return tmp_path


def test_stage_run_source_is_the_remote_without_its_token(repo: Path) -> None:
    git(repo, "remote", "add", "origin", "https://bot:s3cret@github.com/org/jst-pipeline.git")
    record = collect(repo, {}, "search")
    url = "https://github.com/org/jst-pipeline.git"
    assert (record["git"]["repository"], record["git"]["branch"]) == (url, "main")

    tags = record_tags(record)
    assert tags["mlflow.source.name"] == tags["mlflow.source.git.repoURL"] == url
    assert tags["mlflow.source.type"] == "PROJECT"  # the UI shows "jst-pipeline:search"
    assert tags["mlflow.project.entryPoint"] == "search"
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.branch"] == "main"
    assert tags["mlflow.source.git.dirty"] == "false"
    assert "s3cret" not in str(record) and "s3cret" not in str(tags)


def test_a_repository_without_remote_is_named_by_its_folder(repo: Path) -> None:
    git(repo, "checkout", "-q", "--detach")
    record = collect(repo, {}, None)  # the pipeline's parent run
    assert record["git"]["repository"] == str(repo.resolve())
    assert record["git"]["branch"] is None
    tags = record_tags(record)
    assert tags["mlflow.source.name"] == str(repo.resolve())
    assert "mlflow.project.entryPoint" not in tags and "mlflow.source.git.branch" not in tags


def test_outside_git_only_the_commit_tag_says_unknown(tmp_path: Path) -> None:
    tags = record_tags(collect(tmp_path, {}, "prepare"))
    assert tags["mlflow.source.git.commit"] == "unknown"
    assert "mlflow.source.name" not in tags


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://user:token@gitlab.com/o/r.git", "https://gitlab.com/o/r.git"),
        ("https://token@github.com/o/r", "https://github.com/o/r"),
        ("ssh://git:pw@host.example/o/r.git", "ssh://host.example/o/r.git"),
        ("ssh://git@host.example/o/r.git", "ssh://git@host.example/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
    ],
)
def test_credentials_are_dropped_from_remote_urls(url: str, kept: str) -> None:
    assert without_credentials(url) == kept
