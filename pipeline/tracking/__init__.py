"""Experiment tracking with MLflow: one parent run per pipeline execution, one child per stage.

Every DVC stage runs in its own process. Each opens a ``PipelineTracker`` with the same
``pipeline_key``; the tracker finds the RUNNING parent run carrying that key (or creates it),
and ``stage_run`` opens a nested child run for the stage. The last stage (evaluate) calls
``finish_pipeline``, which closes the parent so that the next execution gets a new one; an
interrupted execution leaves its parent RUNNING and a rerun continues under it.

All calls go through an explicit ``MlflowClient`` (never the fluent active-run state), and are
retried while a shared SQLite store is locked by a parallel experiment. A store that stops
answering mid-stage does not stop the stage: its remaining calls go to a spool on disk,
replayed when the next stage starts.

This is the only package of the library that imports MLflow, and it imports it lazily (inside
the functions that talk to the store), so the rest of the library works without it.

Which file holds what:

- ``store.py``: the tracking URI (``$MLFLOW_TRACKING_URI`` or ``mlflow.db``) and the check
  that the store can be used, before any work.
- ``store_creation.py``: the lock under which one process creates or migrates a SQLite store.
- ``values.py``: parameters and metrics made fit for MLflow (flattened, finite, truncated).
- ``client.py``: the ``MlflowClient``, retried while SQLite is locked.
- ``calls.py``: the tracking calls as JSON-able records, and ``execute``, which runs one.
- ``stage_run.py``: ``StageRun``, a stage's child run, which logs through those records.
- ``pipeline_run.py``: ``PipelineTracker``, the pipeline's parent run and its stage runs.
- ``registry.py``: ONNX models logged with their signature and registered as versions.
- ``spool.py``: the on-disk spool of calls made while the store was away.
- ``replay.py``: the repository's spool directory, replayed against the store.
- ``provenance_tags.py``: tags and hashes that say which code and inputs made a run.
- ``readback.py``: a registered model version read back with its run's records.
- ``datasets.py``: the prepared data set as an MLflow dataset input (the UI's Dataset column).
- ``description.py``: a registered version's description (architecture, FLOPs, top-1).
- ``ui.py``: the UI address of an experiment's runs in the model-training view.
"""

from pipeline.tracking.client import (
    HTTP_RETRY_DEFAULTS,
    LOCK_RETRY_DELAYS_S,
    retry_while_locked,
)
from pipeline.tracking.datasets import dataset_origin, prepared_dataset
from pipeline.tracking.pipeline_run import (
    EXPERIMENT_KIND,
    TAG_ERROR,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_PARENT_RUN_ID,
    TAG_PIPELINE_KEY,
    TAG_STAGE,
    PipelineTracker,
)
from pipeline.tracking.provenance_tags import (
    file_md5,
    git_commit,
    input_hash_tags,
    reproducibility_tags,
)
from pipeline.tracking.readback import RecordedModelVersion, recorded_model_version
from pipeline.tracking.replay import replay_spooled, spool_directory
from pipeline.tracking.stage_run import StageRun
from pipeline.tracking.store import (
    ARTIFACTS_DIR_NAME,
    DB_FILE_NAME,
    DVC_EXPERIMENT_TMP_PARTS,
    TRACKING_URI_ENV,
    check_tracking_available,
    original_repo_root,
    resolve_tracking_uri,
    sqlite_db_path,
)
from pipeline.tracking.values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    finite_metrics,
    flatten_params,
)

__all__ = [
    "ARTIFACTS_DIR_NAME",
    "DB_FILE_NAME",
    "DVC_EXPERIMENT_TMP_PARTS",
    "EXPERIMENT_KIND",
    "HTTP_RETRY_DEFAULTS",
    "LOCK_RETRY_DELAYS_S",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "TAG_ERROR",
    "TAG_EXPERIMENT_KIND",
    "TAG_KIND",
    "TAG_PARENT_RUN_ID",
    "TAG_PIPELINE_KEY",
    "TAG_STAGE",
    "TRACKING_URI_ENV",
    "PipelineTracker",
    "RecordedModelVersion",
    "StageRun",
    "check_tracking_available",
    "dataset_origin",
    "file_md5",
    "finite_metrics",
    "flatten_params",
    "git_commit",
    "input_hash_tags",
    "original_repo_root",
    "prepared_dataset",
    "recorded_model_version",
    "replay_spooled",
    "reproducibility_tags",
    "resolve_tracking_uri",
    "retry_while_locked",
    "spool_directory",
    "sqlite_db_path",
]
