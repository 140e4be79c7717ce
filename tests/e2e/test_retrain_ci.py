"""The retraining workflow's steps (scripts/ci/retrain.py) run for real, as on a runner.

The owner's repository holds committed results and a local-directory DVC remote it pushed
to; the "runner" is a ``git clone`` with a pull-request commit that doubles the fine-tuning
epochs. In workflow order: pull -> repro -> push -> report (tests/ci/ checks that
retrain.yml calls these steps in that order).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.e2e.e2e_repo import PROJECT_ROOT, E2ERepo, Result
from tests.e2e.sharing import clone, owned_copy, remote_files

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCRIPT = PROJECT_ROOT / "scripts" / "ci" / "retrain.py"
PULL_REQUEST = {"GITHUB_EVENT_NAME": "pull_request", "GITHUB_BASE_REF": "main"}


def step(repo: E2ERepo, *args: str, env: dict[str, str] | None = None) -> Result:
    """One step of the workflow in ``repo``, as retrain.yml runs it."""
    saved = dict(repo.env)
    repo.env.update(env or PULL_REQUEST)
    try:
        return repo.run([sys.executable, str(SCRIPT), *args], timeout=240, check=False)
    finally:
        repo.env.clear()
        repo.env.update(saved)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ci-remote") / "storage"


@pytest.fixture(scope="module")
def runner(tiny_repo: E2ERepo, storage: Path, tmp_path_factory: pytest.TempPathFactory) -> E2ERepo:
    owner = owned_copy(tiny_repo, tmp_path_factory.mktemp("ci-owner") / "repo", "results")
    owner.dvc("remote", "add", "-d", "storage", str(storage))
    owner.commit("DVC remote")
    owner.dvc("push")

    runner = clone(owner, tmp_path_factory.mktemp("ci-runner") / "repo")
    runner.git("checkout", "-q", "-b", "more-fine-tuning")
    params = runner.read_params()
    params["finetune"]["epochs"] = 2
    runner.write_params(params)
    runner.commit("fine-tune for 2 epochs")  # a pull request changing a parameter only
    return runner


def test_pull_fetches_the_last_outputs_so_repro_reruns_only_what_changed(
    runner: E2ERepo,
) -> None:
    assert not (runner.root / "models" / "compact").exists()
    pulled = step(runner, "pull")
    assert pulled.returncode == 0, pulled.describe()
    assert (runner.root / "models" / "searched" / "weights.safetensors").is_file()

    repro = step(runner, "repro")
    assert repro.returncode == 0, repro.describe()
    assert "MLflow tracking: mlflow.db in the repository" in repro.output
    for stage in ("prepare", "search"):
        assert f"Running stage '{stage}'" not in repro.output, repro.describe()
    for stage in ("finetune", "export", "evaluate"):
        assert f"Running stage '{stage}'" in repro.output, repro.describe()
    assert runner.metrics("finetune")["epochs"] == 2


def test_push_is_skipped_for_pull_requests_and_done_for_pushes(
    runner: E2ERepo, storage: Path
) -> None:
    before = remote_files(storage)
    skipped = step(runner, "push")
    assert skipped.returncode == 0, skipped.describe()
    assert "'pull_request': outputs are not pushed" in skipped.output
    assert remote_files(storage) == before

    pushed = step(runner, "push", env={"GITHUB_EVENT_NAME": "workflow_dispatch"})
    assert pushed.returncode == 0, pushed.describe()
    assert remote_files(storage) > before  # the retrained model, ONNX files
    in_sync = runner.dvc("status", "--cloud")
    assert "in sync" in in_sync.output, in_sync.describe()


def test_report_has_the_metrics_and_params_diff_and_charts_of_changed_plots_only(
    runner: E2ERepo,
) -> None:
    out, plots = runner.root.parent / "report.md", runner.root.parent / "plots-html"
    result = step(runner, "report", "--out", str(out), "--plots-dir", str(plots))
    assert result.returncode == 0, result.describe()
    report = out.read_text()

    assert report.startswith("<!-- jst-retrain-report -->")
    assert "metrics vs `origin/main`" in report  # the pull request's target branch
    # The stages after the changed fine-tuning reran: their metrics moved, the evaluate
    # stage's timings always (epochs are a parameter, in the params diff below).
    evaluate_rows = [line for line in report.splitlines() if "| metrics/evaluate.json" in line]
    assert any("| latency_ms " in line for line in evaluate_rows), report
    assert "| params.yaml | finetune.epochs | 1 " in " ".join(report.split()), report
    # fine-tuning reran (2 epochs now): charted; search did not: no chart
    assert "#### fine-tuning: val_top1" in report
    assert "```mermaid" in report and "xychart-beta" in report
    assert "#### search history" not in report
    assert "#### kept widths per group" not in report
    assert "Unchanged plots: search history, kept widths per group." in report
    assert "This run changed `dvc.lock`" in report
    assert (plots / "index.html").is_file()
    assert os.path.getsize(out) < 60_000
