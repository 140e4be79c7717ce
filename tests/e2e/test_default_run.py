"""The shipped parameters, as a new user runs them: `dvc repro` learns the default task.

Every other end-to-end test runs tiny settings that prove the plumbing, not learning; this one
runs params.yaml as committed (only the latency timing is shortened) and holds the pipeline to
the accuracy a user is promised on the bundled digits data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.e2e_repo import PROJECT_ROOT, E2ERepo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ACCURACY_FLOOR = 0.95  # test top-1 of the default digits pipeline, in fp32 and in bf16


def test_the_default_pipeline_reaches_its_accuracy_floor(tmp_path: Path) -> None:
    repo = E2ERepo.create(tmp_path / "repo")
    shutil.copy(PROJECT_ROOT / "params.yaml", repo.params_path)
    params = repo.read_params()
    params["evaluate"] |= {"warmup": 1, "repeats": 3}  # timing only: accuracy is unaffected
    repo.write_params(params)
    repo.commit("the shipped parameters")

    result = repo.dvc("repro", timeout=540, check=False)
    assert result.returncode == 0, result.describe()
    evaluate = repo.metrics("evaluate")
    assert evaluate["top1"] >= ACCURACY_FLOOR, evaluate
    assert evaluate["flops_ratio"] <= params["search"]["target_flops"]
