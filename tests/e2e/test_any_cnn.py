"""`dvc repro` of torchvision CNNs whose channel layouts are discovered, on the user's own
images: mobilenet_v2 searched by JST, then efficientnet_b0 pruned by l1 in the same
repository; each is exported, checked and registered. The images are an ImageNet-layout
folder (train/<class>, val/<class>) of JPEGs of several sizes, prepared as shards and
streamed by decoding workers with ImageNet-style augmentation and evaluation crop
(docs/data.md); the shards are a DVC output counted in the MLflow dataset record, and a
changed source image reruns prepare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.e2e.e2e_repo import E2ERepo

CLASSES = {"red": (200, 30, 30), "blue": (30, 30, 200)}
PER_CLASS = 12
SIDE = 64

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def write_imagenet_layout(root: Path) -> None:
    """Two learnable classes (a colour plus noise) of JPEGs a little larger than SIDE, of
    several sizes and aspect ratios; val/ becomes the test split."""
    rng = np.random.default_rng(0)
    for part, count in (("train", PER_CLASS), ("val", PER_CLASS // 3)):
        for name, colour in CLASSES.items():
            (root / part / name).mkdir(parents=True)
            for i in range(count):
                width, height = rng.integers(SIDE, SIDE + 24, 2)
                noise = rng.integers(-30, 30, (height, width, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / part / name / f"{i:03d}.jpg", quality=90)


def depend_on_raw_data(repo: E2ERepo) -> None:
    """`- ${data.root}` in the prepare stage's deps, as docs/sharing.md asks."""
    dvc_yaml = repo.root / "dvc.yaml"
    text = dvc_yaml.read_text()
    marker = "    cmd: python -m stages.prepare\n"
    start = text.index(marker)
    deps = text.index("    deps:\n", start) + len("    deps:\n")
    dvc_yaml.write_text(text[:deps] + "      - ${data.root}\n" + text[deps:])


def test_torchvision_cnns_are_searched_exported_and_registered(tmp_path: Path) -> None:
    repo = E2ERepo.create(tmp_path / "repo")
    raw = repo.root / "data" / "raw"
    write_imagenet_layout(raw)
    depend_on_raw_data(repo)
    params = repo.read_params()
    params["data"] |= {"dataset": "imagefolder", "root": "data/raw", "image_size": SIDE}
    params["data"] |= {"val_fraction": 0.25, "crop_ratio": 0.875, "max_memory_mb": 0}
    params["train"] |= {"batch_size": 8, "workers": 2}
    params["train"]["augment"] |= {"crop_padding": 0, "hflip": True}
    params["train"]["augment"]["random_resized_crop"] = [0.35, 1.0]
    name = params["tracking"]["registered_model"]
    # Settings whose outcome does not depend on the CPU's numerics. mobilenet_v2 trains stably
    # at these rates in fp32 and bf16. EfficientNet-B0 on 12 training images does not, at any
    # rate tried: its last BatchNorms see 2x2 maps in batches of 4-12, and after two steps
    # the running statistics give eval-mode logits of 1e3-1e8 (fp32, seeds 0-2). It is
    # therefore pruned as initialised (l1 re-estimates the pruned model's BN statistics),
    # which exercises discovery, slicing, export and registration without training it.
    runs = [
        ("mobilenet_v2", {"method": "jst", "lr": 0.01}, {"lr": 0.001}),  # 1 warm-up, 2 iter.
        ("efficientnet_b0", {"method": "l1", "epochs": 0}, {"epochs": 0}),
    ]
    for version, (arch, search, finetune) in enumerate(runs, start=1):
        params["model"] |= {"arch": arch}
        params["search"] |= {"target_flops": 0.5, **search}
        params["finetune"] |= finetune
        repo.write_params(params)
        repo.commit(f"{arch}, {search['method']}, on an image folder")

        result = repo.dvc("repro", timeout=300, check=False)
        assert result.returncode == 0, result.describe()
        spec = json.loads((repo.root / "models" / "compact" / "arch.json").read_text())
        assert spec["model"] == arch and spec["input_shape"] == [3, SIDE, SIDE]
        assert repo.metrics("search")["flops_ratio"] <= 0.5
        export = repo.metrics("export")  # the default parity tolerance, on the logits' scale
        assert export["max_abs_diff"] < 1e-4 * max(1.0, export["logit_scale"])
        client = MlflowClient(tracking_uri=repo.tracking_uri, registry_uri=repo.tracking_uri)
        versions = client.search_model_versions(f"name='{name}'")
        assert sorted(int(v.version) for v in versions) == list(range(1, version + 1))

    meta = json.loads((repo.root / "data" / "prepared" / "meta.json").read_text())
    assert meta["storage"] == "shards" and meta["crop_ratio"] == 0.875
    assert meta["sizes"] == {"train": 18, "val": 6, "test": 8}  # val/ is the test split
    client = MlflowClient(tracking_uri=repo.tracking_uri)
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    prepare = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlflow.runName` = 'prepare'"
    )[0]
    profile = json.loads(prepare.inputs.dataset_inputs[0].dataset.profile)
    assert profile["storage"] == "shards" and profile["shards"]["train"] >= 2
    image = raw / "val" / "red" / "000.jpg"
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image, quality=90)
    status = repo.dvc("status", "prepare", check=False)
    assert "changed deps" in status.output and "data/raw" in status.output
