"""save_prepared / load_prepared: round trip, atomic replacement, damaged files."""

import json

import pytest
import torch
from safetensors.torch import save_file

import pipeline.data.storage as storage
from pipeline.data import PreparedData, Split, channel_stats, load_prepared, save_prepared
from pipeline.errors import DataError


def make_split(count: int, seed: int) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 6, 6), dtype=torch.uint8, generator=generator)
    return Split(images, torch.arange(count, dtype=torch.int64) % 3)


def make_data(seed: int = 0) -> PreparedData:
    train = make_split(12, seed)
    mean, std = channel_stats(train.images)
    return PreparedData(
        train=train,
        val=make_split(4, seed + 1),
        test=make_split(5, seed + 2),
        classes=["x", "y", "z"],
        mean=mean,
        std=std,
        dataset="toy",
    )


def assert_same(left: PreparedData, right: PreparedData) -> None:
    for name in ("train", "val", "test"):
        assert torch.equal(left.split(name).images, right.split(name).images)
        assert torch.equal(left.split(name).labels, right.split(name).labels)
    assert (left.classes, left.mean, left.std, left.dataset) == (
        right.classes,
        right.mean,
        right.std,
        right.dataset,
    )


def test_round_trip_preserves_everything(tmp_path):
    data = make_data()
    save_prepared(data, tmp_path / "prepared")
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == [
        "meta.json",
        "splits.safetensors",
    ]
    assert_same(load_prepared(tmp_path / "prepared"), data)
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["sizes"] == {"train": 12, "val": 4, "test": 5}
    assert meta["input_shape"] == [3, 6, 6]


def test_saving_again_replaces_the_folder_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "prepared"
    save_prepared(make_data(0), target)
    (target / "stale.txt").write_text("from an older run")
    save_prepared(make_data(5), target)
    assert not (target / "stale.txt").exists()
    assert_same(load_prepared(target), make_data(5))
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_failed_save_keeps_the_old_folder_intact(tmp_path, monkeypatch):
    target = tmp_path / "prepared"
    save_prepared(make_data(0), target)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "_fsync", crash)  # after both files are written
    with pytest.raises(OSError, match="disk full"):
        save_prepared(make_data(5), target)
    assert_same(load_prepared(target), make_data(0))
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_new_folder_appears_only_when_complete(tmp_path, monkeypatch):
    target = tmp_path / "prepared"
    seen_during_write = []
    real_write = storage._write_files

    def spying_write(data, folder):
        seen_during_write.append(target.exists())
        real_write(data, folder)

    monkeypatch.setattr(storage, "_write_files", spying_write)
    save_prepared(make_data(0), target)
    assert seen_during_write == [False]
    assert load_prepared(target).dataset == "toy"


@pytest.mark.parametrize("missing", ["meta.json", "splits.safetensors"])
def test_missing_file_says_to_rerun_prepare(tmp_path, missing):
    save_prepared(make_data(), tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(DataError, match=rf"{missing}.*dvc repro prepare"):
        load_prepared(tmp_path)


def test_truncated_tensor_file_is_reported(tmp_path):
    save_prepared(make_data(), tmp_path)
    path = tmp_path / "splits.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"splits\.safetensors.*corrupt.*dvc repro prepare"):
        load_prepared(tmp_path)


def test_invalid_meta_json_is_reported(tmp_path):
    save_prepared(make_data(), tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match=r"meta\.json.*dvc repro prepare"):
        load_prepared(tmp_path)


def rewrite_meta(directory, **changes) -> None:
    path = directory / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sizes": {"train": 99, "val": 4, "test": 5}}, "train holds 12 samples"),
        ({"input_shape": [1, 6, 6]}, "expected uint8 N x 1 x 6 x 6"),
        ({"classes": ["x", "y"]}, "labels fall outside"),
        ({"mean": [0.5]}, "mean/std"),
    ],
)
def test_meta_that_disagrees_with_the_tensors_is_reported(tmp_path, changes, reason):
    save_prepared(make_data(), tmp_path)
    rewrite_meta(tmp_path, **changes)
    with pytest.raises(DataError, match="inconsistent") as error:
        load_prepared(tmp_path)
    assert reason in str(error.value) and "dvc repro prepare" in str(error.value)


def test_tensor_file_without_a_split_is_reported(tmp_path):
    data = make_data()
    save_prepared(data, tmp_path)
    save_file(
        {"train_images": data.train.images, "train_labels": data.train.labels},
        str(tmp_path / "splits.safetensors"),
    )
    with pytest.raises(DataError, match="val split is missing"):
        load_prepared(tmp_path)
