"""Mini-batches of one split, normalized and augmented on the device.

The whole split sits on the device as uint8, so a batch is one index operation; the
augmentation (random crop with zero padding, horizontal flip) and normalization then
run on the whole batch at once, with no Python loop over samples and no worker process.
A split larger than ``max_resident_bytes`` stays in host memory instead: each batch is
gathered there (into pinned memory when the device is a GPU), copied without blocking,
and augmented on the device exactly like a resident batch.

Randomness is reproducible: epoch ``k`` of a loader seeded with ``s`` derives its
shuffling and augmentation generators from ``(s, k)``, so epochs differ, reruns repeat,
and switching augmentation on or off leaves the batch order unchanged. Random numbers
are drawn on the CPU (they are tiny) so a run gives the same batches on CPU and GPU.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.prepared import Split, normalize
from pipeline.data.transforms import random_resized_crop_batch
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation: random crop after zero padding (CIFAR style) or a
    random-resized crop of area fraction in ``resized_crop_scale`` (ImageNet style,
    ``pipeline.data.transforms``), then a random horizontal flip."""

    crop_padding: int = 0
    hflip: bool = False
    resized_crop_scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not _is_int_at_least(self.crop_padding, 0):
            raise ConfigError(
                f"train.augment.crop_padding = {self.crop_padding!r} is invalid; set it to a "
                f"non-negative integer (0 disables the random crop)."
            )


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad N x C x H x W images with zeros by ``padding``, crop H x W at random offsets."""
    if padding == 0:
        return images
    count, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (count, 2), generator=generator).to(device)
    rows = offsets[:, :1] + torch.arange(height, device=device)  # N x H source rows
    cols = offsets[:, 1:] + torch.arange(width, device=device)  # N x W source columns
    return padded[
        torch.arange(count, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(images), generator=generator).lt(0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def augment_batch(
    images: torch.Tensor, augment: Augment, generator: torch.Generator
) -> torch.Tensor:
    """Apply ``augment`` to a uint8 batch (before normalization, so padding is black)."""
    if augment.resized_crop_scale is not None:
        images = random_resized_crop_batch(images, augment.resized_crop_scale, generator)
    images = random_crop(images, augment.crop_padding, generator)
    if augment.hflip:
        images = random_hflip(images, generator)
    return images


class BatchLoader:
    """Iterate ``(x, y)`` batches of a split: x float32 normalized, y int64, on ``device``.

    Each ``iter()`` is one epoch and advances the epoch counter; ``set_epoch(k)`` picks
    the epoch explicitly (for example when resuming).
    """

    def __init__(
        self,
        split: Split,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        batch_size: int,
        shuffle: bool,
        augment: Augment | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
        max_resident_bytes: int | None = None,
    ) -> None:
        if not _is_int_at_least(batch_size, 1):
            raise ConfigError(f"batch_size = {batch_size!r} is invalid; set a positive integer.")
        self.device = torch.device(device)
        images = split.images
        # None: always resident (a CPU loader's split is in host memory either way).
        self.resident = max_resident_bytes is None or _nbytes(images) <= max_resident_bytes
        self.images = on_device(images, self.device) if self.resident else images.cpu()
        self.labels = on_device(split.labels, self.device)  # 8 bytes a sample: always resident
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (a non-negative integer)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order_generator, augment_generator = epoch_generators(self.seed, epoch)
        order = self._order(order_generator)
        device_order = order.to(self.device)  # one copy an epoch, not one a batch
        for batch in range(len(self)):
            window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            images = self._batch_images(order[window], device_order[window])
            if self.augment is not None:
                images = augment_batch(images, self.augment, augment_generator)
            yield normalize(images, self.mean, self.std), self.labels[device_order[window]]

    def _batch_images(self, host_index: torch.Tensor, device_index: torch.Tensor) -> torch.Tensor:
        """The batch's uint8 images on the device, gathered where the split lives."""
        if self.resident:
            return self.images[device_index]
        pin = self.device.type == "cuda"  # pinned memory lets the copy run asynchronously
        shape = (len(host_index), *self.images.shape[1:])
        batch = torch.empty(shape, dtype=self.images.dtype, pin_memory=pin)
        torch.index_select(self.images, 0, host_index, out=batch)
        # The caching host allocator keeps `batch` alive until the copy has finished.
        return batch.to(self.device, non_blocking=pin)

    def _order(self, generator: torch.Generator) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.num_samples, generator=generator)
        return torch.arange(self.num_samples)


# Device copies of host tensors, so the many loaders of one split (every epoch's evaluation,
# every JST iteration) upload it once. An entry lives as long as its host tensor.
_device_copies: dict[tuple[int, torch.device], torch.Tensor] = {}


def on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``, copied once per (tensor, device); splits are read-only."""
    if tensor.device == device:
        return tensor
    key = (id(tensor), device)
    copy = _device_copies.get(key)
    if copy is None:
        copy = _device_copies[key] = tensor.to(device)
        weakref.finalize(tensor, _device_copies.pop, key, None)
    return copy


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _is_int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    """Independent CPU generators for shuffling and augmentation, derived from (seed, epoch).

    Mixing through SeedSequence (rather than seeding with seed + epoch) keeps runs with
    neighbouring seeds from replaying each other's epochs shifted by one.
    """
    states = np.random.SeedSequence([seed % 2**64, epoch]).generate_state(2, dtype=np.uint64)
    generators = []
    for state in states:
        generator = torch.Generator()
        generator.manual_seed(int(state))
        generators.append(generator)
    return generators[0], generators[1]
