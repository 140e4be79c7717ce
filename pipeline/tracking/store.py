"""Where the tracking store is, and whether it can be used: the URI and its checks."""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import PipelineError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DB_FILE_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"

# `dvc exp run --queue/--temp` runs stages in a copy at <repo>/.dvc/tmp/exps/<tmpdir>.
DVC_EXPERIMENT_TMP_PARTS = (".dvc", "tmp", "exps")


def resolve_tracking_uri(repo_root: Path | str) -> str:
    """The tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` at the repo root.

    Inside a DVC temporary experiment copy the original repository's store is used, so that
    queued experiments log next to the workspace ones.
    """
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if from_env:
        return from_env
    root = original_repo_root(Path(repo_root).resolve())
    return f"sqlite:///{(root / DB_FILE_NAME).as_posix()}"


def original_repo_root(path: Path) -> Path:
    """``path`` itself, or the repository it was copied from when under ``.dvc/tmp/exps``."""
    parts = path.parts
    width = len(DVC_EXPERIMENT_TMP_PARTS)
    for index in range(len(parts) - width + 1):
        if parts[index : index + width] == DVC_EXPERIMENT_TMP_PARTS:
            return Path(*parts[:index])
    return path


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``sqlite:////abs`` is absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go to ``mlartifacts/`` beside the database.

    MLflow's default (``./mlruns`` of the current directory) would put them inside DVC's
    temporary experiment copies, which are deleted after the run. Servers choose their own.
    """
    db_path = sqlite_db_path(uri)
    if db_path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (db_path.absolute().parent / ARTIFACTS_DIR_NAME / folder).as_uri()


def check_tracking_available(uri: str, timeout_s: float = 5.0) -> None:
    """Fail within seconds, before any training, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        _check_http_server(uri, timeout_s)
    elif (db_path := sqlite_db_path(uri)) is not None:
        _check_sqlite_location(uri, db_path)


def _check_http_server(uri: str, timeout_s: float) -> None:
    health_url = uri.rstrip("/") + "/health"
    fix = (
        "Start the server (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or unset "
        f"{TRACKING_URI_ENV} to log to the local SQLite store {DB_FILE_NAME}."
    )
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise PipelineError(
            f"MLflow tracking server {uri} answered HTTP {error.code} at {health_url}; "
            f"is it an MLflow server? {fix}"
        ) from error
    except (OSError, http.client.HTTPException) as error:  # refused, timeout, DNS, not HTTP
        reason = getattr(error, "reason", error)
        raise PipelineError(
            f"MLflow tracking server {uri} is not reachable ({reason}). {fix}"
        ) from error


def _check_sqlite_location(uri: str, db_path: Path) -> None:
    directory = db_path.absolute().parent
    fix = f"Create the directory or set {TRACKING_URI_ENV} to a writable location."
    if not directory.is_dir():
        raise PipelineError(
            f"MLflow tracking store {uri}: directory {directory} does not exist. {fix}"
        )
    if not os.access(directory, os.W_OK) or (db_path.exists() and not os.access(db_path, os.W_OK)):
        raise PipelineError(f"MLflow tracking store {uri}: {db_path} is not writable. {fix}")
