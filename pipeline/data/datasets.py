"""Load a named data set into train/val/test splits with the train statistics.

``load_dataset`` checks its parameters and the files before decoding images, then
splits with ``stratified_split`` (seeded), optionally resizes, and computes the
per-channel mean/std on the train split.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.cifar import CIFAR_NAMES, load_cifar
from pipeline.data.imagefolder import (
    FolderScan,
    ImageFiles,
    check_images,
    header_size,
    read_images,
    scan_image_folder,
)
from pipeline.data.prepared import SPLIT_NAMES, PreparedData, Split, channel_stats
from pipeline.data.shards import (
    ImageSource,
    ShardLayout,
    SplitSource,
    publish,
    shard_samples,
    staging_dir,
    write_shards,
)
from pipeline.data.splits import check_fractions, stratified_split
from pipeline.data.storage import META_FILE, load_prepared, save_prepared, sharded_meta
from pipeline.errors import DataError

DATASETS = ("digits", *CIFAR_NAMES, "imagefolder")
# Images per chunk when resizing, to bound float temporaries.
_RESIZE_CHUNK = 1024

SplitArrays = dict[str, tuple[torch.Tensor, np.ndarray]]


def load_dataset(
    name: str,
    root: str | Path | None,
    *,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> PreparedData:
    """Load data set ``name`` (one of ``DATASETS``) and split it.

    digits: scikit-learn's bundled 8x8 digits (``root`` unused), split by both fractions.
    cifar10 / cifar100: official archives under ``root``; the official test set is the
    test split and validation is carved from the official train set (``test_fraction``
    unused). imagefolder: see ``pipeline.data.imagefolder``.
    """
    _check_name(name)
    _check_image_size(image_size)
    if name == "digits":
        return _load_digits(image_size, val_fraction, test_fraction, seed)
    root_path = _require_root(root)
    if name in CIFAR_NAMES:
        return _load_cifar(name, root_path, download, image_size, val_fraction, seed)
    return _load_image_folder(root_path, image_size, val_fraction, test_fraction, seed)


def prepare_dataset(
    name: str,
    root: str | Path | None,
    directory: str | Path,
    *,
    download: bool = False,
    image_size: int | None = None,
    crop_ratio: float | None = None,
    max_side: int = 512,
    max_memory_mb: float = 4096,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_shard: Callable[[int, int], None] | None = None,
) -> PreparedData:
    """Load, split and store data set ``name`` in ``directory``; returns it as stored.

    Splits whose decoded images (at ``image_size``) fit ``max_memory_mb`` are stored as
    one tensor file and loaded whole; larger ones become shards of encoded images
    (``pipeline.data.shards``), at most ``max_side`` pixels on their longer side, that
    training streams. ``crop_ratio`` (image folders): see ``fit_image``. ``on_shard(done,
    total)`` reports the progress of a sharded write. Every image is checked before
    anything is published; a killed sharded write resumes when run again.
    """
    directory = Path(directory)
    budget = max_memory_mb * 2**20
    if name != "imagefolder":
        data = load_dataset(
            name,
            root,
            download=download,
            image_size=image_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
        if _decoded_bytes(data) <= budget:
            _drop_staging(directory)
            save_prepared(data, directory)
        else:
            sources = {
                split: SplitSource(
                    ImageSource(arrays=data.split(split).images.numpy()),
                    data.split(split).labels.numpy(),
                )
                for split in SPLIT_NAMES
            }
            channels, size, _ = data.input_shape
            layout = ShardLayout(channels, size, None, max(max_side, size))
            _write_sharded(name, data.classes, sources, layout, directory, seed, on_shard)
        return load_prepared(directory)
    _check_image_size(image_size)
    scan = scan_image_folder(_require_root(root))
    files = _assign_files(scan, val_fraction, test_fraction, seed)
    side = image_size or _header_side(files["train"].paths[0])
    if sum(len(part.paths) for part in files.values()) * 3 * side * side <= budget:
        splits = _read_splits(files, image_size, crop_ratio)
        _drop_staging(directory)
        save_prepared(_assemble("imagefolder", scan.classes, splits, None), directory)
        return load_prepared(directory)
    if image_size is None:
        raise DataError(
            f"The images of '{root}' exceed data.max_memory_mb ({max_memory_mb:g} MB decoded) "
            f"and will stream from shards, which needs one input size: set data.image_size."
        )
    sources = {
        split: SplitSource(ImageSource(paths=part.paths), part.labels)
        for split, part in files.items()
    }
    layout = ShardLayout(3, image_size, crop_ratio, max(max_side, image_size))
    _write_sharded("imagefolder", scan.classes, sources, layout, directory, seed, on_shard)
    return load_prepared(directory)


def _drop_staging(directory: Path) -> None:
    """The shards a failed or killed sharded prepare left: no use to an in-memory one."""
    shutil.rmtree(staging_dir(directory), ignore_errors=True)


def _decoded_bytes(data: PreparedData) -> int:
    channels, height, width = data.input_shape
    return sum(len(data.split(name)) for name in SPLIT_NAMES) * channels * height * width


def _write_sharded(
    dataset: str,
    classes: list[str],
    sources: dict[str, SplitSource],
    layout: ShardLayout,
    directory: Path,
    seed: int,
    on_shard: Callable[[int, int], None] | None,
) -> None:
    sources = {split: source.shuffled(seed) for split, source in sources.items()}
    per_shard = shard_samples(len(sources["train"].labels))
    total = sum(-(-len(source.labels) // per_shard) for source in sources.values())
    done = iter(range(1, total + 1))
    description = {
        "dataset": dataset,
        "classes": list(classes),
        "input_shape": [layout.channels, layout.image_size, layout.image_size],
        "crop_ratio": layout.crop_ratio,
        "class_counts": {
            split: np.bincount(source.labels, minlength=len(classes)).tolist()
            for split, source in sources.items()
        },
    }
    written = write_shards(
        sources,
        layout,
        directory,
        samples_per_shard=per_shard,
        on_shard=lambda name: on_shard and on_shard(next(done), total),
    )
    publish(written["staging"], directory, sharded_meta(description, written), META_FILE)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of uint8 N x C x H x W images to size x size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    resized = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        scaled = F.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        resized[start : start + len(chunk)] = scaled.round_().clamp_(0, 255).to(torch.uint8)
    return resized


def _header_side(path: Path) -> int:
    try:
        return max(header_size(path))
    except DataError:
        return 1  # sized by the other images; this one is reported with them


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(
            f"Unknown data set {name!r} (data.dataset); choose one of: {', '.join(DATASETS)}."
        )


def _check_image_size(image_size: int | None) -> None:
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(
            f"data.image_size = {image_size!r} is invalid; set it to a positive integer "
            f"(images become image_size x image_size) or to null to keep the original size."
        )


def _require_root(root: str | Path | None) -> Path:
    if root is None or str(root) == "":
        raise DataError("data.root is not set; point it at the folder that holds the data.")
    return Path(root)


def _load_digits(
    image_size: int | None, val_fraction: float, test_fraction: float, seed: int
) -> PreparedData:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    # Pixel values are 0..16; stretch them to the usual 0..255 range.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels[:, None])  # N x 1 x 8 x 8
    labels = bunch.target.astype(np.int64)
    classes = [str(digit) for digit in bunch.target_names]
    indices = stratified_split(
        labels, {"val": val_fraction, "test": test_fraction}, seed=seed, class_names=classes
    )
    splits = {split: (images[idx], labels[idx]) for split, idx in indices.items()}
    return _assemble("digits", classes, splits, image_size)


def _load_cifar(
    name: str,
    root: Path,
    download: bool,
    image_size: int | None,
    val_fraction: float,
    seed: int,
) -> PreparedData:
    check_fractions({"val": val_fraction})
    cifar = load_cifar(name, root, download=download)
    indices = stratified_split(
        cifar.train_labels, {"val": val_fraction}, seed=seed, class_names=cifar.classes
    )
    splits = {
        split: (cifar.train_images[idx], cifar.train_labels[idx]) for split, idx in indices.items()
    }
    splits["test"] = (cifar.test_images, cifar.test_labels)
    return _assemble(name, cifar.classes, splits, image_size)


def _load_image_folder(
    root: Path, image_size: int | None, val_fraction: float, test_fraction: float, seed: int
) -> PreparedData:
    scan = scan_image_folder(root)
    files = _assign_files(scan, val_fraction, test_fraction, seed)
    splits = _read_splits(files, image_size, None)
    return _assemble("imagefolder", scan.classes, splits, None)  # already resized by PIL


def _read_splits(
    files: dict[str, ImageFiles], image_size: int | None, crop_ratio: float | None
) -> SplitArrays:
    """Every split's decoded images; one error names every image that cannot be read."""
    paths = [path for part in files.values() for path in part.paths]
    if image_size is None:  # one size for all, checked on the headers before decoding
        check_images(paths, None)
    images = read_images(paths, image_size, crop_ratio)
    splits, start = {}, 0
    for split, part in files.items():
        splits[split] = (images[start : start + len(part.paths)], part.labels)
        start += len(part.paths)
    return splits


