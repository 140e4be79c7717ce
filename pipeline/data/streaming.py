"""Batches streamed from shards (``pipeline.data.shards``), decoded in worker processes.

``StreamingLoader`` yields what ``BatchLoader`` yields, float32 normalized images and
int64 labels on the device, for a ``ShardedSplit``. Each epoch is a plan computed from
``(seed, epoch)`` alone:

* training (``shuffle``): the shards are permuted; rank ``r`` of ``n`` takes every n-th
  (ranks read disjoint parts), its worker ``w`` of ``W`` every W-th of those; each shard's
  samples are permuted too. Every rank runs ``len(split) // batch_size`` steps (at least
  one) of ``batch_size / n`` samples; a worker whose shards hold more than its share does
  not reach the rest this epoch, one whose shards hold less starts its shards over (at
  most a shard either way, shards being of equal size but the last).
* evaluation: every sample once, shards in order, worker ``w`` reading every W-th.

Batch ``i`` of an epoch comes from worker ``i % W`` (PyTorch's DataLoader takes workers
in turn), so ``set_epoch(epoch, start_batch=k)`` resumes exactly at batch ``k``: each
worker skips the samples of its batches before ``k`` without decoding them, and the worker
whose turn batch ``k`` is starts. Random crops
draw from generators seeded by ``(seed, epoch, sample)`` in the workers and by ``(seed,
epoch, batch)`` on the device, so a resumed epoch also augments as the first run did.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from pipeline.data.loader import Augment, augment_batch, epoch_generators
from pipeline.data.prepared import normalize
from pipeline.data.shards import decode, to_tensor
from pipeline.data.transforms import fit_image, random_resized_crop
from pipeline.errors import ConfigError, DataError


@dataclass(frozen=True)
class ShardedSplit:
    """One split kept as shards on disk: their paths and sample counts, and how an image
    becomes a network input (``image_size``, ``crop_ratio``: see ``fit_image``)."""

    shards: tuple[Path, ...]
    counts: tuple[int, ...]
    channels: int
    image_size: int
    crop_ratio: float | None
    class_counts: tuple[int, ...] = field(default=())
    digests: tuple[str, ...] = field(default=())  # of each shard's inputs

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def fingerprint(self) -> bytes:
        """Changes when any shard's inputs (images, labels, layout) change."""
        names = [path.name for path in self.shards]
        return hashlib.sha256(repr((names, self.counts, self.digests)).encode()).digest()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sample once, in shard order, as uint8 images and int64 labels."""
        samples = (
            _sample(record, self, train_crop=None) for path in self.shards for record in _read(path)
        )
        while chunk := list(itertools.islice(samples, batch_size)):
            images, labels = zip(*chunk, strict=True)
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images (uint8, evaluation transform)."""
        batch = next(self.batches(count), None)
        if batch is None:
            return torch.empty(
                (0, self.channels, self.image_size, self.image_size), dtype=torch.uint8
            )
        return batch[0]


