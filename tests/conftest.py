"""Shared fixtures: tiny synthetic data sets that make training tests fast.

Two environment variables, both unset in CI and in a normal checkout, serve
``benchmarks/gpu_check.sh`` on a GPU machine whose Python is not the project's environment:

- ``JST_TEST_DEVICE`` (default ``cpu``): the device of ``tiny_config``'s ``train.device`` and
  of the tests that take ``TEST_DEVICE`` (every method learning, the baselines' budgets).
- ``JST_TESTS_ALLOW_MISSING``: comma-separated distributions that may be absent there (e.g.
  ``mlflow,dvc,onnxruntime-gpu``). A test module, or a test, that fails only because one of
  their modules is not installed (its message says ``No module named ...``) is reported as
  skipped, with the reason, instead of as an error; ``onnxruntime-gpu`` lets the
  CUDA-provider tests skip where ONNX Runtime has no CUDA provider. Anything else missing,
  or a module that is installed but fails to import, still fails.
"""

import importlib.util
import os
import re

import pytest
import torch

from pipeline.config import parse_config
from pipeline.data import PreparedData, Split


def synthetic_data(num_classes=4, size=8, channels=1, per_class=24, seed=0) -> PreparedData:
    """Learnable images: each class lights up its own quadrant pattern, plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def split(n_per_class):
        images, labels = [], []
        for c in range(num_classes):
            base = torch.zeros(channels, size, size)
            base[
                :,
                (c % 2) * size // 2 : (c % 2 + 1) * size // 2,
                (c // 2 % 2) * size // 2 : (c // 2 % 2 + 1) * size // 2,
            ] = 200
            noise = torch.randint(0, 55, (n_per_class, channels, size, size), generator=generator)
            images.append((base + noise).clamp(0, 255).to(torch.uint8))
            labels.append(torch.full((n_per_class,), c, dtype=torch.int64))
        return Split(torch.cat(images), torch.cat(labels))

    return PreparedData(
        split(per_class),
        split(per_class // 3),
        split(per_class // 3),
        [f"c{i}" for i in range(num_classes)],
        [0.3] * channels,
        [0.3] * channels,
        dataset="synthetic",
    )


TEST_DEVICE = os.environ.get("JST_TEST_DEVICE", "cpu")

# distribution -> the top-level modules it provides (and the libraries only it pulls in)
_MODULES_OF = {
    "mlflow": {"mlflow", "alembic", "sqlalchemy", "flask", "flask_cors"},
    "dvc": {"dvc", "dvc_s3", "gto", "scmrepo", "dvc_objects", "dvc_data"},
    "moto": {"moto", "boto3", "botocore"},
    "flask-cors": {"flask_cors"},
}
ALLOWED_MISSING = {
    name.strip()
    for name in os.environ.get("JST_TESTS_ALLOW_MISSING", "").split(",")
    if name.strip()
}
_MISSING_MODULE = re.compile(r"No module named '([\w.]+)'")


def allowed_missing_module(module: str) -> str | None:
    """The allowed-missing distribution that ``module`` belongs to, if it is really absent."""
    top = module.split(".")[0]
    for dist in ALLOWED_MISSING:
        if top in _MODULES_OF.get(dist, {dist.replace("-", "_")}):
            try:
                absent = importlib.util.find_spec(top) is None
            except ImportError:
                absent = True
            return dist if absent else None
    return None


def onnxruntime_cuda_or_skip() -> None:
    """On a GPU machine whose onnxruntime has no CUDA provider, skip when that is allowed."""
    import onnxruntime

    if "onnxruntime-gpu" in ALLOWED_MISSING and (
        "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
    ):
        pytest.skip("needs onnxruntime-gpu (JST_TESTS_ALLOW_MISSING): no CUDA provider here")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A test module that cannot import an allowed-missing package is skipped, with why."""
    outcome = yield
    report = outcome.get_result()
    if not (ALLOWED_MISSING and report.failed and isinstance(collector, pytest.Module)):
        return
    found = _MISSING_MODULE.search(str(report.longrepr))
    dist = allowed_missing_module(found.group(1)) if found else None
    if dist is not None:
        report.outcome = "skipped"
        report.longrepr = (
            str(collector.path),
            0,
            f"Skipped: needs {dist} ({found.group(1)} is not installed; JST_TESTS_ALLOW_MISSING)",
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that failed only because an allowed-missing package is absent (an import in
    the code under test, a ``python -m dvc`` subprocess) is reported as skipped, with why."""
    outcome = yield
    report = outcome.get_result()
    if not (ALLOWED_MISSING and report.failed):
        return
    text = "\n".join([str(report.longrepr), *(content for _, content in report.sections)])
    for found in _MISSING_MODULE.finditer(text):
        dist = allowed_missing_module(found.group(1))
        if dist is not None:
            path, lineno, _ = item.location
            report.outcome = "skipped"
            report.longrepr = (
                path,
                (lineno or 0) + 1,
                f"Skipped: needs {dist} ({found.group(1)} is not installed; "
                "JST_TESTS_ALLOW_MISSING)",
            )
            return


@pytest.fixture
def tiny_data() -> PreparedData:
    return synthetic_data()


def tiny_config(**sections):
    raw = {
        "train": {"batch_size": 32, "device": TEST_DEVICE},
        "search": {"epochs": 1, "lr": 0.05},
        "finetune": {"epochs": 1},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return parse_config(raw)
