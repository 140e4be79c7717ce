"""Image-folder data sets: ``root/<class>/*.png|jpg|jpeg``, one subfolder per class.

Two layouts are recognised:

* flat: ``root/<class>/...``; the caller splits all images by the fractions.
* split (ImageNet style): ``root/train/<class>/...`` plus ``root/val/<class>/...`` and/or
  ``root/test/<class>/...``. With only one of val/ and test/, that folder is the test
  split and validation is carved from train/; with both, each gives its own split.

Scanning reads file names and image headers only, so a bad layout, an unreadable file or
mismatched sizes are reported before any image is decoded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data.transforms import fit_image
from pipeline.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LAYOUT_HINT = "expected data.root/<class>/*.png|jpg|jpeg, or train/ plus val/ or test/"
# PIL picks a decoder by content, not suffix: only its PNG and JPEG decoders may read a user's
# file (a TIFF or DDS named .png is refused). On malformed data decoders raise OSError,
# ValueError, SyntaxError, NotImplementedError, struct.error...: any of them means "unreadable".
FORMATS = ("PNG", "JPEG")
_PIL_ERRORS = Exception
MAX_LISTED = 20  # unreadable images named in one error message


@dataclass(frozen=True)
class ImageFiles:
    """Image paths and their class indices."""

    paths: list[Path]
    labels: np.ndarray

    def take(self, indices: Iterable[int]) -> ImageFiles:
        indices = np.asarray(list(indices), dtype=np.int64)
        return ImageFiles([self.paths[i] for i in indices], self.labels[indices])


@dataclass(frozen=True)
class FolderScan:
    """Classes and files of an image folder; ``parts`` holds "all" or split names."""

    classes: list[str]
    parts: dict[str, ImageFiles]

    @property
    def is_flat(self) -> bool:
        return "all" in self.parts


def scan_image_folder(root: Path) -> FolderScan:
    """List the classes and image files under ``root`` (either layout)."""
    try:
        is_folder = root.is_dir()
    except OSError as error:  # e.g. a name longer than the file system allows
        raise DataError(f"data.root '{root}' cannot be used ({error.strerror}).") from error
    if not is_folder:
        raise DataError(f"data.root '{root}' does not exist or is not a folder; {_LAYOUT_HINT}.")
    holdouts = [name for name in ("val", "test") if (root / name).is_dir()]
    if not ((root / "train").is_dir() and holdouts):
        classes = _class_folders(root)
        return FolderScan(classes, {"all": _list_images(root, classes)})
    classes = _class_folders(root / "train")
    parts = {"train": _list_images(root / "train", classes)}
    if holdouts == ["val"]:
        parts["test"] = _list_images(root / "val", classes)
    else:
        parts.update({name: _list_images(root / name, classes) for name in holdouts})
    return FolderScan(classes, parts)


def _class_folders(directory: Path) -> list[str]:
    classes = sorted(
        entry.name
        for entry in _entries(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"No class folders found under '{directory}'; {_LAYOUT_HINT}.")
    return classes


def _list_images(directory: Path, classes: Sequence[str]) -> ImageFiles:
    """Images of every class folder in ``directory``; folders must be known classes."""
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in _class_folders(directory):
        if name not in index:
            raise DataError(
                f"Class folder '{directory / name}' has no counterpart in the train "
                f"classes {list(classes)}; rename or remove it."
            )
        files = _image_files(directory / name)
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    return ImageFiles(paths, np.asarray(labels, dtype=np.int64))


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        entry
        for entry in _entries(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(
            f"Class folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)}); add images "
            f"or remove the folder."
        )
    return files


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError as error:  # permissions, a name too long, a folder gone meanwhile
        raise DataError(f"Cannot list '{directory}' ({error.strerror or error}).") from error


def check_images(paths: Sequence[Path], image_size: int | None) -> None:
    """Open every header, reporting every unreadable file in one error (up to
    ``MAX_LISTED``); without ``image_size`` all images must share one size."""
    sizes, errors = [], []
    for path in paths:
        try:
            sizes.append((path, header_size(path)))
        except DataError as error:
            errors.append(str(error))
    if errors:
        raise unreadable_images(errors)
    first_path, first_size = None, None
    for path, size in sizes:
        if image_size is not None:
            continue
        if first_size is None:
            first_path, first_size = path, size
        elif size != first_size:
            raise DataError(
                f"Images differ in size: '{first_path}' is {first_size[0]}x{first_size[1]} "
                f"but '{path}' is {size[0]}x{size[1]}. Set data.image_size to resize all "
                f"images to one square size."
            )


def read_images(
    paths: Sequence[Path], image_size: int | None, crop_ratio: float | None = None
) -> torch.Tensor:
    """Decode images as RGB uint8 N x 3 x H x W, fitted to ``image_size`` when set
    (``pipeline.data.transforms.fit_image``). Every image that fails to decode (a
    truncated file passes the header check) is named in one error."""
    if not paths:
        return torch.empty((0, 3, image_size or 1, image_size or 1), dtype=torch.uint8)
    batch, errors = None, []
    for i, path in enumerate(paths):
        try:
            pixels = _decode(path, image_size, crop_ratio)
        except DataError as error:
            errors.append(str(error))
            continue
        if batch is None:
            batch = np.empty((len(paths), *pixels.shape), dtype=np.uint8)
        batch[i] = pixels
    if errors:
        raise unreadable_images(errors)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path, formats=FORMATS) as image:
            return image.size
    except _PIL_ERRORS as error:
        raise _unreadable(path, error) from error


def _decode(path: Path, image_size: int | None, crop_ratio: float | None) -> np.ndarray:
    try:
        with Image.open(path, formats=FORMATS) as image:
            rgb = image.convert("RGB")
    except _PIL_ERRORS as error:
        raise _unreadable(path, error) from error
    return np.asarray(fit_image(rgb, image_size, crop_ratio), dtype=np.uint8)


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(unreadable_message(path, error))


def unreadable_images(errors: Sequence[str], note: str = "") -> DataError:
    """One error for many unreadable images: the first ``MAX_LISTED`` of ``errors``."""
    listed = "\n  ".join(errors[:MAX_LISTED])
    more = f"\n  ... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
    return DataError(f"{len(errors)} image(s) cannot be read{note}:\n  {listed}{more}")


def unreadable_message(path: Path | str, error: Exception) -> str:
    return (
        f"Cannot read image '{path}' ({error}); the file is corrupt or not a PNG/JPEG image. "
        f"Replace or delete it."
    )
