"""A registered model version read back from the registry, with what its run recorded."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.tracking.client import make_client


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

    client = make_client(uri)
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
