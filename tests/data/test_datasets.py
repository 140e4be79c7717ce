"""load_dataset: digits, a fake CIFAR archive, image folders, and every user error."""

import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import DATASETS, channel_stats, load_dataset
from pipeline.errors import DataError

SPLIT_ARGS = {"download": False, "image_size": None, "val_fraction": 0.2, "test_fraction": 0.2}


# ---------------------------------------------------------------- helpers


def write_cifar_batch(path: Path, labels: list[int], label_key: str = "labels") -> None:
    """A batch in the official format: each image's R, G, B planes are constant."""
    labels_array = np.asarray(labels)
    planes = np.stack([labels_array * 10, labels_array * 10 + 1, labels_array * 10 + 2], 1)
    data = np.repeat(planes, 32 * 32, axis=1).astype(np.uint8)  # rows are R..., G..., B...
    batch = {"batch_label": path.name, label_key: list(labels), "data": data}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_fake_cifar10(root: Path, per_class: int = 3) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for batch in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{batch}", list(range(10)) * per_class)
    write_cifar_batch(folder / "test_batch", list(range(10)))
    names = [f"class{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return folder


def write_png(path: Path, size=(10, 12), value: int = 100, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, value // 2, 255 - value)
    Image.new(mode, size, color).save(path)


def write_class_tree(root: Path, classes: dict[str, int], size=(10, 12)) -> None:
    for index, (name, count) in enumerate(classes.items()):
        for i in range(count):
            write_png(root / name / f"img{i}.png", size, value=20 * index + i)


def message(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


# ---------------------------------------------------------------- digits


def test_digits_loads_stratified_uint8_splits():
    data = load_dataset("digits", None, seed=0, **SPLIT_ARGS)
    assert data.dataset == "digits"
    assert data.input_shape == (1, 8, 8)
    assert data.classes == [str(d) for d in range(10)]
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.train.images.dtype == torch.uint8
    assert data.train.images.max() == 255
    for split in (data.val, data.test):
        assert torch.bincount(split.labels, minlength=10).min() >= 30
    mean, std = channel_stats(data.train.images)
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)


def test_digits_split_depends_only_on_the_seed():
    first = load_dataset("digits", None, seed=3, **SPLIT_ARGS)
    again = load_dataset("digits", None, seed=3, **SPLIT_ARGS)
    other = load_dataset("digits", None, seed=4, **SPLIT_ARGS)
    assert torch.equal(first.val.images, again.val.images)
    assert torch.equal(first.test.labels, again.test.labels)
    assert not torch.equal(first.val.images, other.val.images)


def test_image_size_resizes_any_data_set():
    data = load_dataset("digits", None, seed=0, **{**SPLIT_ARGS, "image_size": 16})
    assert data.input_shape == (1, 16, 16)
    assert data.test.images.shape[1:] == (1, 16, 16)


# ---------------------------------------------------------------- CIFAR


def test_fake_cifar10_archive_is_read_with_official_test_split(tmp_path):
    write_fake_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path, seed=0, **SPLIT_ARGS)
    assert data.dataset == "cifar10"
    assert data.classes == [f"class{i}" for i in range(10)]
    assert data.input_shape == (3, 32, 32)
    assert len(data.test) == 10  # the official test batch, untouched
    assert len(data.train) + len(data.val) == 150
    assert torch.bincount(data.val.labels, minlength=10).tolist() == [3] * 10
    for split in (data.train, data.val, data.test):  # pixels decode channel-major
        labels = split.labels.view(-1, 1, 1)
        assert torch.equal(split.images[:, 0].long(), (labels * 10).expand(-1, 32, 32))
        assert torch.equal(split.images[:, 2].long(), (labels * 10 + 2).expand(-1, 32, 32))


def test_cifar_tar_archive_is_extracted(tmp_path):
    source = write_fake_cifar10(tmp_path / "source")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    data = load_dataset("cifar10", tmp_path, seed=0, **{**SPLIT_ARGS, "image_size": 8})
    assert data.input_shape == (3, 8, 8)
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_fake_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_cifar_batch(folder / "train", [0, 1, 2, 3] * 4, label_key="fine_labels")
    write_cifar_batch(folder / "test", [0, 1, 2, 3], label_key="fine_labels")
    names = {"fine_label_names": ["apple", "bee", "cup", "dog"]}
    (folder / "meta").write_bytes(pickle.dumps(names, protocol=2))
    data = load_dataset("cifar100", tmp_path, seed=0, **SPLIT_ARGS)
    assert data.classes == ["apple", "bee", "cup", "dog"]
    assert len(data.train) + len(data.val) == 16 and len(data.test) == 4


def test_missing_cifar_archive_explains_both_fixes(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", tmp_path, seed=0, **SPLIT_ARGS)
    text = message(error)
    assert "not found under data.root" in text and str(tmp_path) in text
    assert "data.download: true" in text and "cifar-10-python.tar.gz" in text


class _PlantsMarker:
    """Pickles to a call of Path.touch: a stand-in for a malicious payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_cifar_reader_refuses_pickles_that_call_code(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "executed"
    payload = {"label_names": ["x"] * 10, "evil": _PlantsMarker(marker)}
    (folder / "batches.meta").write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match="batches.meta") as error:
        load_dataset("cifar10", tmp_path, seed=0, **SPLIT_ARGS)
    assert "not allowed" in message(error)
    assert not marker.exists()


def test_corrupt_cifar_batch_is_named(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, seed=0, **SPLIT_ARGS)


# ---------------------------------------------------------------- image folders


def test_flat_image_folder_is_split_by_the_fractions(tmp_path):
    write_class_tree(tmp_path, {"cat": 10, "dog": 5})
    write_png(tmp_path / "dog" / "gray.jpg", mode="L")  # grayscale still gives 3 channels
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    data = load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)
    assert data.classes == ["cat", "dog"]
    assert data.input_shape == (3, 12, 10)
    assert sum(len(s) for s in (data.train, data.val, data.test)) == 16
    assert torch.bincount(data.val.labels).tolist() == [2, 1]
    assert torch.bincount(data.test.labels).tolist() == [2, 1]


def test_train_and_val_folders_give_train_and_test(tmp_path):
    write_class_tree(tmp_path / "train", {"a": 5, "b": 5})
    write_class_tree(tmp_path / "val", {"a": 2, "b": 1})
    data = load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)
    assert data.classes == ["a", "b"]
    assert len(data.test) == 3
    assert torch.bincount(data.val.labels).tolist() == [1, 1]
    assert len(data.train) == 8


def test_train_val_and_test_folders_are_used_as_given(tmp_path):
    write_class_tree(tmp_path / "train", {"a": 3, "b": 3})
    write_class_tree(tmp_path / "val", {"a": 1, "b": 1})
    write_class_tree(tmp_path / "test", {"a": 2})
    data = load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 2)


def test_image_size_makes_mixed_sizes_usable(tmp_path):
    write_class_tree(tmp_path, {"a": 3, "b": 3})
    write_png(tmp_path / "b" / "big.png", size=(40, 30))
    data = load_dataset("imagefolder", tmp_path, seed=0, **{**SPLIT_ARGS, "image_size": 16})
    assert data.input_shape == (3, 16, 16)


def test_mixed_sizes_without_image_size_name_two_files(tmp_path):
    write_class_tree(tmp_path, {"a": 3, "b": 3})
    write_png(tmp_path / "b" / "big.png", size=(40, 30))
    with pytest.raises(DataError) as error:
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)
    text = message(error)
    assert "big.png" in text and "data.image_size" in text
    assert re.search(r"img\d\.png' is 10x12", text)


# ---------------------------------------------------------------- errors


def test_unknown_data_set_lists_the_valid_ones():
    with pytest.raises(DataError) as error:
        load_dataset("mnist", None, seed=0, **SPLIT_ARGS)
    assert all(name in message(error) for name in DATASETS)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size_names_the_parameter(size):
    with pytest.raises(DataError, match=r"data\.image_size"):
        load_dataset("digits", None, seed=0, **{**SPLIT_ARGS, "image_size": size})


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data\.root .*nowhere.* does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere", seed=0, **SPLIT_ARGS)


def test_empty_root_has_no_class_folders(tmp_path):
    with pytest.raises(DataError, match="No class folders"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)


def test_class_folder_without_images_is_named(tmp_path):
    write_class_tree(tmp_path, {"a": 4})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'.*empty' has no images"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)


def test_unknown_class_in_val_folder_is_named(tmp_path):
    write_class_tree(tmp_path / "train", {"a": 4})
    write_class_tree(tmp_path / "val", {"zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)


def test_file_that_is_not_an_image_is_named(tmp_path):
    write_class_tree(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "b" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"broken\.png.*corrupt"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)


def test_truncated_image_is_named(tmp_path):
    write_class_tree(tmp_path, {"a": 4, "b": 4})
    noisy = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / "a" / "cut.png"
    Image.fromarray(noisy).save(path)
    path.write_bytes(path.read_bytes()[:-60])
    with pytest.raises(DataError, match=r"cut\.png"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)


def test_fraction_leaving_an_empty_split_is_named(tmp_path):
    write_class_tree(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(DataError, match=r"data\.val_fraction = 0"):
        load_dataset("imagefolder", tmp_path, seed=0, **{**SPLIT_ARGS, "val_fraction": 0})


def test_class_too_small_to_split_is_named(tmp_path):
    write_class_tree(tmp_path, {"big": 10, "tiny": 2})
    with pytest.raises(DataError, match="Class 'tiny' has only 2"):
        load_dataset("imagefolder", tmp_path, seed=0, **SPLIT_ARGS)
