"""Sharded prepared data (pipeline.data.shards) and the loader that streams it
(pipeline.data.streaming): the same images as the in-memory path, disjoint rank shares,
exact mid-epoch resume, a resumable write and every unreadable image in one error."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import ShardedSplit, StreamingLoader, load_prepared, prepare_dataset
from pipeline.data.loader import Augment
from pipeline.data.shards import ImageSource, ShardLayout, SplitSource, publish, write_shards
from pipeline.data.storage import sharded_meta
from pipeline.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SPLITS = {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}


def write_folder(root: Path, per_class: int = 40, classes: int = 3, size=(40, 30)) -> Path:
    """JPEGs whose pixels encode their class and index, so every sample is unique."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c] = 40 + 5 * i % 200
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i:04d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("images") / "data")


@pytest.fixture(scope="module")
def streamed(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    return prepare_dataset("imagefolder", folder, out, image_size=16, max_memory_mb=0.01, **SPLITS)


@pytest.fixture(scope="module")
def in_memory(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    return prepare_dataset("imagefolder", folder, out, image_size=16, **SPLITS)


def test_a_set_over_the_memory_budget_streams_from_shards(streamed, in_memory):
    assert streamed.streamed and not in_memory.streamed
    assert isinstance(streamed.train, ShardedSplit) and len(streamed.train.shards) > 1
    assert streamed.input_shape == in_memory.input_shape == (3, 16, 16)
    for name in ("train", "val", "test"):
        assert len(streamed.split(name)) == len(in_memory.split(name))
        assert list(streamed.split(name).class_counts) == in_memory.split(name).class_counts
    np.testing.assert_allclose(streamed.mean, in_memory.mean, atol=1e-9)
    np.testing.assert_allclose(streamed.std, in_memory.std, atol=1e-9)


def test_streamed_evaluation_images_equal_the_in_memory_ones(streamed, in_memory):
    images, labels = next(streamed.test.batches(1000))

    def samples(images, labels):  # shards hold the images in a shuffled order
        return sorted((x.numpy().tobytes(), int(y)) for x, y in zip(images, labels, strict=True))

    assert samples(images, labels) == samples(in_memory.test.images, in_memory.test.labels)
    loader = StreamingLoader(streamed.val, streamed.mean, streamed.std, batch_size=7, shuffle=False)
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(in_memory.val.labels.tolist())
    assert len(loader) == sum(1 for _ in loader)


def test_shards_mix_the_classes(streamed):
    """Splits come sorted by class; shards written in that order give one-class batches."""
    loader = StreamingLoader(
        streamed.train, streamed.mean, streamed.std, batch_size=8, shuffle=True, workers=0
    )
    assert all(len(set(y.tolist())) > 1 for _, y in loader)


def sample_ids(loader) -> list[bytes]:
    """Every sample of one epoch, identified by its (un-augmented) pixels."""
    return [image.numpy().tobytes() for x, _ in loader for image in x]


def train_loader(data, **kwargs) -> StreamingLoader:
    options = {"batch_size": 8, "shuffle": True, "seed": 3, "workers": 0}
    return StreamingLoader(data.train, data.mean, data.std, **(options | kwargs))


def test_more_ranks_than_shards_is_a_clear_error(streamed):
    with pytest.raises(DataError, match="fewer than the 64 processes"):
        train_loader(streamed, rank=0, world=64, batch_size=64)


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_read_disjoint_shares_and_epochs_reshuffle(streamed, workers):
    per_shard = max(streamed.train.counts)
    shares = [sample_ids(train_loader(streamed, rank=r, world=2, workers=workers)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(streamed.train) // 8 * 4
    assert not set(shares[0]) & set(shares[1])  # disjoint
    for share in shares:  # a sample repeats only when a worker's shards ran short
        repeats = sum(count - 1 for count in collections.Counter(share).values())
        assert repeats <= per_shard * max(workers, 1)
    everything = set(shares[0]) | set(shares[1])
    assert len(everything) >= len(streamed.train) - 2 * max(workers, 1) * per_shard
    loader = train_loader(streamed, workers=workers)
    first, second = sample_ids(loader), sample_ids(loader)
    assert first != second and sample_ids(train_loader(streamed, workers=workers)) == first


def test_a_resumed_epoch_yields_exactly_the_batches_not_yet_seen(streamed):
    """One worker: the very same batches, augmentation included."""
    loader = train_loader(streamed, augment=Augment(2, True, None))
    whole = [x for x, _ in loader]
    loader.set_epoch(0, start_batch=5)
    rest = [x for x, _ in loader]
    assert len(rest) == len(whole) - 5
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[5:], strict=True))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
@pytest.mark.parametrize("start", [4, 5, 7])
def test_a_resumed_epoch_with_workers_yields_the_same_batches(streamed, start):
    """Three workers, resumed at the start of a round and within one."""
    loader = train_loader(streamed, workers=3, augment=Augment(2, True, None))
    whole = [x for x, _ in loader]
    loader.set_epoch(0, start_batch=start)
    rest = [x for x, _ in loader]
    assert len(rest) == len(whole) - start
    assert all(torch.equal(a, b) for a, b in zip(rest, whole[start:], strict=True))


def test_random_resized_crops_are_seeded_and_differ_from_the_plain_images(streamed):
    crop = Augment(0, True, (0.2, 0.6))
    cropped = sample_ids(train_loader(streamed, augment=crop, workers=2))
    assert cropped == sample_ids(train_loader(streamed, augment=crop, workers=2))
    plain = set(sample_ids(train_loader(streamed, workers=2)))
    assert len(cropped) == len(plain) and not set(cropped) & plain


def test_an_interrupted_write_keeps_its_finished_shards(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(64) % 2
    splits = {
        name: SplitSource(ImageSource(arrays=images[i::3]), labels[i::3])
        for i, name in enumerate(("train", "val", "test"))
    }
    layout = ShardLayout(1, 8, None, 512)
    target = tmp_path / "prepared"

    def stop_after(count):
        seen = []

        def on_shard(name):
            seen.append(name)
            if len(seen) == count:
                raise KeyboardInterrupt

        return on_shard

    with pytest.raises(KeyboardInterrupt):
        write_shards(splits, layout, target, samples_per_shard=4, on_shard=stop_after(3))
    assert not target.exists()  # nothing published
    staging = tmp_path / ".prepared.partial" / "shards"
    finished = {p.name: p.stat().st_mtime_ns for p in staging.glob("*.tar")}
    assert len(finished) == 3
    written = write_shards(splits, layout, target, samples_per_shard=4)
    for name, mtime in finished.items():  # kept, not rewritten
        assert (written["staging"] / "shards" / name).stat().st_mtime_ns == mtime


def test_after_a_failed_write_replacing_the_bad_image_rewrites_only_its_shard(tmp_path):
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(np.full((8, 8), 5 * i, dtype=np.uint8)).save(paths[-1])
    paths[10].write_bytes(b"broken")  # in the second train shard
    labels = np.arange(40) % 2
    splits = {
        "train": SplitSource(ImageSource(paths=paths[:24]), labels[:24]),
        "val": SplitSource(ImageSource(paths=paths[24:32]), labels[24:32]),
        "test": SplitSource(ImageSource(paths=paths[32:]), labels[32:]),
    }
    layout, target = ShardLayout(1, 8, None, 512), tmp_path / "prepared"
    with pytest.raises(DataError, match="10.png"):
        write_shards(splits, layout, target, samples_per_shard=8)
    shards = tmp_path / ".prepared.partial" / "shards"
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    assert "train-000001.tar" not in before and len(before) == 4
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(paths[10])
    write_shards(splits, layout, target, samples_per_shard=8)
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    assert after.keys() == before.keys() | {"train-000001.tar"}
    assert all(after[name] == mtime for name, mtime in before.items())


@pytest.mark.parametrize("budget_mb", [0, 4096], ids=["shards", "in-memory"])
def test_every_unreadable_image_is_named_in_one_error_before_anything_is_published(
    tmp_path, budget_mb
):
    root = write_folder(tmp_path / "data", per_class=30)
    (root / "class0" / "0001.jpg").write_bytes(b"not an image")
    jpeg = (root / "class1" / "0002.jpg").read_bytes()
    (root / "class1" / "0002.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    (root / "class2" / "0003.jpg").write_bytes(b"")
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "keep.txt").write_text("the previous prepared data")
    with pytest.raises(DataError) as error:
        prepare_dataset(
            "imagefolder", root, target, image_size=16, max_memory_mb=budget_mb, **SPLITS
        )
    message = str(error.value)
    assert re.search(r"\d image\(s\) cannot be read", message)
    for name in ("class0/0001.jpg", "class1/0002.jpg", "class2/0003.jpg"):
        assert name in message
    assert (target / "keep.txt").read_text() == "the previous prepared data"


def test_a_sharded_set_needs_one_input_size(folder, tmp_path):
    with pytest.raises(DataError, match="set data.image_size"):
        prepare_dataset("imagefolder", folder, tmp_path / "p", image_size=None, max_memory_mb=0.01)


def test_a_missing_shard_is_reported_with_how_to_restore_it(streamed, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(streamed.train.shards[0].parents[1], copy)
    next((copy / "shards").glob("val-*.tar")).unlink()
    with pytest.raises(DataError, match="shard"):
        load_prepared(copy)


RSS_PROBE = """
import sys
from pathlib import Path
from pipeline.data import StreamingLoader, load_prepared
data = load_prepared(sys.argv[1])
loader = StreamingLoader(data.train, data.mean, data.std, batch_size=64, shuffle=True, workers=0)
for _ in loader:
    pass
status = Path("/proc/self/status").read_text().splitlines()
print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")))
"""  # VmHWM: this process's own peak (ru_maxrss may carry over the forking process's)


def peak_rss_of_an_epoch(prepared: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(prepared)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_streaming_memory_does_not_grow_with_the_data_set(tmp_path):
    """An epoch over 8x the images peaks at (almost) the same memory: growth below a
    quarter of the decoded difference (issue 24's bound)."""
    sizes, peaks = (300, 2400), []  # a 31 MB decoded difference: RSS noise is ~3 MB
    for per_class in sizes:
        root = write_folder(
            tmp_path / f"d{per_class}", per_class=per_class, classes=2, size=(64, 64)
        )
        out = tmp_path / f"p{per_class}"
        data = prepare_dataset("imagefolder", root, out, image_size=64, max_memory_mb=1, **SPLITS)
        assert data.streamed
        peaks.append(peak_rss_of_an_epoch(out))
    decoded_difference = (sizes[1] - sizes[0]) * 2 * 0.6 * 3 * 64 * 64
    assert peaks[1] - peaks[0] <= 0.25 * decoded_difference, (peaks, decoded_difference)


def test_a_relabelled_image_changes_the_split_fingerprint(tmp_path):
    """JST resumes only on the same data: a label change leaves every shard's size alone."""
    images = np.random.default_rng(0).integers(0, 256, (48, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(48) % 2

    def prepared(labels, name):
        splits = {
            split: SplitSource(ImageSource(arrays=images[i::3]), labels[i::3])
            for i, split in enumerate(("train", "val", "test"))
        }
        written = write_shards(splits, ShardLayout(1, 8, None, 512), tmp_path / name)
        meta = sharded_meta(
            {"dataset": "d", "classes": ["a", "b"], "input_shape": [1, 8, 8]}, written
        )
        publish(written["staging"], tmp_path / name, meta, "meta.json")
        return load_prepared(tmp_path / name).train

    relabelled = labels.copy()
    relabelled[0] = 1 - relabelled[0]
    first, second = prepared(labels, "a"), prepared(relabelled, "b")
    assert [p.stat().st_size for p in first.shards] == [p.stat().st_size for p in second.shards]
    assert first.fingerprint() != second.fingerprint()
