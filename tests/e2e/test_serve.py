"""End to end: the registered model served by `mlflow models serve` answers like `jst predict`.

The shared tiny repository (digits, 8 x 8 grey) registers ``compact-cnn`` with the alias
``newest`` in ``<repo>/mlflow.db``. A real MLflow scoring server (uvicorn) serves that alias on
loopback; real test images go to it over HTTP as the uint8 N x H x W x C tensor the ONNX
signature names, and its logits must equal those `jst predict` computes from the same PNG
files with the same registered model.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import load_prepared
from tests.e2e.e2e_repo import E2ERepo
from tests.mlflow_server import free_port, start_logged, stop_server, wait_for_health

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

MODEL_URI = "models:/compact-cnn@newest"
NUM_IMAGES = 6
SERVER_START_S = 120  # about 5 s on a quiet 2-core machine


@pytest.fixture(scope="module")
def repo(reproduced_repo: E2ERepo) -> E2ERepo:
    return reproduced_repo


@pytest.fixture(scope="module")
def digit_files(repo: E2ERepo, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real test images of the prepared data set, written as 8 x 8 grey PNG files."""
    images = load_prepared(repo.root / "data" / "prepared").test.images[:NUM_IMAGES]
    folder = tmp_path_factory.mktemp("digits")
    paths = [folder / f"digit_{i}.png" for i in range(NUM_IMAGES)]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image[0].numpy()).save(path)
    return paths


def jst(repo: E2ERepo, *args: str, check: bool = True, merge_stderr: bool = True):
    """`jst` run from the repository, as a user would (its code, its tracking store)."""
    command = [sys.executable, "-m", "pipeline.cli", *args]
    return repo.run(command, timeout=120, check=check, merge_stderr=merge_stderr)


@pytest.fixture(scope="module")
def server(repo: E2ERepo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow models serve` of the registered alias on a free loopback port; its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = repo.env | {"MLFLOW_TRACKING_URI": repo.tracking_uri}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        *("models", "serve", "-m", MODEL_URI, "--env-manager", "local"),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]
    process = start_logged(command, log_path.parent, env, log_path)  # uvicorn stops with it
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(
            url, process, SERVER_START_S, log_path, probe="/ping", name="mlflow models serve"
        )
        yield url
    finally:
        stop_server(process)


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"HTTP {error.code} from {url}: {error.read()[:2000]!r}") from None


def test_served_model_answers_like_jst_predict(
    repo: E2ERepo, digit_files: list[Path], server: str
) -> None:
    args = ("predict", *map(str, digit_files), "--model", MODEL_URI, "--json")
    predicted = json.loads(jst(repo, *args, merge_stderr=False).output)  # MLflow logs to stderr
    assert [row["image"] for row in predicted] == [str(p) for p in digit_files]

    # The served signature is the graph's: uint8 images as decoded, N x H x W x C.
    images = np.stack([np.asarray(Image.open(p))[..., None] for p in digit_files])
    answer = post_json(f"{server}/invocations", {"inputs": {"input": images.tolist()}})
    served = np.asarray(answer["predictions"]["logits"])

    local = np.asarray([row["logits"] for row in predicted])
    assert served.shape == local.shape == (NUM_IMAGES, 10)
    np.testing.assert_allclose(served, local, rtol=0, atol=1e-5)
    probabilities = np.exp(served - served.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    for row, served_row in zip(predicted, probabilities, strict=True):
        best = row["top"][0]
        assert int(best["class"]) == int(served_row.argmax())  # digits' classes are "0".."9"
        assert best["probability"] == pytest.approx(served_row.max(), abs=1e-6)


def test_predict_from_the_local_file_and_an_unknown_alias(
    repo: E2ERepo, digit_files: list[Path]
) -> None:
    local = jst(repo, "predict", str(digit_files[0].parent), "--top-k", "2")
    lines = local.output.strip().splitlines()
    assert len(lines) == NUM_IMAGES, local.describe()
    for line, path in zip(lines, digit_files, strict=True):  # the folder, in order, top-2
        assert line.startswith(f"{path}  ") and line.count(", ") == 1, local.describe()
    missing = jst(
        repo, "predict", str(digit_files[0]), "--model", "models:/compact-cnn@nosuch", check=False
    )
    assert missing.returncode == 1, missing.describe()
    text = " ".join(missing.output.split())
    assert "cannot resolve models:/compact-cnn@nosuch" in text and "Traceback" not in text
