"""Classify image files with an exported ONNX model: what ``jst predict`` runs.

The model is a local ``.onnx`` file or a registered version (``models:/<name>@<alias>`` or
``models:/<name>/<version>``) downloaded from the project's MLflow store. Images are decoded
with PIL, converted to the model's channels and resized to its H x W with PIL's bilinear
filter, as the ``imagefolder`` data set prepares them (``pipeline.data.imagefolder``). An
``image``-input model (``pipeline.export``) normalizes them itself; a ``tensor``-input one
gets them normalized here with the mean/std in its metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data import normalize
from pipeline.data.imagefolder import FORMATS as IMAGE_FORMATS  # the decoders data sets use
from pipeline.data.imagefolder import IMAGE_SUFFIXES
from pipeline.errors import ArtifactError, DataError
from pipeline.evaluate import open_session
from pipeline.export import IMAGE, input_format_of
from pipeline.tracking.registry import (
    REGISTRY_FORMS,
    REGISTRY_PREFIX,
    download_registered_model,
)

BATCH_SIZE = 64  # images decoded and run at once: bounded memory for large folders
_REEXPORT = "re-run the export stage (`uv run dvc repro export`) to write it"


@dataclass(frozen=True)
class Prediction:
    """One image's logits and its most probable classes, best first."""

    image: Path
    logits: list[float]
    top: list[tuple[str, float]]  # (class, softmax probability)

    def as_dict(self) -> dict:
        return {
            "image": str(self.image),
            "top": [{"class": name, "probability": p} for name, p in self.top],
            "logits": self.logits,
        }


class OnnxClassifier:
    """An exported classifier under ONNX Runtime (CPU) with what its metadata says."""

    def __init__(self, path: Path, shown: str) -> None:
        self.session, _ = open_session(path, "cpu")
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_format = input_format_of(metadata, shown)
        self.classes = _classes(metadata, shown)
        dims = self.session.get_inputs()[0].shape[1:]
        if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
            raise ArtifactError(f"{shown} takes input of shape {dims}, not one fixed image size")
        if self.input_format == IMAGE:
            self.height, self.width, self.channels = dims
            self.normalization = None
        else:
            self.channels, self.height, self.width = dims
            self.normalization = _normalization(metadata, shown, self.channels)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits of uint8 N x H x W x C images of the model's size."""
        if self.normalization is None:
            batch = np.ascontiguousarray(images, dtype=np.uint8)
        else:
            nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
            batch = normalize(nchw, *self.normalization).numpy()
        feed = {self.session.get_inputs()[0].name: batch}
        return self.session.run(None, feed)[0]

    def predict(
        self,
        paths: Sequence[Path],
        top_k: int,
        on_unreadable: Callable[[Path, DataError], None] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions for image files, in order, ``BATCH_SIZE`` images at a time.

        A file that cannot be decoded raises ``DataError``; with ``on_unreadable`` it is
        passed there instead and skipped, and the other files are classified."""
        for start in range(0, len(paths), BATCH_SIZE):
            chunk, images = [], []
            for path in paths[start : start + BATCH_SIZE]:
                try:
                    images.append(self.read(path))
                except DataError as error:
                    if on_unreadable is None:
                        raise
                    on_unreadable(path, error)
                    continue
                chunk.append(path)
            if not chunk:
                continue
            for path, row in zip(chunk, self.logits(np.stack(images)), strict=True):
                yield Prediction(path, row.tolist(), top_classes(row, self.classes, top_k))

    def read(self, path: Path) -> np.ndarray:
        """``path`` decoded as uint8 H x W x C at the model's size and channels."""
        return read_image(path, self.channels, self.height, self.width)


def load_classifier(model: str | os.PathLike, repo_root: Path | None = None) -> OnnxClassifier:
    """The classifier at a local path or a registry URI, resolved against the tracking store
    of ``repo_root`` (default: the current directory)."""
    reference = str(model)
    if not reference.startswith(REGISTRY_PREFIX):
        path = Path(reference)
        if not path.is_file():
            raise ArtifactError(
                f"ONNX model file {path} does not exist; run the pipeline (`uv run dvc repro`) "
                f"or pass --model a .onnx file or {REGISTRY_FORMS}"
            )
        return OnnxClassifier(path, reference)
    with tempfile.TemporaryDirectory(prefix="jst-predict-") as tmp:
        # The session holds the model in memory: the download may go once it is open.
        downloaded = download_registered_model(reference, repo_root or Path.cwd(), Path(tmp))
        return OnnxClassifier(downloaded, reference)


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named, a folder standing for its PNG/JPEG files (recursively, sorted).

    Every input is checked before any image is decoded."""
    if not inputs:
        raise DataError("no images given; pass image files or folders")
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                path
                for path in item.rglob("*")
                if path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not path.name.startswith(".")
            )
            if not found:
                raise DataError(f"folder {item} holds no {'/'.join(IMAGE_SUFFIXES)} files")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"image {item} does not exist; pass image files or folders")
    return files


def read_image(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """Decode a PNG/JPEG file as uint8 ``height`` x ``width`` x ``channels`` (1 or 3)."""
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ArtifactError(f"the model takes {channels}-channel images; only 1 or 3 are read")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            converted = image.convert(mode)
    except Exception as error:  # PIL raises many types on bad data; all mean "unreadable"
        raise DataError(f"cannot read image {path} ({error}); pass PNG or JPEG files") from error
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(converted, dtype=np.uint8).reshape(height, width, channels)


def top_classes(logits: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable classes with their softmax probabilities, best first."""
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    probabilities = shifted / shifted.sum()
    best = np.argsort(-probabilities, kind="stable")[: max(1, k)]
    return [(classes[i], float(probabilities[i])) for i in best]


def _classes(metadata: dict[str, str], shown: str) -> list[str]:
    classes = _json_metadata(metadata, "classes", shown)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ArtifactError(f"{shown}: metadata 'classes' is not a list of names; {_REEXPORT}")
    return classes


def _normalization(
    metadata: dict[str, str], shown: str, channels: int
) -> tuple[list[float], list[float]]:
    """The mean/std a tensor-input model was trained with: one number per channel each."""
    mean, std = (_json_metadata(metadata, key, shown) for key in ("mean", "std"))
    for key, values in (("mean", mean), ("std", std)):
        numbers = isinstance(values, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
        if not numbers or len(values) != channels:
            raise ArtifactError(
                f"{shown}: metadata {key!r} is not {channels} numbers (one per channel); "
                f"{_REEXPORT}"
            )
    return mean, std


def _json_metadata(metadata: dict[str, str], key: str, shown: str) -> object:
    if key not in metadata:
        raise ArtifactError(
            f"{shown} has no {key!r} in its metadata, which predictions need; {_REEXPORT}"
        )
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise ArtifactError(
            f"{shown}: metadata {key!r} is not JSON ({error}); {_REEXPORT}"
        ) from None
