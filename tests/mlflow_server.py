"""A real `mlflow server` for tests: on a free loopback port, over a given store, started and
polled until it answers ``/health`` (tests/tracking/ and tests/e2e/test_concurrency.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

LOG_FILE_NAME = "server.log"


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(drop_prefixes: tuple[str, ...] = ("PYTEST_",)) -> dict[str, str]:
    """This process's environment for the server, without the variables ``drop_prefixes``.

    PYTEST_CURRENT_TEST would switch the server into MLflow's own test-time checks; the job
    runner is a further process the tests do not need.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    return {
        **environment,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def start_mlflow_server(
    backend_store_uri: str,
    directory: Path,
    port: int,
    environment: dict[str, str],
    timeout_s: float = 60,
) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:``port`` over ``backend_store_uri``, serving artifacts
    from ``directory/artifacts`` and logging to ``directory/server.log``; returned once it
    answers /health (in its own session, so that its workers can be killed with it)."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        (directory / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path = directory / LOG_FILE_NAME
    server = start_logged(command, directory, environment, log_path, append=True)
    wait_for_health(f"http://127.0.0.1:{port}", server, timeout_s, log_path)
    return server


def start_logged(
    command: list[str], cwd: Path, env: dict[str, str], log_path: Path, append: bool = False
) -> subprocess.Popen:
    """``command`` in a session of its own (stopping it stops the workers it starts), its
    output going to ``log_path``."""
    with log_path.open("a" if append else "w") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_server(server: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the server's process group; SIGKILL it if it is not gone in 10 s."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, sig)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def wait_for_health(
    url: str,
    server: subprocess.Popen,
    timeout_s: float = 60,
    log_path: Path | None = None,
    *,
    probe: str = "/health",
    name: str = "mlflow server",
) -> None:
    """Poll ``url`` + ``probe`` until it answers 200; fail the test (showing the end of the log
    at ``log_path``) when the server ``name`` exits or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"{name} exited with code {server.returncode}{_shown(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}{probe}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{name} at {url} did not answer {probe} within {timeout_s} s{_shown(log_path)}")


def log_tail(log_path: Path) -> str:
    """The end of a server's log."""
    return log_path.read_text()[-4000:]


def _shown(log_path: Path | None) -> str:
    return f":\n{log_tail(log_path)}" if log_path is not None else ""