class StreamingLoader:
    """Iterate ``(x, y)`` batches of a ``ShardedSplit``: x float32 normalized, y int64, on
    ``device``; one ``iter()`` is one epoch (``set_epoch`` picks it and where it starts).

    ``rank``/``world``: this process's part of a data-parallel run (its batches are its
    ``batch_size / world`` share of each global batch); ``rank_local`` tells the trainer.
    """

    def __init__(
        self,
        split: ShardedSplit,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        batch_size: int,
        shuffle: bool,
        augment: Augment | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        workers: int = 2,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if shuffle and batch_size % world:
            raise ConfigError(
                f"train.batch_size = {batch_size} does not split evenly over {world} processes; "
                f"set a multiple of {world} (streamed data give each process an equal share)."
            )
        if shuffle and len(split.shards) < world:
            raise DataError(
                f"the split has {len(split.shards)} shard(s), fewer than the {world} processes "
                f"that would each read their own; run fewer processes, or prepare the data "
                f"in memory (raise data.max_memory_mb) if it fits."
            )
        self.split = split
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.workers = workers
        self.rank, self.world = (rank, world) if shuffle else (0, 1)
        self.rank_local = shuffle and world > 1
        self.epoch, self.start_batch = 0, 0

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration epoch ``epoch``, from its batch ``start_batch``."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ValueError(f"cannot start epoch {epoch} at batch {start_batch} of {len(self)}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        if self.shuffle:  # whole batches; a split smaller than one batch fills one
            return max(1, len(self.split) // self.batch_size)
        return sum(math.ceil(sum(counts) / self.batch_size) for counts in self._eval_counts())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        return self._batches(epoch, start)

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan = self._plan(epoch, start)
        # Random-resized crops were taken in the workers, from the full-resolution images.
        on_device = replace(self.augment, resized_crop_scale=None) if self.augment else None
        pin = self.device.type == "cuda"
        loader = DataLoader(
            _PlannedStream(self.split, plan),
            batch_size=self.batch_size // self.world if self.shuffle else self.batch_size,
            num_workers=len(plan.workers) if self.workers else 0,
            pin_memory=pin,
        )
        for batch, (images, labels) in enumerate(loader, start):
            images = images.to(self.device, non_blocking=pin)
            if on_device is not None:  # seeded per batch: a resumed epoch draws the same
                generator = torch.Generator().manual_seed(_mix(self.seed, epoch, batch))
                images = augment_batch(images, on_device, generator)
            yield normalize(images, self.mean, self.std), labels.to(self.device, non_blocking=pin)

    def _plan(self, epoch: int, start: int) -> _Plan:
        workers = max(1, self.workers)
        if not self.shuffle:
            shards = list(range(len(self.split.shards)))
            parts = [shards[w::workers] for w in range(min(workers, len(shards)))]
            return _Plan([_WorkerPlan([(s, None) for s in part]) for part in parts])
        order_generator, _ = epoch_generators(self.seed, epoch)
        order = torch.randperm(len(self.split.shards), generator=order_generator).tolist()
        mine = order[self.rank :: self.world]
        workers = min(workers, len(mine))
        local_batch = self.batch_size // self.world
        steps = len(self)
        plans = []
        for w in range(workers):
            batches = len(range(w, steps, workers))
            skipped = len(range(w, start, workers))
            shards = [(s, self._within_shard(epoch, s)) for s in mine[w::workers]]
            plans.append(_WorkerPlan(shards, batches * local_batch, skipped * local_batch))
        # DataLoader takes its first batch from worker 0: rotated, that is the worker whose
        # turn batch `start` was, and a resumed epoch yields the very same batches.
        turn = start % workers
        crop = self.augment.resized_crop_scale if self.augment else None
        return _Plan(plans[turn:] + plans[:turn], crop, (self.seed, epoch))

    def _within_shard(self, epoch: int, shard: int) -> list[int]:
        """The order of ``shard``'s samples this epoch."""
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch, shard))
        return torch.randperm(self.split.counts[shard], generator=generator).tolist()

    def _eval_counts(self) -> list[list[int]]:
        workers = max(1, self.workers)
        counts = list(self.split.counts)
        return [counts[w::workers] for w in range(min(workers, len(counts)))]


@dataclass
class _WorkerPlan:
    shards: list[tuple[int, list[int] | None]]  # shard index, sample order (None: as stored)
    take: int | None = None  # samples to yield (None: every sample of the shards, once)
    skip: int = 0  # samples to pass over first (a resumed epoch)


@dataclass
class _Plan:
    workers: list[_WorkerPlan]
    crop_scale: tuple[float, float] | None = None  # random-resized crop in the workers
    seed: tuple[int, int] = (0, 0)  # (seed, epoch) of the crops' generators


class _PlannedStream(IterableDataset):
    """The samples one worker (or the main process) yields under a ``_Plan``."""

    def __init__(self, split: ShardedSplit, plan: _Plan):
        self.split, self.plan = split, plan

    def __iter__(self):
        info = get_worker_info()  # None without worker processes: then there is one plan
        yield from self._stream(self.plan.workers[info.id if info is not None else 0])

    def _stream(self, worker: _WorkerPlan):
        records = self._records(worker)
        if worker.take is not None:
            records = itertools.islice(records, worker.take)
        for position, (shard, index, record) in enumerate(records):
            if position < worker.skip:
                continue
            generator = None
            if self.plan.crop_scale is not None:
                generator = _sample_generator(self.plan.seed, shard, index)
            yield _sample(record, self.split, self.plan.crop_scale, generator)

    def _records(self, worker: _WorkerPlan):
        """(shard, index in shard, record) in the worker's order; cycles when it must take
        more samples than its shards hold."""
        passes = itertools.count() if worker.take is not None else range(1)
        for _ in passes:
            for shard, order in worker.shards:
                records = list(_read(self.split.shards[shard]))
                for index in order if order is not None else range(len(records)):
                    yield shard, index, records[index]


def _read(path: Path) -> Iterator[dict]:
    try:
        yield from tarfile_samples([{"url": str(path)}])
    except (OSError, ValueError) as error:
        raise DataError(
            f"shard '{path}' cannot be read ({error}); rerun the prepare stage "
            f"(`dvc repro prepare`), or `dvc checkout data/prepared` to restore it."
        ) from error


def _sample(record: dict, split: ShardedSplit, train_crop, generator=None):
    data = record.get("jpg", record.get("png"))
    image = decode(data, split.channels)
    if train_crop is not None:
        image = random_resized_crop(image, split.image_size, train_crop, generator)
    else:
        image = fit_image(image, split.image_size, split.crop_ratio)
    return to_tensor(image), int(record["cls"])


def _sample_generator(seed, shard: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*seed, shard, index))


def _mix(*values: int) -> int:
    state = np.random.SeedSequence([v % 2**64 for v in values]).generate_state(1, np.uint64)
    return int(state[0])
