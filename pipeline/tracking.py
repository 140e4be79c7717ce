"""Experiment tracking with MLflow: one parent run per pipeline execution, one child per stage.

Every DVC stage runs in its own process. Each opens a ``PipelineTracker`` with the same
``pipeline_key``; the tracker finds the RUNNING parent run carrying that key (or creates it),
and ``stage_run`` opens a nested child run for the stage. The last stage (evaluate) calls
``finish_pipeline``, which closes the parent so that the next execution gets a new one; an
interrupted execution leaves its parent RUNNING and a rerun continues under it.

All calls go through an explicit ``MlflowClient`` (never the fluent active-run state), and are
retried while a shared SQLite store is locked by a parallel experiment. A store that stops
answering mid-stage does not stop the stage: its remaining calls go to a spool on disk
(``pipeline.tracking_spool``), replayed when the next stage starts.

This is the only module of the library that imports MLflow, and it imports it lazily, so the
rest of the library works without it.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ArtifactError, PipelineError
from pipeline.tracking_spool import SPOOL_DIR_NAME, Spool, is_unavailable, pending, replay_all

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DB_FILE_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"

TAG_PIPELINE_KEY = "jst.pipeline_key"
TAG_KIND = "jst.kind"
TAG_STAGE = "jst.stage"
TAG_ERROR = "jst.error"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own tag for nesting runs in the UI

# `dvc exp run --queue/--temp` runs stages in a copy at <repo>/.dvc/tmp/exps/<tmpdir>.
DVC_EXPERIMENT_TMP_PARTS = (".dvc", "tmp", "exps")

# MLflow's limits (mlflow.utils.validation); the server rejects anything larger.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Delays between retries of an operation that found the SQLite store locked. SQLite already
# waits busy_timeout (20 s in MLflow) for most locks; these cover the cases where it gives up
# at once (a read transaction that must upgrade to a write while another process writes).
LOCK_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

# A few quick retries of a request to a tracking server (MLflow's default, 7 retries with
# factor 2, waits minutes): about 6 s, then the stage spools its calls and goes on.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

_T = TypeVar("_T")


# --------------------------------------------------------------------------- tracking URI


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


# --------------------------------------------------------------------------- values


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``{"search.target_flops": "0.5"}``, within MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = _truncate(_param_text(value), MAX_PARAM_VALUE_LENGTH)
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def _truncate(text: str, limit: int) -> str:
    marker = "...[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics that are finite numbers (tensors and numpy scalars included), as floats."""
    kept: dict[str, float] = {}
    for key, value in metrics.items():
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            logger.debug("Not logging metric %s=%r: not a finite number", key, value)
            continue
        kept[key] = number
    return kept


def _as_float(value: Any) -> float | None:
    if isinstance(value, str | bytes):  # "1.5" is a mistake upstream, not a metric
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: multi-element tensor
        return None


