"""The parent run of one pipeline execution (``PipelineTracker``), found by its key in each
stage process, and the stage runs it opens under it."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.tracking.client import is_already_exists, make_client
from pipeline.tracking.spool import Spool, is_unavailable
from pipeline.tracking.stage_run import StageRun
from pipeline.tracking.store import artifact_location

logger = logging.getLogger(__name__)

TAG_PIPELINE_KEY = "pipeline.key"
TAG_KIND = "pipeline.kind"
TAG_STAGE = "pipeline.stage"
TAG_ERROR = "pipeline.error"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own tag for nesting runs in the UI
# MLflow's experiment type: model training, not GenAI traces (docs/tracking.md: what the
# UI of MLflow 3.17 makes of it).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


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
        self._client = make_client(uri)
        with _unavailable_as_error(uri):
            self.experiment_id = self._experiment_id(experiment)
            self.parent_run_id = self._running_parent_id() or self._create_parent(run_name, params)

    def _experiment_id(self, name: str) -> str:
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self._client.create_experiment(
                    name,
                    artifact_location=artifact_location(self.uri, name),
                    tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
                )
            except Exception as error:  # created meanwhile by a parallel experiment
                if not is_already_exists(error):
                    raise
                experiment = self._client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            self._client.restore_experiment(experiment.experiment_id)
        if TAG_EXPERIMENT_KIND not in experiment.tags:  # made before the tag, or elsewhere
            self._client.set_experiment_tag(
                experiment.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND
            )
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


def _filter_value(value: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r}: quotes and backslashes are not allowed in run keys")
    return f"'{value}'"
