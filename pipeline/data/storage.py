"""Save and load prepared data: ``splits.safetensors`` plus ``meta.json``, no pickle.

``save_prepared`` writes into a temporary sibling folder and only then swaps it in, so an
interrupted save never leaves a half-written folder that a later stage would accept; the
previous folder stays in place until the new one is complete. ``load_prepared`` checks
the files against each other and against ``meta.json`` before trusting them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.atomic import replace_dir
from pipeline.data.prepared import SPLIT_NAMES, PreparedData, Split
from pipeline.data.streaming import ShardedSplit
from pipeline.errors import DataError

TENSORS_FILE = "splits.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1
_RERUN = "Rerun the prepare stage (`dvc repro prepare`) to rebuild it."


class _Shard(BaseModel):
    file: str
    samples: int = Field(ge=1)
    digest: str = ""  # of its inputs (images, labels, layout): changes with any of them


def save_prepared(data: PreparedData, directory: str | Path) -> None:
    """Write ``data`` to ``directory``, replacing any previous content atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        _write_files(data, staging)
        replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_prepared(directory: str | Path) -> PreparedData:
    """Read prepared data back; DataError if files are missing or inconsistent. Sharded
    data are not read here: their splits stream from the shards when iterated."""
    directory = Path(directory)
    meta = load_prepared_meta(directory)
    if meta.storage == "shards":
        splits = {name: _sharded_split(name, meta, directory) for name in SPLIT_NAMES}
    else:
        tensors = _read_tensors(directory / TENSORS_FILE)
        splits = {name: _split_from(tensors, name, meta, directory) for name in SPLIT_NAMES}
    channels = meta.input_shape[0]
    if len(meta.mean) != channels or len(meta.std) != channels:
        raise _inconsistent(directory, f"mean/std do not have {channels} channel values")
    return PreparedData(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classes=meta.classes,
        mean=meta.mean,
        std=meta.std,
        dataset=meta.dataset,
    )


def _write_files(data: PreparedData, folder: Path) -> None:
    tensors = {}
    for name in SPLIT_NAMES:
        split = data.split(name)
        tensors[f"{name}_images"] = split.images.detach().cpu().contiguous()
        tensors[f"{name}_labels"] = split.labels.detach().cpu().contiguous()
    save_file(tensors, str(folder / TENSORS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": data.dataset,
        "classes": list(data.classes),
        "mean": [float(value) for value in data.mean],
        "std": [float(value) for value in data.std],
        "input_shape": list(data.input_shape),
        "sizes": {name: len(data.split(name)) for name in SPLIT_NAMES},
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for path in (folder / TENSORS_FILE, folder / META_FILE):
        _fsync(path)


def _fsync(path: Path) -> None:
    """Flush a file to disk so the rename below never publishes unwritten data."""
    with path.open("rb") as file:
        os.fsync(file.fileno())


def load_prepared_meta(directory: str | Path) -> _Meta:
    """The checked ``meta.json`` of prepared data (dataset, classes, shape, split sizes),
    without reading the tensors."""
    return _read_meta(Path(directory) / META_FILE)


def _read_meta(path: Path) -> _Meta:
    if not path.is_file():
        raise DataError(f"Prepared data is missing '{path}'. {_RERUN}")
    try:
        return _Meta.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as error:
        raise DataError(
            f"'{path}' is not valid prepared-data metadata ({error}). {_RERUN}"
        ) from error


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DataError(f"Prepared data is missing '{path}'. {_RERUN}")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise DataError(f"'{path}' is corrupt ({error}). {_RERUN}") from error


def _split_from(tensors: dict[str, torch.Tensor], name: str, meta: _Meta, directory: Path) -> Split:
    images = tensors.get(f"{name}_images")
    labels = tensors.get(f"{name}_labels")
    if images is None or labels is None:
        raise _inconsistent(directory, f"the {name} split is missing from {TENSORS_FILE}")
    expected_shape = tuple(meta.input_shape)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != expected_shape:
        raise _inconsistent(
            directory,
            f"{name} images have shape {tuple(images.shape)} and dtype {images.dtype}, "
            f"expected uint8 N x {' x '.join(map(str, expected_shape))}",
        )
    if labels.dtype != torch.int64 or labels.dim() != 1 or len(labels) != len(images):
        raise _inconsistent(
            directory, f"{name} has {len(images)} images but labels of shape {tuple(labels.shape)}"
        )
    if meta.sizes.get(name) != len(labels):
        raise _inconsistent(
            directory,
            f"{name} holds {len(labels)} samples but {META_FILE} says {meta.sizes.get(name)}",
        )
    if len(labels) and not (int(labels.min()) >= 0 and int(labels.max()) < len(meta.classes)):
        raise _inconsistent(directory, f"{name} labels fall outside 0..{len(meta.classes) - 1}")
    return Split(images, labels)


def sharded_meta(data_description: dict, written: dict) -> dict:
    """meta.json of sharded data: ``data_description`` (dataset, classes, input shape,
    crop ratio, class counts) plus what ``write_shards`` returned."""
    shards = written["shards"]
    return {
        "format_version": FORMAT_VERSION,
        "storage": "shards",
        **data_description,
        "mean": written["mean"],
        "std": written["std"],
        "sizes": {name: sum(s["samples"] for s in shards[name]) for name in SPLIT_NAMES},
        "shards": shards,
    }


def _sharded_split(name: str, meta: _Meta, directory: Path) -> ShardedSplit:
    shards = meta.shards.get(name)
    if not shards and meta.sizes.get(name):
        raise _inconsistent(directory, f"meta.json lists no shards for the {name} split")
    paths = tuple(directory / shard.file for shard in shards or [])
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise _inconsistent(directory, f"shard(s) missing: {', '.join(missing[:5])}")
    counts = tuple(shard.samples for shard in shards or [])
    if sum(counts) != meta.sizes.get(name):
        raise _inconsistent(
            directory,
            f"the {name} shards hold {sum(counts)} samples, meta.json says {meta.sizes.get(name)}",
        )
    channels, height, _ = meta.input_shape
    return ShardedSplit(
        paths,
        counts,
        channels,
        height,
        meta.crop_ratio,
        tuple(meta.class_counts.get(name, [])),
        tuple(shard.digest for shard in shards or []),
    )


def _inconsistent(directory: Path, reason: str) -> DataError:
    return DataError(f"Prepared data in '{directory}' is inconsistent: {reason}. {_RERUN}")


class _Meta(BaseModel):
    """The schema of meta.json."""

    model_config = ConfigDict(extra="ignore")

    format_version: Literal[1]
    dataset: str
    classes: list[str] = Field(min_length=1)
    mean: list[float]
    std: list[float]
    input_shape: tuple[int, int, int]
    sizes: dict[str, int]
    storage: Literal["memory", "shards"] = "memory"
    # Sharded data only (pipeline.data.shards): files and sample counts per split, how an
    # image becomes an input, and the class counts (the labels sit in the shards).
    shards: dict[str, list[_Shard]] = {}
    crop_ratio: float | None = None
    class_counts: dict[str, list[int]] = {}
