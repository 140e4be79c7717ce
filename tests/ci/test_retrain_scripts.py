"""The retraining workflow: retrain.yml calls scripts/ci/retrain.py's steps in order, and the
pull step's checks on real git + DVC repositories (no remote, unreachable remotes).

The full pull -> repro -> push -> report run on a reproduced repository is in
tests/e2e/test_retrain_ci.py.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"
SCRIPT = PROJECT_ROOT / "scripts" / "ci" / "retrain.py"
STEPS_IN_ORDER = ["pull", "repro", "push", "report"]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("retrain_ci", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


retrain = load_script()


# --------------------------------------------------------------------------- the workflow


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def script_calls(job: dict) -> list[list[str]]:
    """The arguments of every ``scripts/ci/retrain.py`` call in the job's ``run`` blocks."""
    calls = []
    for step in job["steps"]:
        script = step.get("run", "").replace("\\\n", " ")  # join continued lines
        for line in script.splitlines():
            words = shlex.split(line)
            if "scripts/ci/retrain.py" in words:
                calls.append(words[words.index("scripts/ci/retrain.py") + 1 :])
    return calls


def test_workflow_runs_the_tested_steps_in_order_with_arguments_the_script_accepts() -> None:
    calls = script_calls(workflow()["jobs"]["repro"])
    assert [args[0] for args in calls] == STEPS_IN_ORDER
    for args in calls:
        assert retrain.parse_args(args).step == args[0]


def test_only_the_comment_job_may_write_and_only_for_pull_requests() -> None:
    data = workflow()
    assert data["permissions"] == {"contents": "read"}
    assert "permissions" not in data["jobs"]["repro"]  # pipeline code: read-only token
    comment = data["jobs"]["comment"]
    assert comment["permissions"] == {"pull-requests": "write"}
    assert "github.event_name == 'pull_request'" in comment["if"]
    assert not any("uses" in s and "checkout" in s["uses"] for s in comment["steps"])
    body = comment["steps"][0]["run"]
    assert retrain.REPORT_MARKER in body  # finds the comment to update on reruns


def test_push_policy_never_includes_pull_requests() -> None:
    assert not {"pull_request", "pull_request_target"} & retrain.PUSH_EVENTS
    triggers = workflow()[True]  # YAML 1.1 reads the key `on` as True
    assert set(retrain.PUSH_EVENTS) >= set(triggers) - {"pull_request"}


# --------------------------------------------------------------------------- pull checks


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    dvc(tmp_path, "init", "-q")
    return tmp_path


def dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, env=clean_env())


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "DVC_", "GITHUB_"))}
    return env | {"DVC_NO_ANALYTICS": "1"} | extra


def pull(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "pull"],
        cwd=root,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pull_without_a_remote_says_so_and_succeeds(repo: Path) -> None:
    result = pull(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No default DVC remote configured" in result.stdout
    assert "dvc remote add -d" in result.stdout


def test_pull_from_a_missing_directory_fails_clearly(repo: Path, tmp_path: Path) -> None:
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "not-mounted"))
    result = pull(repo)
    assert result.returncode == 1
    assert "error: DVC remote 'storage'" in result.stdout
    assert "holds nothing" in result.stdout and "dvc push" in result.stdout


def test_pull_fails_when_tracked_data_is_not_on_the_remote(repo: Path, tmp_path: Path) -> None:
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "storage"))
    (repo / "notes.txt").write_text("pushed\n")
    dvc(repo, "add", "notes.txt")
    dvc(repo, "push")  # the remote exists and holds something
    raw = repo / "data" / "raw" / "cat"
    raw.mkdir(parents=True)
    (raw / "0.png").write_bytes(b"not pushed")
    dvc(repo, "add", "data/raw")  # never pushed: a runner cannot get it
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "raw")

    result = pull(repo)
    assert result.returncode == 1
    assert "Pulling the tracked data data/raw.dvc" in result.stdout
    assert "error: `dvc pull data/raw.dvc" in result.stdout
    assert "data/raw" in result.stderr  # DVC names what is missing


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_pull_from_an_unreachable_s3_endpoint_fails_clearly(repo: Path) -> None:
    dvc(repo, "remote", "add", "-d", "s3", "s3://jst-models/cache")
    dvc(repo, "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{closed_port()}")
    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = pull(repo, AWS_MAX_ATTEMPTS="1", **fake)  # one try: fail fast
    assert result.returncode == 1
    assert "error: DVC remote 's3' (s3://jst-models/cache) is unreachable" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# --------------------------------------------------------------------------- report pieces


def test_base_revision_follows_the_event() -> None:
    assert retrain.base_candidates("pull_request", "main", "abc")[0] == "origin/main"
    assert retrain.base_candidates("push", "", "abc")[0] == "abc"
    assert retrain.base_candidates("workflow_dispatch", "", "") == ["HEAD~1", "HEAD"]


def test_tracking_uri_is_reported_without_credentials_and_empty_settings_are_dropped() -> None:
    env = {"MLFLOW_TRACKING_URI": "https://bob:s3cret@mlflow.example:5000/x", "PATH": "/bin"}
    assert retrain.tracking_target(env) == "https://mlflow.example:5000/x"
    cleaned = retrain.tracking_environment(env | {"MLFLOW_TRACKING_TOKEN": "  "})
    assert "MLFLOW_TRACKING_TOKEN" not in cleaned and cleaned["PATH"] == "/bin"


def test_chart_numbers_are_plain_decimals_mermaid_can_parse() -> None:
    assert [retrain.plain(v) for v in (1e-05, 0.5, 2.0, -0.25, 1265296.0)] == [
        "0.00001",
        "0.5",
        "2",
        "-0.25",
        "1265296",
    ]


def test_a_report_too_long_for_a_comment_drops_the_last_charts() -> None:
    sections = [f"#### chart {i}\n" + "x" * 20_000 for i in range(5)]
    text = retrain.assemble(["head"], sections, ["tail"])
    assert len(text) <= retrain.MAX_REPORT_CHARS
    assert "#### chart 1" in text and "#### chart 4" not in text
    assert "more changed charts in the HTML artifact" in text and text.endswith("tail\n")
