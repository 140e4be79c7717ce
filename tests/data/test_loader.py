"""BatchLoader and batch augmentation: coverage, determinism, crop and flip."""

import gc

import pytest
import torch

from pipeline.data import Augment, BatchLoader, Split, augment_batch, normalize
from pipeline.data.loader import _device_copies, on_device, random_crop, random_hflip
from pipeline.errors import ConfigError

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def numbered_split(count: int, size: int = 6) -> Split:
    """Image i holds the value i (+ channel) everywhere, so batches reveal sample ids."""
    ids = torch.arange(count, dtype=torch.uint8).view(-1, 1, 1, 1)
    images = (ids + torch.arange(3, dtype=torch.uint8).view(1, 3, 1, 1)).expand(-1, 3, size, size)
    return Split(images.contiguous(), torch.arange(count, dtype=torch.int64))


def textured_batch(count: int = 16, size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)


def collect(loader: BatchLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_have_the_right_shapes_and_normalization():
    split = numbered_split(10)
    loader = BatchLoader(split, MEAN, STD, batch_size=4, shuffle=False)
    batches = collect(loader)
    assert len(loader) == len(batches) == 3
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (4, 3, 6, 6)
    torch.testing.assert_close(x, normalize(split.images[:4], MEAN, STD))
    assert y.tolist() == [0, 1, 2, 3]


def test_every_sample_appears_exactly_once_per_epoch():
    loader = BatchLoader(numbered_split(23), MEAN, STD, batch_size=5, shuffle=True, seed=1)
    for _ in range(2):
        labels = torch.cat([y for _, y in loader])
        assert sorted(labels.tolist()) == list(range(23))


def test_drop_last_skips_the_partial_batch():
    loader = BatchLoader(numbered_split(23), MEAN, STD, batch_size=5, shuffle=True, drop_last=True)
    assert len(loader) == 4
    assert [len(y) for _, y in loader] == [5] * 4


def test_order_is_reproducible_per_seed_and_changes_across_epochs():
    def epoch_orders(seed: int) -> list[list[int]]:
        loader = BatchLoader(numbered_split(40), MEAN, STD, batch_size=8, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]).tolist() for _ in range(2)]

    first, again, other = epoch_orders(0), epoch_orders(0), epoch_orders(1)
    assert first == again
    assert first[0] != first[1]
    assert first[0] != other[0]


def test_set_epoch_replays_an_epoch():
    loader = BatchLoader(
        numbered_split(30), MEAN, STD, batch_size=7, shuffle=True, augment=Augment(2, True)
    )
    epochs = [collect(loader) for _ in range(3)]
    loader.set_epoch(1)
    replay = collect(loader)
    for (x, y), (x_replay, y_replay) in zip(epochs[1], replay, strict=True):
        assert torch.equal(x, x_replay) and torch.equal(y, y_replay)


def test_augmentation_leaves_the_order_and_labels_alone():
    split = numbered_split(20)
    plain = BatchLoader(split, MEAN, STD, batch_size=6, shuffle=True, seed=4)
    augmented = BatchLoader(
        split, MEAN, STD, batch_size=6, shuffle=True, seed=4, augment=Augment(3, True)
    )
    for (_, y_plain), (x_aug, y_aug) in zip(plain, augmented, strict=True):
        assert torch.equal(y_plain, y_aug)
        pixels = x_aug * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        red = (pixels[:, 0] * 255).round()
        for image, label in zip(red, y_aug, strict=True):
            values = set(image.unique().tolist()) - {0.0}  # padding is black
            assert values <= {float(label)}


def test_crop_without_padding_is_identity():
    images = textured_batch()
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(images, Augment(0, False), generator), images)


def test_crop_shifts_each_image_within_the_padding():
    images, padding = textured_batch(), 2
    cropped = random_crop(images, padding, torch.Generator().manual_seed(1))
    assert cropped.shape == images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = []
    for source, result in zip(padded, cropped, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(source[:, dy : dy + 8, dx : dx + 8], result)
        ]
        assert matches, "crop is not a window of the zero-padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1  # offsets are drawn per sample
    assert any(offset != (padding, padding) for offset in offsets)


def test_hflip_mirrors_some_images_and_keeps_the_others():
    images = textured_batch(count=32)
    flipped = random_hflip(images, torch.Generator().manual_seed(2))
    mirrored = [torch.equal(out, img.flip(-1)) for out, img in zip(flipped, images, strict=True)]
    kept = [torch.equal(out, img) for out, img in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)


def test_invalid_settings_are_rejected():
    with pytest.raises(ConfigError, match="crop_padding"):
        Augment(crop_padding=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLoader(numbered_split(4), MEAN, STD, batch_size=0, shuffle=False)


# ------------------------------------------------------- resident vs streamed batches


def test_streamed_batches_equal_resident_batches():
    """A split too large for the device streams from host memory, batch by batch; the
    batches (order, crops, flips) are exactly those of the resident split, same seed."""
    split = Split(textured_batch(count=45, size=8), torch.arange(45, dtype=torch.int64) % 7)
    settings = dict(batch_size=8, shuffle=True, augment=Augment(2, True), seed=3)
    resident = BatchLoader(split, MEAN, STD, **settings)
    streamed = BatchLoader(split, MEAN, STD, **settings, max_resident_bytes=0)
    assert resident.resident and not streamed.resident
    for _ in range(2):  # epochs draw fresh crops and flips
        pairs = list(zip(collect(resident), collect(streamed), strict=True))
        assert len(pairs) == 6
        for (x, y), (x_streamed, y_streamed) in pairs:
            assert torch.equal(x, x_streamed) and torch.equal(y, y_streamed)


def test_resident_limit_is_in_bytes_of_the_uint8_split():
    split = numbered_split(10, size=4)  # 10 x 3 x 4 x 4 bytes
    nbytes = split.images.numel()
    at_limit = BatchLoader(split, MEAN, STD, batch_size=4, shuffle=False, max_resident_bytes=nbytes)
    over = BatchLoader(split, MEAN, STD, batch_size=4, shuffle=False, max_resident_bytes=nbytes - 1)
    assert at_limit.resident and not over.resident


def test_augmentation_draws_only_from_its_cpu_generator():
    """Crops and flips come from the loader's CPU generator alone (never a device's or the
    global generator), which is what makes GPU batches equal CPU batches."""
    images = textured_batch(count=12)
    global_state = torch.get_rng_state()
    first = augment_batch(images, Augment(3, True), torch.Generator().manual_seed(5))
    torch.manual_seed(123)  # a different global state must not matter
    again = augment_batch(images, Augment(3, True), torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    torch.set_rng_state(global_state)


def test_device_copies_are_made_once_and_dropped_with_their_tensor():
    tensor = torch.arange(6)
    meta = torch.device("meta")  # a real device transfer target that needs no GPU
    copy = on_device(tensor, meta)
    assert copy.device == meta and on_device(tensor, meta) is copy
    assert on_device(tensor, torch.device("cpu")) is tensor
    key = (id(tensor), meta)
    assert key in _device_copies
    del tensor, copy
    gc.collect()
    assert key not in _device_copies
