"""One stage's child run (``StageRun``): what a stage logs, run at once or spooled."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError
from pipeline.tracking.calls import execute
from pipeline.tracking.datasets import PIPELINE_CONTEXT
from pipeline.tracking.registry import load_onnx
from pipeline.tracking.spool import Spool, is_unavailable
from pipeline.tracking.values import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_VALUE_LENGTH,
    chunks,
    finite_metrics,
    flatten_params,
    truncate,
)


@dataclass(frozen=True)
class StageRun:
    """One stage's child run; the methods log to it.

    Every write is a JSON-able call (see ``execute``): run at once, or, after the store
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
        for batch in chunks(entries, MAX_PARAMS_PER_BATCH):
            self._call({"op": "log_batch", "run_id": self.run_id, "params": batch})

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log metrics at ``step`` (0 when None); non-numeric or non-finite values are skipped."""
        self._log_metrics_to(self.run_id, metrics, step)

    def _log_metrics_to(self, run_id: str, metrics: Mapping[str, Any], step: int | None) -> None:
        timestamp_ms = int(time.time() * 1000)
        entries = [
            [key, value, timestamp_ms, step or 0] for key, value in finite_metrics(metrics).items()
        ]
        for batch in chunks(entries, MAX_METRICS_PER_BATCH):
            self._call({"op": "log_batch", "run_id": run_id, "metrics": batch})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [[key, truncate(str(value), MAX_TAG_VALUE_LENGTH)] for key, value in tags.items()]
        for batch in chunks(entries, MAX_PARAMS_PER_BATCH):
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

    def log_dataset(self, dataset: Mapping[str, str], context: str) -> None:
        """Log a dataset record (``pipeline.tracking.datasets``) as an input of this run,
        used for ``context`` ("training", "testing", ...), and of the pipeline's parent run;
        a dataset already linked to a run is left as it is."""
        for run_id, run_context in ((self.run_id, context), (self.parent_run_id, PIPELINE_CONTEXT)):
            if run_id is not None:
                op = {"op": "log_inputs", "run_id": run_id, "datasets": [dict(dataset)]}
                self._call(op | {"context": run_context})

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
        load_onnx(onnx_path)  # a bad file is the user's error, whether online or spooled
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
            return execute(self.client, self.tracking_uri, op)
        except Exception as error:
            if self.spool is None or not is_unavailable(error):
                raise
            self.spool.activate(error)
            self.spool.append(op)
            return None
