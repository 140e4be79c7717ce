"""`jst predict`: real PNG/JPEG files through real exported ONNX models under ONNX Runtime.

The models are a channel-mean classifier with known logits: a pure colour normalizes to
+-2 per channel, so the expected probabilities are a softmax computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.imagefolder import read_images
from pipeline.export import export_onnx
from pipeline.predict import image_files, load_classifier, read_image

runner = CliRunner()
CLASSES = ["red", "green", "blue"]
SHAPE = (3, 8, 8)
MEAN, STD = [0.5] * 3, [0.25] * 3
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def channel_mean_classifier() -> nn.Module:
    """Logits = the mean of each normalized channel (red, green, blue)."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(3))
        model[2].bias.zero_()
    return model.eval()


def export(path, input_format: str, metadata: dict[str, str]) -> str:
    images = torch.randint(0, 256, (4, *SHAPE), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    if input_format == "image":
        samples, image_input = images, (MEAN, STD)
    else:
        samples, image_input = (images / 255.0 - 0.5) / 0.25, None
    export_onnx(
        channel_mean_classifier(),
        SHAPE,
        path,
        sample_inputs=samples,
        metadata=metadata,
        image_input=image_input,
    )
    return str(path)


FULL_METADATA = {"classes": json.dumps(CLASSES), "mean": json.dumps(MEAN), "std": json.dumps(STD)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    return {
        "image": export(folder / "image.onnx", "image", FULL_METADATA),
        "tensor": export(folder / "tensor.onnx", "tensor", FULL_METADATA),
        "no-classes": export(folder / "bare.onnx", "image", {}),
        "tensor-no-stats": export(
            folder / "tensor_bare.onnx", "tensor", {"classes": json.dumps(CLASSES)}
        ),
    }


@pytest.fixture
def colour_files(tmp_path):
    """One 20 x 12 PNG per colour (not the model's size: predict resizes)."""
    paths = []
    for name, rgb in COLOURS.items():
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (20, 12), rgb).save(path)
        paths.append(path)
    return paths


def expected_top(winner: str) -> list[tuple[str, float]]:
    logits = np.array([2.0 if name == winner else -2.0 for name in CLASSES])
    probabilities = np.exp(logits) / np.exp(logits).sum()
    order = [CLASSES.index(winner)] + [i for i in range(3) if CLASSES[i] != winner]
    return [(CLASSES[i], probabilities[i]) for i in order]


@pytest.mark.parametrize("input_format", ["image", "tensor"])
def test_predictions_are_the_softmax_of_the_known_logits(models, colour_files, input_format):
    classifier = load_classifier(models[input_format], repo_root=None)
    predictions = list(classifier.predict(colour_files, top_k=3))
    assert [p.image for p in predictions] == colour_files
    for prediction, winner in zip(predictions, COLOURS, strict=True):
        assert [name for name, _ in prediction.top] == [name for name, _ in expected_top(winner)]
        got = [p for _, p in prediction.top]
        assert got == pytest.approx([p for _, p in expected_top(winner)], abs=1e-5)
        assert prediction.logits == pytest.approx(
            [2.0 if c == winner else -2.0 for c in CLASSES], abs=1e-5
        )


def test_both_input_formats_agree_on_real_photographs_like_noise(models, tmp_path):
    path = tmp_path / "noise.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=90)
    logits = {
        kind: next(load_classifier(models[kind], repo_root=None).predict([path], top_k=1)).logits
        for kind in ("image", "tensor")
    }
    assert logits["image"] == pytest.approx(logits["tensor"], abs=1e-5)


def test_folders_expand_to_their_images_recursively_in_order(tmp_path, colour_files, models):
    nested = tmp_path / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 250)).save(nested / "b.JPG")
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden.png")
    files = image_files([tmp_path])
    assert files == sorted([*colour_files, nested / "b.JPG"])

    result = runner.invoke(
        app, ["predict", str(tmp_path), "--model", models["image"], "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4
    for line, path in zip(lines, files, strict=True):
        assert line.startswith(f"{path}  ")
        assert len(line.removeprefix(f"{path}  ").split(", ")) == 2  # top-2
    assert lines[0].split("  ")[1].startswith("blue 0.96")  # blue.png sorts first


def test_json_output_has_classes_probabilities_and_logits(models, colour_files):
    result = runner.invoke(
        app, ["predict", *map(str, colour_files), "--model", models["tensor"], "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [row["image"] for row in rows] == [str(p) for p in colour_files]
    assert [row["top"][0]["class"] for row in rows] == list(COLOURS)
    for row in rows:
        assert len(row["top"]) == 3 and len(row["logits"]) == 3
        assert sum(entry["probability"] for entry in row["top"]) == pytest.approx(1.0)


def test_images_are_resized_as_the_imagefolder_data_set_prepares_them(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(1).integers(0, 256, (23, 29, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    prepared = read_images([path], 8)[0].permute(1, 2, 0).numpy()  # the prepare stage's
    assert np.array_equal(read_image(path, 3, 8, 8), prepared)
    grey = read_image(path, 1, 8, 8)
    expected = np.asarray(Image.open(path).convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    assert grey.shape == (8, 8, 1) and np.array_equal(grey[..., 0], expected)


def error_of(args: list[str]) -> str:
    result = runner.invoke(app, ["predict", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    return " ".join(result.output.split())


def test_clear_errors_for_bad_images(tmp_path, models):
    assert "image /nowhere/x.png does not exist" in error_of(
        ["/nowhere/x.png", "--model", models["image"]]
    )
    (tmp_path / "empty").mkdir()
    assert "holds no .png/.jpg/.jpeg files" in error_of(
        [str(tmp_path / "empty"), "--model", models["image"]]
    )


def test_unreadable_images_are_reported_and_skipped_and_the_rest_classified(
    tmp_path, models, colour_files
):
    folder = colour_files[0].parent
    fake = folder / "fake.png"
    fake.write_bytes(b"\x89PNG but not really")
    result = runner.invoke(app, ["predict", str(folder), "--model", models["image"]])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    classified = [line.split()[0] for line in result.stdout.splitlines()]
    assert classified == [str(path) for path in sorted(colour_files)]
    errors = " ".join(result.stderr.split())
    assert f"skipped: cannot read image {fake}" in errors
    assert errors.endswith("error: 1 of 4 images could not be read (skipped above); 3 classified")


def test_a_damaged_model_file_error_says_how_to_restore_it(tmp_path, models, colour_files):
    damaged = tmp_path / "model.onnx"
    whole = Path(models["image"]).read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    message = error_of([str(colour_files[0]), "--model", str(damaged)])
    assert f"ONNX Runtime cannot load {damaged}" in message
    assert f"uv run dvc checkout --force {damaged}" in message


def test_a_damaged_model_is_refused_by_the_evaluate_stage_with_the_same_fix(tmp_path, models):
    """The evaluate stage checks model.onnx with onnx.load before ONNX Runtime opens it."""
    from pipeline.errors import ArtifactError
    from pipeline.export import check_onnx_matches

    damaged = tmp_path / "model.onnx"
    whole = Path(models["image"]).read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactError) as refused:
        check_onnx_matches(damaged, (3, 8, 8), 3)
    assert f"{damaged} is not a readable ONNX model" in str(refused.value)
    assert f"uv run dvc checkout --force {damaged}" in str(refused.value)


def test_clear_errors_for_bad_models(tmp_path, models, colour_files, monkeypatch):
    image = str(colour_files[0])
    assert "ONNX model file /no/model.onnx does not exist" in error_of(
        [image, "--model", "/no/model.onnx"]
    )
    assert "no 'classes' in its metadata" in error_of([image, "--model", models["no-classes"]])
    assert "no 'mean' in its metadata" in error_of([image, "--model", models["tensor-no-stats"]])
    assert "is not of the form models:/<name>@<alias>" in error_of(
        [image, "--model", "models:/only-a-name"]
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    message = error_of([image, "--model", "models:/compact-cnn@newest"])
    assert f"there is no tracking store {tmp_path / 'mlflow.db'}" in message
    assert not (tmp_path / "mlflow.db").exists()  # not created by asking


def test_predict_has_help():
    result = runner.invoke(app, ["predict", "--help"])
    assert result.exit_code == 0 and "models:/<name>@<alias>" in " ".join(result.output.split())
