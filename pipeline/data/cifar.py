"""CIFAR-10 / CIFAR-100 from the official "python version" archives under a root folder.

The archive names, download URLs and checksums come from torchvision. The batches are
read here rather than through ``torchvision.datasets.CIFAR10`` for two reasons:

* torchvision unpickles them with plain ``pickle.load``, and unpickling can run arbitrary
  code. ``_NumpyOnlyUnpickler`` resolves only the numpy helpers that rebuild arrays, so a
  tampered file fails instead of executing anything.
* torchvision refuses any file whose md5 differs from the official one, which rules out
  small stand-in archives in tests. The download path still verifies the archive md5.
"""

from __future__ import annotations

import codecs
import functools
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import DataError

try:  # numpy >= 2 moved the array helpers to numpy._core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

IMAGE_SHAPE = (3, 32, 32)


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name, under old and new numpy module paths."""
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes use it
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = _multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = _numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts, lists and strings, and nothing else."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed in a CIFAR batch"
            ) from None


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files (taken from torchvision)."""

    title: str
    folder: str
    archive: str
    url: str
    archive_md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str

    @classmethod
    def from_torchvision(cls, title: str, dataset: type) -> CifarLayout:
        return cls(
            title=title,
            folder=dataset.base_folder,
            archive=dataset.filename,
            url=dataset.url,
            archive_md5=dataset.tgz_md5,
            train_files=tuple(name for name, _ in dataset.train_list),
            test_files=tuple(name for name, _ in dataset.test_list),
            meta_file=dataset.meta["filename"],
            names_key=dataset.meta["key"],
        )

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


CIFAR_NAMES = ("cifar10", "cifar100")


@functools.cache
def cifar_layout(name: str) -> CifarLayout:
    """File layout of ``name`` (cifar10 or cifar100)."""
    # torchvision is imported here, not at module level: it takes seconds to import and
    # only the CIFAR loaders need it.
    from torchvision.datasets import CIFAR10, CIFAR100

    if name == "cifar10":
        return CifarLayout.from_torchvision("CIFAR-10", CIFAR10)
    if name == "cifar100":
        return CifarLayout.from_torchvision("CIFAR-100", CIFAR100)
    raise KeyError(f"unknown CIFAR variant {name!r}; expected one of {CIFAR_NAMES}")


@dataclass(frozen=True)
class CifarData:
    """The official train and test sets as uint8 N x 3 x 32 x 32 images and labels."""

    train_images: torch.Tensor
    train_labels: np.ndarray
    test_images: torch.Tensor
    test_labels: np.ndarray
    classes: list[str]


def load_cifar(name: str, root: Path, *, download: bool) -> CifarData:
    """Read CIFAR-10/100 from ``root``, extracting or downloading the archive if needed."""
    layout = cifar_layout(name)
    folder = root / layout.folder
    if download:
        _download(layout, root)
    elif not folder.is_dir() and (root / layout.archive).is_file():
        _extract(root / layout.archive, root)
    _check_files_present(layout, root)
    classes = _read_class_names(folder / layout.meta_file, layout)
    train_images, train_labels = _read_batches(folder, layout.train_files, len(classes))
    test_images, test_labels = _read_batches(folder, layout.test_files, len(classes))
    return CifarData(train_images, train_labels, test_images, test_labels, classes)


def _download(layout: CifarLayout, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    if (root / layout.folder).is_dir():
        return
    try:
        download_and_extract_archive(
            layout.url, str(root), filename=layout.archive, md5=layout.archive_md5
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise DataError(
            f"Could not download {layout.title} into data.root '{root}': {error}. Check the "
            f"internet connection, or put the official archive {layout.archive} under "
            f"data.root and set data.download: false."
        ) from error


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")  # "data" refuses paths outside root
    except (OSError, EOFError, tarfile.TarError) as error:
        raise DataError(
            f"Cannot extract '{archive}': {error}. The archive is damaged; delete it and "
            f"download it again (data.download: true) or replace it with the official one."
        ) from error


def _check_files_present(layout: CifarLayout, root: Path) -> None:
    folder = root / layout.folder
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if not missing:
        return
    raise DataError(
        f"{layout.title} files were not found under data.root '{root}' (missing in "
        f"'{folder}': {', '.join(missing)}). Set data.download: true (where there is "
        f"internet access), or put the official archive {layout.archive} or its extracted "
        f"folder {layout.folder}/ under data.root."
    )


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as file:
            # latin1 decodes the Python 2 strings of the official files, as torchvision does.
            content = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except Exception as error:
        # Corrupted opcodes fail in many ways (UnpicklingError, TypeError, LookupError,
        # OverflowError, MemoryError on an absurd length...): all mean a damaged file.
        raise _corrupt(path, f"{type(error).__name__}: {str(error)[:200]}") from error
    if not isinstance(content, dict):
        raise _corrupt(path, "it does not hold a dictionary")
    return content


def _read_class_names(path: Path, layout: CifarLayout) -> list[str]:
    names = _unpickle(path).get(layout.names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _corrupt(path, f"it has no list of class names under '{layout.names_key}'")
    return names


def _read_batches(
    folder: Path, files: tuple[str, ...], num_classes: int
) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = [], []
    for name in files:
        batch_images, batch_labels = _read_batch(folder / name, num_classes)
        images.append(batch_images)
        labels.append(batch_labels)
    stacked = np.concatenate(images).reshape(-1, *IMAGE_SHAPE)  # rows are channel-major
    return torch.from_numpy(stacked), np.concatenate(labels)


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data = batch.get("data")
    pixels = int(np.prod(IMAGE_SHAPE))
    is_pixel_rows = (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == pixels
    )
    if not is_pixel_rows:
        raise _corrupt(path, f"'data' is not a uint8 array of rows of {pixels} pixels")
    # CIFAR-10 stores "labels"; CIFAR-100 stores "fine_labels" (and "coarse_labels").
    try:
        labels = np.asarray(batch.get("labels", batch.get("fine_labels", [])))
    except (ValueError, TypeError) as error:  # ragged or odd objects
        raise _corrupt(path, f"unreadable labels ({error})") from error
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise _corrupt(path, f"it does not hold one integer label per image ({len(data)})")
    if labels.size and not (labels.min() >= 0 and labels.max() < num_classes):
        raise _corrupt(path, f"labels fall outside 0..{num_classes - 1}")
    return data, labels.astype(np.int64)


def _corrupt(path: Path, reason: str) -> DataError:
    return DataError(
        f"'{path}' is not a valid CIFAR batch in the official python format ({reason}). "
        f"Delete the extracted folder and use the official archive (data.download: true "
        f"downloads and verifies it)."
    )
