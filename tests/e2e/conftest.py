"""The tiny e2e repository, shared by the modules that only need a finished ``dvc repro``."""

from __future__ import annotations

import pytest

from tests.e2e.e2e_repo import E2ERepo


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> E2ERepo:
    """One real git+DVC repository with TINY_PARAMS; call ``reproduce_once()`` before use.

    test_pipeline_e2e.py builds on it (experiments, bad input); test_reproduce.py only reads
    its first registered model version, whose records do not change afterwards.
    """
    return E2ERepo.create(tmp_path_factory.mktemp("e2e") / "repo")


@pytest.fixture(scope="session")
def reproduced_repo(tiny_repo: E2ERepo) -> E2ERepo:
    """``tiny_repo`` after its first ``dvc repro``: model version 1 is registered."""
    result = tiny_repo.reproduce_once()
    assert result.returncode == 0, result.describe()
    return tiny_repo
