"""Property-based: a corrupted image file in a data set is refused by name.

One file of a small real PNG/JPEG folder (or of a CIFAR-10 python tree) is truncated,
emptied, overwritten with junk or text, or has random bytes changed. Loading then either
still works (JPEG tolerates some flipped bytes, and so may a PNG or a CIFAR batch where a
change hits no checked data) or fails with one DataError that names that file: never
another exception, never another file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.data import load_dataset
from pipeline.data.cifar import load_cifar
from pipeline.errors import DataError

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=80,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLASSES = ("cat", "dog")
PER_CLASS = 6
FOREIGN_FORMATS = ("TIFF", "BMP", "GIF", "WEBP", "DDS", "PPM")


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


class Originals(dict):
    """path -> original bytes; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} files under {next(iter(self)).parents[1]}>"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> dict[Path, bytes]:
    """root/<class>/<i>.png|jpg of random 12x12 RGB pixels; returns path -> original bytes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files = Originals()
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(PER_CLASS):
            fmt, suffix = ("PNG", ".png") if i % 2 else ("JPEG", ".jpg")
            path = root / name / f"{i}{suffix}"
            path.write_bytes(_encode(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), fmt))
            files[path] = path.read_bytes()
    return files


def _load(root: Path, image_size: int | None):
    return load_dataset(
        "imagefolder", root, image_size=image_size, val_fraction=0.2, test_fraction=0.2
    )


def _foreign(fmt: str) -> bytes:
    return _encode(np.full((12, 12, 3), 90, dtype=np.uint8), fmt)


@st.composite
def corruption(draw, original: bytes) -> tuple[bytes, bool]:
    """Corrupted bytes, and whether they must be refused."""
    kinds = ["truncate", "empty", "junk", "text", "flip", "header", "foreign"]
    kind = draw(st.sampled_from(kinds))
    foreign = kind == "foreign"
    if foreign:  # another format behind a .png/.jpg name: only PNG/JPEG are read
        original = _foreign(draw(st.sampled_from(FOREIGN_FORMATS)))
        kind = draw(st.sampled_from(["intact", "flip"]))
        if kind == "intact":
            return original, True
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))], False
    if kind == "empty":
        return b"", True
    if kind == "junk":
        junk = draw(st.binary(min_size=1, max_size=64).filter(lambda b: b[:2] != b"\xff\xd8"))
        return junk.replace(b"\x89PNG", b"XPNG"), True
    if kind == "text":
        return draw(st.text(max_size=40)).encode() + b"\nthis is not an image\n", True
    if kind == "header":  # the signature itself: PIL cannot tell what this is
        return b"\x00" * 8 + original[8:], True
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data), foreign


def test_the_intact_folder_loads(image_folder):
    root = next(iter(image_folder)).parents[1]
    data = _load(root, None)
    assert len(data.train) + len(data.val) + len(data.test) == len(CLASSES) * PER_CLASS


@FUZZ
@given(st.data())
def test_a_corrupted_image_is_refused_by_name(image_folder, data):
    path = data.draw(st.sampled_from(sorted(image_folder)), label="file")
    content, hopeless = data.draw(corruption(image_folder[path]), label="corruption")
    image_size = data.draw(st.sampled_from([None, 8]), label="image_size")
    path.write_bytes(content)
    try:
        _load(path.parents[1], image_size)
    except DataError as error:
        message = str(error)
        assert str(path) in message, message
        assert sum(str(other) in message for other in image_folder) == 1, message
        assert "Traceback" not in message
    else:
        assert not hopeless, f"{path} ({content[:16]!r}...) was accepted"
    finally:
        path.write_bytes(image_folder[path])


def test_a_non_image_with_an_image_suffix_is_refused(image_folder):
    path = next(p for p in image_folder if p.suffix == ".png")
    renamed = path.with_suffix(".jpeg")
    renamed.write_text("name,label\nnot,an image\n")
    try:
        with pytest.raises(DataError, match=str(renamed)):
            _load(path.parents[1], 8)
    finally:
        renamed.unlink()


def test_an_exotic_decoder_is_never_reached(image_folder):
    """A DDS whose pixel format PIL does not implement (its decoder raises
    NotImplementedError) behind a .png name: one DataError naming the file."""
    path = next(p for p in image_folder if p.suffix == ".png")
    dds = bytearray(_foreign("DDS"))
    dds[80:84] = bytes(4)  # DDS_PIXELFORMAT.dwFlags: no known pixel format
    with pytest.raises(NotImplementedError):
        Image.open(io.BytesIO(bytes(dds))).load()
    path.write_bytes(bytes(dds))
    try:
        with pytest.raises(DataError, match="not a PNG/JPEG image") as error:
            _load(path.parents[1], None)
        assert str(path) in str(error.value)
    finally:
        path.write_bytes(image_folder[path])


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> dict[Path, bytes]:
    """A CIFAR-10 python tree (3 images per class and batch); path -> original bytes."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = list(range(10)) * 3
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        batch = {"batch_label": name, "labels": labels, "data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Originals((path, path.read_bytes()) for path in sorted(folder.iterdir()))


@settings(FUZZ, max_examples=50)
@given(st.data())
def test_a_corrupted_cifar_batch_is_refused_by_name(cifar_tree, data):
    """The batches are pickles: read by a numpy-only unpickler whose every failure
    (TypeError, LookupError, OverflowError, MemoryError...) must become a DataError."""
    path = data.draw(st.sampled_from(sorted(cifar_tree)), label="file")
    content, hopeless = data.draw(corruption(cifar_tree[path]), label="corruption")
    path.write_bytes(content)
    try:
        load_cifar("cifar10", path.parents[1], download=False)
    except DataError as error:
        assert str(path) in str(error), str(error)
    else:
        assert not hopeless, f"{path} ({content[:16]!r}...) was accepted"
    finally:
        path.write_bytes(cifar_tree[path])


def test_a_root_the_os_refuses_is_a_data_error(tmp_path):
    root = tmp_path / ("r" * 300)  # longer than a file name may be
    with pytest.raises(DataError, match="data.root"):
        _load(root, 8)
