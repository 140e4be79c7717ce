"""The tracking calls as JSON-able records (``{"op": "log_batch", ...}``), run against a store.

A ``StageRun`` writes only through these records, so a call that cannot reach the store can be
spooled as it is (``pipeline.tracking.spool``) and replayed later by the same ``execute``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.tracking.datasets import dataset_inputs
from pipeline.tracking.registry import register_onnx_model


def execute(client: Any, tracking_uri: str, op: Mapping[str, Any]) -> Any:
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
    elif kind == "log_inputs":
        inputs = dataset_inputs(op["datasets"], op["context"])
        _retry_if_created_meanwhile(lambda: client.log_inputs(run_id, datasets=inputs))
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"])
    elif kind == "register_onnx_model":
        version = register_onnx_model(client, tracking_uri, op)
        if op.get("parent_run_id"):  # the version, as metric of the pipeline's parent run
            metric = [["model_version", float(version), int(time.time() * 1000), 0]]
            execute(
                client,
                tracking_uri,
                {"op": "log_batch", "run_id": op["parent_run_id"], "metrics": metric},
            )
        return version
    else:
        raise ValueError(f"unknown tracking call {kind!r}")
    return None


def _retry_if_created_meanwhile(call: Any) -> None:
    """Run ``call`` again when a parallel pipeline inserted the same dataset between the
    store's check and its insert (its key is experiment, name, digest); the second call
    finds it and only links it."""
    try:
        call()
    except Exception as error:
        text = str(error)
        if not any(word in text for word in ("UNIQUE constraint", "IntegrityError", "duplicate")):
            raise
        call()
