"""The repository's spool directory, and the replay of its calls against the store."""

from __future__ import annotations

from pathlib import Path

from pipeline.tracking.calls import execute
from pipeline.tracking.client import make_client
from pipeline.tracking.spool import SPOOL_DIR_NAME, pending, replay_all
from pipeline.tracking.store import original_repo_root


def replay_spooled(uri: str, repo_root: Path | str) -> tuple[int, int]:
    """Replay the tracking calls spooled in the repository for ``uri``.

    Returns (calls replayed, spool files left); see ``pipeline.tracking.spool``.
    """
    directory = spool_directory(repo_root)
    if not pending(directory):
        return 0, 0
    client = make_client(uri)
    return replay_all(directory, uri, lambda op: execute(client, uri, op))


def spool_directory(repo_root: Path | str) -> Path:
    """``.mlflow-spool`` of the repository (of the original one, in a DVC experiment copy)."""
    return original_repo_root(Path(repo_root).resolve()) / SPOOL_DIR_NAME
