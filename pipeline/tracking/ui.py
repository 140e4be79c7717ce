"""The MLflow UI on the project's store, opened on the model-training view.

MLflow 3's UI starts on its GenAI view (traces, token usage) unless the browser remembers
the sidebar's "Model training" choice or the URL asks for it with ``workflowType``; the
experiment's ``mlflow.experimentKind`` tag is not read by that UI. The URLs built here ask.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from pipeline.errors import PipelineError
from pipeline.tracking.client import make_client

MODEL_TRAINING_QUERY = "workflowType=machine_learning"
UI_START_TIMEOUT_S = 300  # MLflow's UI takes 5-40 s to answer on a loaded 2-core machine


def model_training_url(base_url: str, tracking_uri: str, experiment: str) -> str:
    """The page of ``experiment``'s runs in the model-training view of the UI at
    ``base_url``; the experiment list when the store has no such experiment yet."""
    base = base_url.rstrip("/")
    found = make_client(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return f"{base}/#/experiments?{MODEL_TRAINING_QUERY}"
    experiment_id = urllib.parse.quote(str(found.experiment_id))
    return f"{base}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_QUERY}"


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something else listens on, before starting the UI: otherwise another
    server could answer the readiness probe, or MLflow would fail with its own message."""
    address = "0.0.0.0" if host in ("", "::") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, port))
        except OSError as error:
            raise PipelineError(
                f"port {port} on {host} is in use ({error.strerror or error}); stop what "
                f"uses it or choose another: jst ui --port N"
            ) from None


def run_ui(
    command: list[str], probe_url: str, on_ready: Callable[[], None], timeout_s: float = 0
) -> int:
    """Run the UI server ``command`` until it exits or Ctrl-C; call ``on_ready`` once
    ``probe_url`` answers, so that an address is printed when it can be opened. Returns
    the server's exit status (0 after Ctrl-C)."""
    server = subprocess.Popen(command)
    deadline = time.monotonic() + (timeout_s or UI_START_TIMEOUT_S)
    try:
        while server.poll() is None and not _answers(probe_url):
            if time.monotonic() > deadline:
                server.terminate()
                server.wait()
                raise TimeoutError(f"the MLflow UI did not answer at {probe_url} in time")
            time.sleep(0.25)
        if server.poll() is None:
            on_ready()
        return server.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to the server as well
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