def _assign_files(
    scan: FolderScan, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, ImageFiles]:
    """The files of each split: carved by the fractions where no folder provides them."""
    if scan.is_flat:
        fractions = {"val": val_fraction, "test": test_fraction}
        return _carve(scan.parts["all"], fractions, seed, scan.classes)
    if "val" in scan.parts:  # train/, val/ and test/ are all given
        return dict(scan.parts)
    carved = _carve(scan.parts["train"], {"val": val_fraction}, seed, scan.classes)
    return {**carved, "test": scan.parts["test"]}


def _carve(
    pool: ImageFiles, fractions: dict[str, float], seed: int, classes: list[str]
) -> dict[str, ImageFiles]:
    indices = stratified_split(pool.labels, fractions, seed=seed, class_names=classes)
    return {split: pool.take(idx) for split, idx in indices.items()}


def _assemble(
    dataset: str, classes: list[str], splits: SplitArrays, image_size: int | None
) -> PreparedData:
    """Build the splits (resized when asked) and the train statistics."""
    built = {}
    for split, (images, labels) in splits.items():
        if image_size is not None:
            images = resize_images(images, image_size)
        built[split] = Split(images.contiguous(), torch.as_tensor(labels, dtype=torch.int64))
    mean, std = channel_stats(built["train"].images)
    return PreparedData(
        train=built["train"],
        val=built["val"],
        test=built["test"],
        classes=list(classes),
        mean=mean,
        std=std,
        dataset=dataset,
    )
