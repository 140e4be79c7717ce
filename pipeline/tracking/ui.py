"""The MLflow UI on the project's store, opened on the model-training view.

MLflow 3's UI starts on its GenAI view (traces, token usage) unless the browser remembers
the sidebar's "Model training" choice or the URL asks for it with ``workflowType``; the
experiment's ``mlflow.experimentKind`` tag is not read by that UI. The URLs built here ask.
"""

from __future__ import annotations

import urllib.parse

from pipeline.tracking.client import make_client

MODEL_TRAINING_QUERY = "workflowType=machine_learning"


def model_training_url(base_url: str, tracking_uri: str, experiment: str) -> str:
    """The page of ``experiment``'s runs in the model-training view of the UI at
    ``base_url``; the experiment list when the store has no such experiment yet."""
    base = base_url.rstrip("/")
    found = make_client(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}/#/experiments?{MODEL_TRAINING_QUERY}"
    experiment_id = urllib.parse.quote(str(found.experiment_id))
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"