def _chunks(items: list[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- client


def retry_while_locked(
    operation: Callable[[], _T], delays_s: Iterable[float] = LOCK_RETRY_DELAYS_S
) -> _T:
    """Run ``operation``, retrying with backoff while SQLite reports the database locked."""
    for delay in (*delays_s, None):
        try:
            return operation()
        except Exception as error:
            if delay is None or "database is locked" not in str(error):
                raise
            logger.info("MLflow store is locked by another process; retrying in %.1f s", delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


class _LockTolerantClient:
    """An ``MlflowClient`` whose methods are retried while the SQLite store is locked.

    A failed SQLite transaction is rolled back, so retrying a write never duplicates it.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return retry_while_locked(lambda: attribute(*args, **kwargs))

        return call


def _make_client(uri: str) -> _LockTolerantClient:
    if uri.startswith("sqlite:"):
        # A connection per session instead of a pool: no process keeps the file open between
        # operations, which is what parallel `dvc queue start -j N` workers need.
        os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
    for variable, value in HTTP_RETRY_DEFAULTS.items():  # a user's own setting wins
        os.environ.setdefault(variable, value)
    from mlflow import MlflowClient

    return _LockTolerantClient(MlflowClient(tracking_uri=uri, registry_uri=uri))


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at ``uri`` for the block.

    ``Model.log`` and the registry's resolution of ``models:/`` sources ignore the client and
    read the global URI; ``set_tracking_uri`` also writes the environment variable, so both
    are restored.
    """
    import mlflow

    saved_env = os.environ.get(TRACKING_URI_ENV)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if saved_env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = saved_env


def _is_already_exists(error: Exception) -> bool:
    return getattr(error, "error_code", "") in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _filter_value(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r}: quotes and backslashes are not allowed in run keys")
    return f"'{value}'"


# --------------------------------------------------------------------------- stage runs


@dataclass(frozen=True)
class StageRun:
    """One stage's child run; the methods log to it.

    Every write is a JSON-able call (see ``_execute``): run at once, or, after the store
    stopped answering, appended to ``spool`` and replayed later.
    """

    client: Any
    run_id: str
    experiment_id: str
    tracking_uri: str
    parent_run_id: str | None = None
    spool: Spool | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (nested mappings are flattened to dotted names)."""
        entries = [[key, value] for key, value in flatten_params(params).items()]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self._call({"op": "log_batch", "run_id": self.run_id, "params": batch})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics at ``step`` (0 when None); non-numeric or non-finite values are skipped."""
        self._log_metrics_to(self.run_id, metrics, step)

    def _log_metrics_to(self, run_id: str, metrics: Mapping[str, Any], step: int | None) -> None:
        timestamp_ms = int(time.time() * 1000)
        entries = [
            [key, value, timestamp_ms, step or 0] for key, value in finite_metrics(metrics).items()
        ]
        for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
            self._call({"op": "log_batch", "run_id": run_id, "metrics": batch})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [
            [key, _truncate(str(value), MAX_TAG_VALUE_LENGTH)] for key, value in tags.items()
        ]
        for batch in _chunks(entries, MAX_PARAMS_PER_BATCH):
            self._call({"op": "log_batch", "run_id": self.run_id, "tags": batch})

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under ``artifact_path``."""
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"Cannot log artifact {path}: it does not exist.")
        op = {"op": "log_artifact", "run_id": self.run_id, "path": str(path.resolve())}
        self._call(op | {"artifact_path": artifact_path})

    def log_dict(self, dictionary: Mapping[str, Any], file_name: str) -> None:
        """Store ``dictionary`` as a JSON (or YAML, by extension) artifact."""
        op = {"op": "log_dict", "run_id": self.run_id, "dictionary": dict(dictionary)}
        self._call(op | {"file_name": file_name})

    def log_text(self, text: str, file_name: str) -> None:
        self._call({"op": "log_text", "run_id": self.run_id, "text": text, "file_name": file_name})

    def set_terminated(self, status: str) -> None:
        self._call({"op": "set_terminated", "run_id": self.run_id, "status": status})

    def finish_pipeline(self, metrics: Mapping[str, Any]) -> None:
        """Log the final metrics on the pipeline's parent run and close it (FINISHED)."""
        if self.parent_run_id is None:
            raise ValueError("this run has no parent pipeline run")
        self._log_metrics_to(self.parent_run_id, metrics, None)
        self._call({"op": "set_terminated", "run_id": self.parent_run_id, "status": "FINISHED"})

    def register_onnx_model(
        self,
        onnx_path: Path | str,
        registered_model_name: str,
        tags: Mapping[str, Any],
        alias: str = "newest",
    ) -> str | None:
        """Log ``onnx_path`` as an MLflow ONNX model of this run, register it as a new version
        of ``registered_model_name`` with ``tags``, point ``alias`` at it; return the version
        (None when the store is unavailable and the registration is spooled). The version is
        also logged as metric ``model_version`` of the parent pipeline run.

        ("latest" is reserved by MLflow, hence the default alias "newest".)
        """
        _load_onnx(onnx_path)  # a bad file is the user's error, whether online or spooled
        op = {
            "op": "register_onnx_model",
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
            "path": str(Path(onnx_path).resolve()),
            "name": registered_model_name,
            "tags": {key: str(value) for key, value in tags.items()},
            "alias": alias,
        }
        return self._call(op)

    def _call(self, op: dict[str, Any]) -> Any:
        if self.spool is not None and self.spool.active:
            self.spool.append(op)
            return None
        try:
            return _execute(self.client, self.tracking_uri, op)
        except Exception as error:
            if self.spool is None or not is_unavailable(error):
                raise
            self.spool.activate(error)
            self.spool.append(op)
            return None


def _execute(client: Any, tracking_uri: str, op: Mapping[str, Any]) -> Any:
    """Run one recorded tracking call against the store."""
    from mlflow.entities import Metric, Param, RunTag

    kind, run_id = op["op"], op["run_id"]
    if kind == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(*entry) for entry in op.get("metrics", [])],
            params=[Param(*entry) for entry in op.get("params", [])],
            tags=[RunTag(*entry) for entry in op.get("tags", [])],
        )
    elif kind == "log_artifact":
        if Path(op["path"]).is_dir():
            client.log_artifacts(run_id, op["path"], op["artifact_path"])
        else:
            client.log_artifact(run_id, op["path"], op["artifact_path"])
    elif kind == "log_dict":
        client.log_dict(run_id, op["dictionary"], op["file_name"])
    elif kind == "log_text":
        client.log_text(run_id, op["text"], op["file_name"])
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"])
    elif kind == "register_onnx_model":
        return _register_onnx_model(client, tracking_uri, op)
    else:
        raise ValueError(f"unknown tracking call {kind!r}")
    return None


def _register_onnx_model(client: Any, tracking_uri: str, op: Mapping[str, Any]) -> str:
    model = _load_onnx(op["path"])
    name, run_id = op["name"], op["run_id"]
    with _global_tracking_uri(tracking_uri):
        model_id = _log_onnx_model(client, model, op["experiment_id"], run_id, name)
        _ensure_registered_model(client, name)
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, tags=op["tags"], model_id=model_id
        ).version
    client.set_registered_model_alias(name, op["alias"], version)
    if op.get("parent_run_id"):
        metric = [["model_version", float(version), int(time.time() * 1000), 0]]
        _execute(
            client,
            tracking_uri,
            {"op": "log_batch", "run_id": op["parent_run_id"], "metrics": metric},
        )
    return str(version)


