"""Prepared data larger than memory: WebDataset tar shards of encoded images.

Why WebDataset (docs/data.md weighs LitData, Mosaic Streaming, FFCV and DALI): a shard is
a plain POSIX tar of the images as given (``<key>.jpg`` or ``.png``) and their labels
(``<key>.cls``), readable by any tool, streamed sequentially (the fastest access on disks
and object stores), and one DVC-cached file each, so a changed image re-uploads one shard.
Sharding over ranks and workers, reshuffling and exact mid-epoch resume are ours
(``pipeline.data.streaming``), since they are a few lines over a shard list with known
sample counts.

``write_shards`` is resumable: shards are built in a staging folder next to the target,
each one renamed into place only once complete, with the fingerprint of its inputs
(files' sizes and times, labels, layout) and its channel sums beside it. A rerun keeps
every finished shard whose inputs are unchanged: a killed write continues, and replacing a
bad image rewrites only its shard. The staging folder becomes the prepared folder only when
every image has decoded, so nothing half-written is ever published; unreadable images are
reported together (the first twenty), after every shard has been tried.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from webdataset import TarWriter

from pipeline.atomic import replace_dir, write_text_atomic
from pipeline.data.imagefolder import FORMATS, unreadable_images, unreadable_message
from pipeline.data.transforms import fit_image
from pipeline.errors import DataError

SHARD_DIR = "shards"
# Samples a shard holds: enough shards for ranks x workers on small sets, ~100 MB shards of
# ImageNet-sized JPEGs on large ones.
MIN_SHARD_SAMPLES, MAX_SHARD_SAMPLES, TARGET_SHARDS = 16, 1024, 32
_STATS_DIR = "stats"
_JPEG_QUALITY = 90


class ImageSource:
    """The encoded images of one split, read one at a time: files, or arrays encoded as PNG."""

    def __init__(self, paths: Sequence[Path] | None = None, arrays: np.ndarray | None = None):
        if (paths is None) == (arrays is None):
            raise ValueError("ImageSource takes either paths or arrays")
        self.paths = list(paths) if paths is not None else None
        self.arrays = arrays  # N x C x H x W uint8

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.arrays)

    def take(self, order: np.ndarray) -> ImageSource:
        """The images in ``order``."""
        if self.paths is not None:
            return ImageSource(paths=[self.paths[i] for i in order])
        return ImageSource(arrays=self.arrays[order])

    def name(self, index: int) -> str:
        return str(self.paths[index]) if self.paths is not None else f"image #{index}"

    def read(self, index: int) -> tuple[bytes, str]:
        """The encoded bytes of image ``index`` and their extension (jpg or png)."""
        if self.paths is not None:
            path = self.paths[index]
            suffix = path.suffix.lower()
            return path.read_bytes(), "png" if suffix == ".png" else "jpg"
        array = self.arrays[index]
        image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
        return _encode(image, "png"), "png"

    def fingerprint(self, indices: range) -> str:
        """Changes when an image of ``indices`` changes (file size and time, or bytes)."""
        digest = hashlib.sha256()
        if self.paths is None:
            digest.update(np.ascontiguousarray(self.arrays[indices.start : indices.stop]).tobytes())
            return digest.hexdigest()
        for index in indices:
            path = self.paths[index]
            try:
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:  # reported when the image is read
                digest.update(f"{path}\0missing\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class SplitSource:
    images: ImageSource
    labels: np.ndarray  # int64, one per image

    def shuffled(self, seed: int) -> SplitSource:
        """The images in a seeded random order. Splits come sorted by class, and a shard
        is read whole: shards written in that order would give batches of one class."""
        order = np.random.default_rng(seed).permutation(len(self.labels))
        return SplitSource(self.images.take(order), np.asarray(self.labels)[order])


@dataclass(frozen=True)
class ShardLayout:
    """How the written images are fitted and stored (part of the resume fingerprint)."""

    channels: int  # 1 (grey) or 3 (RGB)
    image_size: int  # the network's input side
    crop_ratio: float | None
    max_side: int  # longer stored sides are re-encoded at this size


def shard_samples(train_size: int) -> int:
    return int(np.clip(-(-train_size // TARGET_SHARDS), MIN_SHARD_SAMPLES, MAX_SHARD_SAMPLES))


def staging_dir(directory: Path) -> Path:
    """Where the shards of ``directory`` are built until every one is finished."""
    return directory.parent / f".{directory.name}.partial"


def write_shards(
    splits: dict[str, SplitSource],
    layout: ShardLayout,
    directory: Path,
    *,
    samples_per_shard: int | None = None,
    on_shard: Callable[[str], None] = lambda name: None,
) -> dict:
    """Write ``splits`` as shards into ``directory`` (replaced whole at the end); returns
    the shard section of the prepared data's meta.json, with the train mean/std.

    ``on_shard`` is called with each shard's name as it is finished or found finished.
    """
    per_shard = samples_per_shard or shard_samples(len(splits["train"].labels))
    staging = staging_dir(directory)
    (staging / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (staging / _STATS_DIR).mkdir(exist_ok=True)
    # What a shard's bytes and statistics depend on besides its images and labels: adding
    # images elsewhere (another shard, other class counts) keeps it.
    settings = json.dumps(layout.__dict__, sort_keys=True)
    shards: dict[str, list[dict]] = {}
    sums = np.zeros((2, layout.channels), dtype=np.float64)
    pixels, errors = 0, []
    for split, source in splits.items():
        shards[split] = []
        for first in range(0, len(source.labels), per_shard):
            name = f"{split}-{first // per_shard:06d}.tar"
            indices = range(first, min(first + per_shard, len(source.labels)))
            inputs = _fingerprint(settings, source, indices)
            stats = _finished(staging, name, inputs) or _write_shard(
                staging, name, source, indices, layout, errors, inputs, with_stats=split == "train"
            )
            on_shard(name)
            if stats is None:
                continue
            shards[split].append(
                {"file": f"{SHARD_DIR}/{name}", "samples": len(indices), "digest": inputs}
            )
            if split == "train":
                sums += np.asarray(stats["sums"])
                pixels += stats["pixels"]
    if errors:
        raise unreadable_images(errors, "; nothing was published as prepared data")
    mean = sums[0] / max(pixels, 1)
    std = np.sqrt(np.clip(sums[1] / max(pixels, 1) - mean**2, 0, None))
    shutil.rmtree(staging / _STATS_DIR)
    listed = {Path(entry["file"]).name for entries in shards.values() for entry in entries}
    for stale in (staging / SHARD_DIR).iterdir():  # left by an earlier, larger plan
        if stale.name not in listed:
            stale.unlink()
    return {"shards": shards, "mean": mean.tolist(), "std": std.tolist(), "staging": staging}


def publish(staging: Path, directory: Path, meta: dict, meta_file: str) -> None:
    """Write the meta into the finished staging folder and swap it in for ``directory``."""
    write_text_atomic(staging / meta_file, json.dumps(meta, indent=2) + "\n")
    replace_dir(staging, directory)


def _fingerprint(settings: str, source: SplitSource, indices: range) -> str:
    """Changes when any input of a shard changes: its images, labels or the layout."""
    digest = hashlib.sha256(settings.encode())
    digest.update(source.images.fingerprint(indices).encode())
    digest.update(np.asarray(source.labels[indices.start : indices.stop], np.int64).tobytes())
    return digest.hexdigest()


def _finished(staging: Path, name: str, inputs: str) -> dict | None:
    """The stats of shard ``name`` if it was finished from the same inputs."""
    if not (staging / SHARD_DIR / name).is_file():
        return None
    try:
        stats = json.loads((staging / _STATS_DIR / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stats if stats.get("inputs") == inputs else None


def _write_shard(
    staging: Path,
    name: str,
    source: SplitSource,
    indices: range,
    layout: ShardLayout,
    errors: list[str],
    inputs: str,
    *,
    with_stats: bool,
) -> dict | None:
    """Decode, check and store the images of one shard; None when one was unreadable."""
    target = staging / SHARD_DIR / name
    partial = target.with_suffix(".tar.part")
    sums = np.zeros((2, layout.channels), dtype=np.float64)
    pixels, failed = 0, False
    with partial.open("wb") as file, TarWriter(file, encoder=False) as sink:
        for index in indices:
            try:
                data, ext, image = _stored_image(source.images, index, layout)
            except DataError as error:
                errors.append(str(error))
                failed = True
                continue
            label = int(source.labels[index])
            sink.write({"__key__": f"{index:09d}", ext: data, "cls": str(label).encode()})
            if with_stats:
                fitted = np.asarray(fit_image(image, layout.image_size, layout.crop_ratio))
                values = fitted.reshape(-1, layout.channels).astype(np.float64) / 255.0
                sums += np.stack([values.sum(0), np.square(values).sum(0)])
                pixels += len(values)
        file.flush()
        os.fsync(file.fileno())
    if failed:
        partial.unlink()
        target.unlink(missing_ok=True)  # an earlier version of this shard
        return None
    partial.replace(target)
    stats = {"sums": sums.tolist(), "pixels": pixels, "inputs": inputs}
    write_text_atomic(staging / _STATS_DIR / f"{name}.json", json.dumps(stats))
    return stats


def _stored_image(source: ImageSource, index: int, layout: ShardLayout):
    """The bytes to store for image ``index`` (as given, or re-encoded when larger than
    ``max_side``), their extension and the decoded image."""
    try:
        data, ext = source.read(index)
        image = decode(data, layout.channels)
    except Exception as error:  # PIL raises many types on malformed data
        raise DataError(unreadable_message(source.name(index), error)) from error
    if max(image.size) > layout.max_side:
        scale = layout.max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        data = _encode(image, ext)
    return data, ext, image


def decode(data: bytes, channels: int) -> Image.Image:
    """Decode PNG or JPEG bytes fully (a truncated file fails here) as L or RGB."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        image.load()
        return image.convert("L" if channels == 1 else "RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 C x H x W tensor."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _encode(image: Image.Image, ext: str) -> bytes:
    buffer = io.BytesIO()
    if ext == "png":
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()
