"""The benchmarks are scripts beside each other, not a package: load them by path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    """Import benchmarks/<name>.py the way the scripts import their siblings."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def report():
    return load_benchmark("comparison_report")


@pytest.fixture(scope="session")
def published():
    return load_benchmark("published")