def _log_onnx_model(
    client: Any, model: Any, experiment_id: str, run_id: str, registered_model_name: str
) -> str:
    import mlflow.onnx

    # Created here, in this run's experiment: left to itself, Model.log would put the
    # logged model in the global default experiment, as no fluent run is active.
    logged = client.create_logged_model(
        experiment_id, name=_logged_model_name(registered_model_name), source_run_id=run_id
    )
    mlflow.onnx.log_model(
        model,
        name=logged.name,
        run_id=run_id,
        model_id=logged.model_id,
        signature=_onnx_signature(model),
        # Explicit requirements skip MLflow's inference, which reloads the model in a
        # subprocess.
        pip_requirements=mlflow.onnx.get_default_pip_requirements(),
        # One self-contained file unless protobuf's 2 GiB limit forces external data.
        save_as_external_data=model.ByteSize() >= 2**31 - 2**20,
    )
    return logged.model_id


def _ensure_registered_model(client: Any, name: str) -> None:
    try:
        client.create_registered_model(name)
    except Exception as error:  # a parallel experiment may have created it first
        if not _is_already_exists(error):
            raise


def _load_onnx(onnx_path: Path | str) -> Any:
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ArtifactError(f"Cannot register ONNX model {path}: the file does not exist.")
    try:
        return onnx.load(str(path))
    except Exception as error:
        raise ArtifactError(
            f"Cannot register ONNX model {path}: it is not a valid ONNX file ({error}). "
            "Re-run the export stage."
        ) from error


def _logged_model_name(registered_model_name: str) -> str:
    return re.sub(r"[/:.%\"']", "_", registered_model_name)


