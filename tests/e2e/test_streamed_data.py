"""`dvc repro` on an ImageNet-layout folder (train/<class>, val/<class>) streamed from
shards: ImageNet-style augmentation and evaluation crop, decoding workers, the shards as
a DVC output, their count in the MLflow dataset record, and a changed source image
rerunning prepare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.e2e.e2e_repo import E2ERepo
from tests.e2e.test_any_cnn import depend_on_raw_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

CLASSES = {"red": (200, 40, 40), "blue": (40, 40, 200)}


def write_imagenet_layout(root: Path) -> None:
    """JPEGs of several sizes and aspect ratios, larger than the 16 px network input."""
    rng = np.random.default_rng(0)
    for part, count in (("train", 24), ("val", 8)):
        for name, colour in CLASSES.items():
            (root / part / name).mkdir(parents=True)
            for i in range(count):
                width, height = rng.integers(24, 48, 2)
                noise = rng.integers(-40, 40, (height, width, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / part / name / f"{i:03d}.jpg", quality=90)


def test_an_imagenet_layout_streams_from_shards_end_to_end(tmp_path: Path) -> None:
    repo = E2ERepo.create(tmp_path / "repo")
    raw = repo.root / "data" / "raw"
    write_imagenet_layout(raw)
    depend_on_raw_data(repo)
    params = repo.read_params()
    params["data"] |= {"dataset": "imagefolder", "root": "data/raw", "image_size": 16}
    params["data"] |= {"crop_ratio": 0.875, "max_memory_mb": 0, "val_fraction": 0.25}
    params["train"] |= {"batch_size": 8, "workers": 2}
    params["train"]["augment"] |= {"crop_padding": 0, "hflip": True}
    params["train"]["augment"]["random_resized_crop"] = [0.35, 1.0]
    repo.write_params(params)
    repo.commit("an ImageNet-layout folder, streamed")

    result = repo.dvc("repro", timeout=300, check=False)
    assert result.returncode == 0, result.describe()
    meta = json.loads((repo.root / "data" / "prepared" / "meta.json").read_text())
    assert meta["storage"] == "shards" and meta["crop_ratio"] == 0.875
    assert meta["sizes"] == {"train": 36, "val": 12, "test": 16}  # val/ is the test split
    assert len(list((repo.root / "data" / "prepared" / "shards").glob("*.tar"))) > 3
    assert repo.metrics("evaluate")["test_size"] == 16
    client = MlflowClient(tracking_uri=repo.tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(params["tracking"]["experiment"]).experiment_id],
        filter_string="tags.`mlflow.runName` = 'prepare'",
    )
    profile = json.loads(runs[0].inputs.dataset_inputs[0].dataset.profile)
    assert profile["storage"] == "shards" and profile["shards"]["train"] >= 2

    image = raw / "val" / "red" / "000.jpg"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=90)
    status = repo.dvc("status", "prepare", check=False)
    assert "changed deps" in status.output and "data/raw" in status.output