def _onnx_signature(model: Any) -> Any:
    """The MLflow signature of an ONNX graph; symbolic dimensions (the batch) become -1."""
    import onnx
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(value_info: Any) -> TensorSpec:
        tensor_type = value_info.type.tensor_type
        shape = tuple(
            dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        return TensorSpec(dtype, shape, value_info.name)

    initializers = {initializer.name for initializer in model.graph.initializer}
    inputs = [spec(value) for value in model.graph.input if value.name not in initializers]
    outputs = [spec(value) for value in model.graph.output]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


# --------------------------------------------------------------------------- pipeline


class PipelineTracker:
    """The parent run of one pipeline execution, shared by the stage processes via its key.

    With ``spool_dir``, calls that find the store unavailable once the runs exist are
    spooled there instead of failing; before that, the error is a ``PipelineError``.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        pipeline_key: str,
        params: Mapping[str, Any],
        run_name: str,
        spool_dir: Path | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self.pipeline_key = pipeline_key
        self.provenance = provenance  # pipeline.provenance record of a new parent run
        self.spool = Spool(spool_dir, uri, "pipeline") if spool_dir is not None else None
        self._client = _make_client(uri)
        with _unavailable_as_error(uri):
            self.experiment_id = self._experiment_id(experiment)
            self.parent_run_id = self._running_parent_id() or self._create_parent(run_name, params)

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self._client.create_experiment(
                    name, artifact_location=_artifact_location(self.uri, name)
                )
            except Exception as error:  # created meanwhile by a parallel experiment
                if not _is_already_exists(error):
                    raise
                experiment = self._client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            self._client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _running_parent_id(self) -> str | None:
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_PIPELINE_KEY}` = {_filter_value(self.pipeline_key)} "
                f"and tags.`{TAG_KIND}` = 'pipeline' and attributes.status = 'RUNNING'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _create_parent(self, run_name: str, params: Mapping[str, Any]) -> str:
        from pipeline.provenance import RECORD_FILE, record_tags

        record_as_tags = record_tags(self.provenance) if self.provenance else {}
        run = self._client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={TAG_PIPELINE_KEY: self.pipeline_key, TAG_KIND: "pipeline", **record_as_tags},
        )
        parent = self._run(run.info.run_id)
        parent.log_params(params)
        if self.provenance:
            parent.log_dict(self.provenance, RECORD_FILE)
        return run.info.run_id

    def _run(self, run_id: str, parent_run_id: str | None = None) -> StageRun:
        return StageRun(
            self._client, run_id, self.experiment_id, self.uri, parent_run_id, self.spool
        )

    @contextmanager
    def stage_run(self, stage: str, tags: Mapping[str, str] | None = None) -> Iterator[StageRun]:
        """A child run for ``stage``: FINISHED after the block, FAILED if it raises."""
        if self.spool is not None:
            self.spool.label = stage
        with _unavailable_as_error(self.uri):
            self._end_orphaned_stage_runs(stage)
            run = self._client.create_run(
                self.experiment_id,
                run_name=stage,
                tags={
                    TAG_PARENT_RUN_ID: self.parent_run_id,
                    TAG_PIPELINE_KEY: self.pipeline_key,
                    TAG_KIND: "stage",
                    TAG_STAGE: stage,
                    **(tags or {}),
                },
            )
        stage_run = self._run(run.info.run_id, self.parent_run_id)
        try:
            yield stage_run
        except BaseException as error:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self._end_quietly(stage_run, status, f"{type(error).__name__}: {error}")
            raise
        else:
            stage_run.set_terminated("FINISHED")
        finally:
            if self.spool is not None:
                self.spool.close()

    def _end_quietly(self, stage_run: StageRun, status: str, error: str) -> None:
        """End a run whose stage failed without masking the stage's own exception."""
        try:
            stage_run.set_tags({TAG_ERROR: error})
            stage_run.set_terminated(status)
        except Exception:
            logger.warning(
                "Could not mark MLflow run %s %s", stage_run.run_id, status, exc_info=True
            )

    def _end_orphaned_stage_runs(self, stage: str) -> None:
        """Mark KILLED the RUNNING runs of ``stage`` left by a process that died mid-stage.

        Stages of one execution run one after another, so such a run has no live owner.
        """
        orphans = self._client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.`{TAG_PARENT_RUN_ID}` = {_filter_value(self.parent_run_id)} "
                f"and tags.`{TAG_STAGE}` = {_filter_value(stage)} "
                "and attributes.status = 'RUNNING'"
            ),
        )
        for orphan in orphans:
            self._client.set_terminated(orphan.info.run_id, "KILLED")

    def finish_pipeline(self, metrics: Mapping[str, Any]) -> None:
        """Log the final metrics on the parent run and close it (FINISHED)."""
        parent = self._run(self.parent_run_id)
        parent.log_metrics(metrics)
        parent.set_terminated("FINISHED")


@contextmanager
def _unavailable_as_error(uri: str) -> Iterator[None]:
    """Before a stage's run exists there is nothing to spool: stop with a clear message."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as error:
        if not is_unavailable(error):
            raise
        raise PipelineError(
            f"MLflow tracking store {uri} stopped answering as the stage started "
            f"({str(error).splitlines()[0][:300]}). Start the server (or free the store) and "
            "rerun the stage."
        ) from error


def replay_spooled(uri: str, repo_root: Path | str) -> tuple[int, int]:
    """Replay the tracking calls spooled in the repository for ``uri``.

    Returns (calls replayed, spool files left); see ``pipeline.tracking_spool``.
    """
    directory = spool_directory(repo_root)
    if not pending(directory):
        return 0, 0
    client = _make_client(uri)
    return replay_all(directory, uri, lambda op: _execute(client, uri, op))


def spool_directory(repo_root: Path | str) -> Path:
    """``.mlflow-spool`` of the repository (of the original one, in a DVC experiment copy)."""
    return original_repo_root(Path(repo_root).resolve()) / SPOOL_DIR_NAME


def _artifact_location(uri: str, experiment: str) -> str | None:
    """For a SQLite store, artifacts go to ``mlartifacts/`` beside the database.

    MLflow's default (``./mlruns`` of the current directory) would put them inside DVC's
    temporary experiment copies, which are deleted after the run. Servers choose their own.
    """
    db_path = sqlite_db_path(uri)
    if db_path is None:
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    return (db_path.absolute().parent / ARTIFACTS_DIR_NAME / folder).as_uri()


# --------------------------------------------------------------------------- reproducibility


# The records are gathered by pipeline.provenance (no MLflow there); this module logs them and
# reads them back for `jst reproduce`.


def reproducibility_tags(repo_root: Path | str) -> dict[str, str]:
    """Tags that say which code and environment produced a run."""
    from pipeline import provenance

    return provenance.record_tags(provenance.collect(repo_root, {}))


def git_commit(repo_root: Path | str) -> str | None:
    """HEAD's sha, or None outside a git repository."""
    from pipeline.provenance import git_output

    return git_output(repo_root, "rev-parse", "HEAD")


def file_md5(path: Path | str, repo_root: Path | str | None = None) -> str:
    """The md5 DVC records for a file or directory (see ``pipeline.provenance.dvc_md5``);
    with ``repo_root``, files its ``.dvcignore`` ignores are skipped, as DVC does."""
    from pipeline.provenance import dvc_md5, dvcignore

    ignored = dvcignore(repo_root) if repo_root is not None else None
    return dvc_md5(path, repo_root, ignored)


def input_hash_tags(
    paths: Iterable[Path | str], repo_root: Path | str | None = None
) -> dict[str, str]:
    """``{"input.data/prepared": md5}`` for each input file or directory."""
    return {f"input.{Path(path).as_posix()}": file_md5(path, repo_root) for path in paths}


@dataclass(frozen=True)
class RecordedModelVersion:
    """A registered model version with what its run recorded (``pipeline.provenance``)."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]  # the version's
    run_tags: dict[str, str]
    metrics: dict[str, float]  # the run's
    record: dict[str, Any]


def recorded_model_version(uri: str, name: str, version: str | int) -> RecordedModelVersion:
    """Read version ``version`` of ``name`` from the registry at ``uri``, with its run's
    metrics, tags and provenance record."""
    from pipeline.provenance import RECORD_FILE

    client = _make_client(uri)
    try:
        model_version = client.get_model_version(name, str(version))
    except Exception as error:
        if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise PipelineError(
            f"Model {name!r} has no version {version} in the registry {uri}. List the versions "
            f"with the MLflow UI or `MlflowClient().search_model_versions(\"name='{name}'\")`."
        ) from None
    run = client.get_run(model_version.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(model_version.run_id, RECORD_FILE, tmp)
        except Exception as error:
            raise PipelineError(
                f"Run {model_version.run_id} of {name} version {version} has no {RECORD_FILE} "
                f"artifact ({str(error).splitlines()[0][:200]}): it was logged before runs "
                "recorded their provenance, so it cannot be rebuilt from records."
            ) from error
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    return RecordedModelVersion(
        name,
        str(model_version.version),
        model_version.run_id,
        dict(model_version.tags),
        dict(run.data.tags),
        dict(run.data.metrics),
        record,
    )
