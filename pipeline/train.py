"""One training loop for every method: SGD + cosine schedule, resumable per epoch.

The loop is deliberately plain (in the spirit of torchvision's classification
references): methods customise it through an optional ``regularizer`` (extra loss, e.g.
network slimming's L1 on BN gammas) and an ``on_epoch`` callback (metrics, plots).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline import distributed
from pipeline.checkpoint import Checkpoint
from pipeline.config import TrainConfig
from pipeline.data import (
    Augment,
    BatchLoader,
    ImageSplit,
    PreparedData,
    ShardedSplit,
    StreamingLoader,
)
from pipeline.errors import LOSS_RISE_FACTOR, SANE_LOGIT_BOUND, PipelineError, TrainingDiverged
from pipeline.progress import console, epoch_progress

EpochCallback = Callable[[dict], None]
Regularizer = Callable[[nn.Module], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError(
            "train.device: 'cuda' was requested but no CUDA GPU is visible; "
            "set train.device: auto (or cpu)."
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.world_size() > 1:
        return torch.device("cuda", distributed.local_rank())  # one GPU per process
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels make a CPU run reproducible bit for bit. This is what
    # torch.use_deterministic_algorithms does minus setting torch._inductor's flag, whose
    # import costs seconds in every stage process; `compiled` sets that flag when needed.
    torch._C._set_deterministic_algorithms(True, warn_only=True)
    # ...and without its NaN fill of every new tensor (torch.empty & co.), a debugging aid
    # for kernels that read memory they never wrote: it changes no result of a correct
    # kernel, but cost a few % of a CPU training step (median 2.4 %, up to 12 %, 6 alternating
    # ResNet-20 epochs) and a fill kernel per allocation on a GPU.
    torch._C._set_deterministic_fill_uninitialized_memory(False)


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``, with deterministic kernels if they are switched on."""
    torch.use_deterministic_algorithms(
        torch.are_deterministic_algorithms_enabled(),
        warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    return torch.compile(model)


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU has AMX tiles, where bf16 autocast trains ResNet-20 1.8x faster
    than fp32 and 2.4x with channels_last (docs/performance.md). CPUs with AVX-512 BF16
    but no AMX keep fp32 under ``auto``: their gain was not measured."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe is not None and probe())


def _fast_device(device: torch.device) -> bool:
    """Where ``auto`` turns on bf16 and channels_last: CUDA GPUs and CPUs with AMX."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_matrix_units())


def autocast_dtype(settings: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device``, or None for plain fp32."""
    if settings.precision == "fp32" or (settings.precision == "auto" and not _fast_device(device)):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if settings.precision == "auto":
            return None
        raise PipelineError(
            "train.precision: bf16 was requested but this GPU has no bf16 support; "
            "set train.precision: auto (or fp32)."
        )
    return torch.bfloat16


def uses_channels_last(settings: TrainConfig, device: torch.device) -> bool:
    """Whether ``train.memory_format`` puts batches in channels_last on ``device``: ``auto``
    follows the precision, channels_last where training runs in bf16. fp32 training then
    runs the same contiguous kernels on every CPU, AMX or not (the shipped default)."""
    fmt = settings.memory_format
    return fmt == "channels_last" or (
        fmt == "auto" and autocast_dtype(settings, device) is not None
    )


def training_numerics(settings: TrainConfig, device: torch.device) -> dict[str, str]:
    """What ``auto`` resolved to on ``device``, for the run's record."""
    dtype = autocast_dtype(settings, device)
    return {
        "precision": "bf16" if dtype == torch.bfloat16 else "fp32",
        "memory_format": "channels_last" if uses_channels_last(settings, device) else "contiguous",
    }


def mixed_precision(settings: TrainConfig, device: torch.device):
    """The autocast context of ``train.precision`` on ``device`` (a no-op for fp32)."""
    dtype = autocast_dtype(settings, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def batch_layout(x: torch.Tensor, settings: TrainConfig) -> torch.Tensor:
    """A batch in the memory format of ``train.memory_format`` on its device."""
    if uses_channels_last(settings, x.device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def gpu_data_limit(settings: TrainConfig, device: torch.device) -> int | None:
    """Largest split (bytes) kept on ``device``; None (no limit) off the GPU."""
    return settings.gpu_data_max_mb * 2**20 if device.type == "cuda" else None


@contextlib.contextmanager
def fixed_shape_speedups(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning while the shapes stay fixed (dense training); restored afterwards,
    because JST's sub-networks change shape every iteration and would re-tune each time."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or previous
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def make_loader(
    data: PreparedData,
    settings: TrainConfig,
    seed: int,
    device,
    *,
    split: ImageSplit | None = None,
    augment: bool = True,
    rank_share: bool = True,
) -> BatchLoader | StreamingLoader:
    """Shuffled batches of ``split`` (the training split by default) at
    ``train.batch_size``, augmented as ``train.augment`` says unless ``augment`` is off.

    Every training-side loader is made here, so that batch size, augmentation and the
    GPU residency limit mean one thing; the order depends only on ``seed``. Streamed data
    give each rank of a data-parallel run its own share of every batch; ``rank_share``
    off gives every rank the same batches (BN re-estimation, candidate scoring).
    """
    a = settings.augment
    chosen = data.train if split is None else split
    augmentation = None
    if augment:
        scale = tuple(a.random_resized_crop) if a.random_resized_crop else None
        augmentation = Augment(a.crop_padding, a.hflip, scale)
    common = {
        "batch_size": settings.batch_size,
        "shuffle": True,
        "augment": augmentation,
        "seed": seed,
        "device": device,
    }
    if isinstance(chosen, ShardedSplit):
        ranks = (distributed.rank(), distributed.world_size()) if rank_share else (0, 1)
        return StreamingLoader(
            chosen,
            data.mean,
            data.std,
            **common,
            # Measuring loaders draw a few batches: decoding them here beats starting workers.
            workers=settings.workers if rank_share else 0,
            rank=ranks[0],
            world=ranks[1],
        )
    limit = gpu_data_limit(settings, torch.device(device))
    return BatchLoader(chosen, data.mean, data.std, **common, max_resident_bytes=limit)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: ImageSplit,
    data: PreparedData,
    device,
    batch_size=512,
    max_resident_bytes: int | None = None,
    workers: int = 0,
) -> dict:
    """Mean cross-entropy and top-1 accuracy (a fraction) of ``model`` on ``split``;
    a streamed split is decoded by ``workers`` processes (``train.workers``; 0: here)."""
    if isinstance(split, ShardedSplit):
        loader = StreamingLoader(
            split,
            data.mean,
            data.std,
            batch_size=batch_size,
            shuffle=False,
            device=device,
            workers=workers,
        )
    else:
        loader = BatchLoader(
            split,
            data.mean,
            data.std,
            batch_size=batch_size,
            shuffle=False,
            device=device,
            max_resident_bytes=max_resident_bytes,
        )
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in loader:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    n = len(split)
    return {"loss": loss_sum / n, "top1": correct / n}


def make_optimizer(model: nn.Module, lr: float, settings: TrainConfig) -> torch.optim.SGD:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() == 1 else decay).append(p)  # no decay on BN and biases
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups, lr=lr, momentum=settings.momentum, nesterov=settings.momentum > 0
    )


def cosine_lr(optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )


DEFAULT_LR_NAME = "search.lr / finetune.lr"  # for callers that do not say which they train at


@dataclass
class DivergenceCheck:
    """What the epochs of one training run are checked against (``check_epoch``): the
    loss its first step had, and the parameter its learning rate comes from."""

    lr_name: str = DEFAULT_LR_NAME
    start_loss: float | None = None  # set by the run's first call of train_steps


def train_one_epoch(
    model, loader, optimizer, scheduler, settings, regularizer=None, check=None
) -> dict:
    batches = Batches(iter(loader), getattr(loader, "rank_local", False))
    return train_steps(
        model, batches, len(loader), optimizer, settings, scheduler, regularizer, check
    )


def train_steps(
    model, batches, steps: int, optimizer, settings, scheduler=None, regularizer=None, check=None
) -> dict:
    """Run ``steps`` SGD steps on ``batches``; returns mean loss and accuracy.

    ``settings.precision`` and ``settings.memory_format`` apply here (no-ops on a CPU under
    ``auto``). Running sums stay on the device; on a GPU the NaN/inf check reads the loss
    back only every few steps, since each read waits for the GPU to catch up. At the end
    the steps are checked against ``check`` (a run of their own without one): see
    ``check_epoch``.
    """
    check = check or DivergenceCheck()
    if distributed.world_size() > 1:
        return _train_steps_sharded(
            model, batches, steps, optimizer, settings, scheduler, regularizer, check
        )
    model.train()
    device = next(model.parameters()).device
    check_every = 1 if device.type == "cpu" else _GPU_CHECK_EVERY
    lr = optimizer.param_groups[0]["lr"]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    logit_max = torch.zeros((), dtype=torch.float32, device=device)
    first_loss, seen, classes = None, 0, 0
    for step, (x, y) in zip(range(steps), batches, strict=False):
        x = batch_layout(x, settings)
        with mixed_precision(settings, device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
            if regularizer is not None:
                loss = loss + regularizer(model)
        nonfinite |= ~torch.isfinite(loss.detach())
        if (step + 1) % check_every == 0 and nonfinite:
            _diverged(loss, optimizer, check)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        first_loss = loss.detach() if first_loss is None else first_loss
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        logit_max = torch.maximum(logit_max, logits.detach().abs().amax().float())
        seen, classes = seen + len(y), logits.shape[1]
    if nonfinite:
        _diverged(loss, optimizer, check)
    if seen == 0:
        return {"train_loss": 0.0, "train_top1": 0.0}
    # One read back for everything the epoch summed on the device.
    total, hits, first, largest = torch.stack(
        [loss_sum, correct.double(), first_loss.double(), logit_max.double()]
    ).tolist()
    stats = {"train_loss": total / seen, "train_top1": hits / seen}
    check_epoch(check, stats["train_loss"], first, largest, classes, lr)
    return stats


_GPU_CHECK_EVERY = 25  # steps between NaN/inf checks on a GPU


def check_epoch(
    check: DivergenceCheck,
    mean_loss: float,
    first_loss: float,
    logit_max: float,
    classes: int,
    lr: float,
) -> None:
    """Raise ``TrainingDiverged`` when an epoch's logits passed ``SANE_LOGIT_BOUND``, or
    its mean loss rose above the run's start (its first step's loss) and past
    ``LOSS_RISE_FACTOR`` times chance level, ln(classes): the loss of knowing nothing."""
    if check.start_loss is None:
        check.start_loss = first_loss  # this is the run's first epoch
    chance = math.log(max(classes, 2))
    losses = f"mean loss {mean_loss:.4g} this epoch, {check.start_loss:.4g} at the start"
    if logit_max > SANE_LOGIT_BOUND:
        what = (
            f"the logits reached {logit_max:.3g} (a healthy classifier stays far below "
            f"{SANE_LOGIT_BOUND:.0e}); {losses}"
        )
    elif mean_loss > max(check.start_loss, LOSS_RISE_FACTOR * chance):
        what = (
            f"the loss rose past {LOSS_RISE_FACTOR:g}x chance level (ln({classes} classes) = "
            f"{chance:.3g}): {losses}"
        )
    else:
        return
    raise TrainingDiverged(
        f"training diverged: {what}, at learning rate {lr:.4g}; {_lower(check)}."
    )


def _lower(check: DivergenceCheck) -> str:
    return f"lower the learning rate ({check.lr_name}) or raise train.batch_size"


def _train_steps_sharded(
    model, batches, steps: int, optimizer, settings, scheduler, regularizer, check
) -> dict:
    """``train_steps`` over several processes: each rank takes its slice of every global
    batch; BN statistics, loss and gradients are those of the global batch
    (``pipeline.distributed``), so every rank takes the same step and the same decision."""
    model.train()
    device = next(model.parameters()).device
    world = distributed.world_size()
    check_every = 1 if device.type == "cpu" else _GPU_CHECK_EVERY
    lr = optimizer.param_groups[0]["lr"]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss x n, correct, seen
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    logit_max = torch.zeros((), dtype=torch.float64, device=device)  # this rank's
    first_loss, classes = None, 0
    rank_local = getattr(batches, "rank_local", False)
    with distributed.global_batch_norm(model):
        for step, (x, y) in zip(range(steps), batches, strict=False):
            if rank_local:  # equal shares of the global batch (StreamingLoader)
                count = len(y) * world
            else:
                count = len(y)
                x, y = distributed.shard(x), distributed.shard(y)
            x = batch_layout(x, settings)
            with mixed_precision(settings, device):
                logits = model(x)
                loss = distributed.sharded_loss(logits, y, count, settings.label_smoothing)
                if regularizer is not None:
                    loss = loss + regularizer(model) / world
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            local = torch.stack([loss.detach().double(), (logits.argmax(1) == y).sum().double()])
            global_loss, correct = distributed.sum_gradients_and(model, local)
            nonfinite |= ~torch.isfinite(global_loss)
            if (step + 1) % check_every == 0 and nonfinite:
                _diverged(global_loss, optimizer, check)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            first_loss = global_loss if first_loss is None else first_loss
            totals += torch.stack([global_loss * count, correct, totals.new_tensor(count)])
            logit_max = torch.maximum(logit_max, logits.detach().abs().amax().double())
            classes = logits.shape[1]
    if nonfinite:
        _diverged(global_loss, optimizer, check)
    loss_sum, correct, seen = totals.tolist()
    if seen == 0:
        return {"train_loss": 0.0, "train_top1": 0.0}
    largest = distributed.all_reduce_max(logit_max).item()  # every rank decides alike
    stats = {"train_loss": loss_sum / seen, "train_top1": correct / seen}
    check_epoch(check, stats["train_loss"], first_loss.item(), largest, classes, lr)
    return stats


def _diverged(loss: torch.Tensor, optimizer, check: DivergenceCheck) -> None:
    lr = optimizer.param_groups[0]["lr"]
    raise TrainingDiverged(
        f"training diverged: the loss became {loss.item()} at learning rate {lr:.4g}; "
        f"{_lower(check)}."
    )


def diverged_at(where: str, err: TrainingDiverged, kept: str) -> TrainingDiverged:
    """``err`` with the place it happened and what was kept, for the stage's message."""
    return TrainingDiverged(f"{where}: {err} {kept}")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (inputs only).

    A freshly sliced or re-assembled network carries statistics gathered in another
    network; they no longer describe its activations, and an evaluation with them can be
    far below what the weights can do. The cumulative average over the batches replaces
    them; the model is left in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    batches = list(batches)
    if not bns or not batches:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()


def calibration_batches(
    data: PreparedData, settings: TrainConfig, seed: int, device, count: int
) -> list[torch.Tensor]:
    """``count`` un-augmented training batches for ``recalibrate_bn``, drawn with their own
    generator (the global RNG, which training draws from, is not touched)."""
    loader = make_loader(data, settings, seed * 7919 + 3, device, augment=False, rank_share=False)
    return [x for _, (x, _) in zip(range(count), loader, strict=False)]


@dataclass
class Batches:
    """An iterator of batches that says whether they are this rank's share of each global
    batch (streamed data) or the global batch itself (in-memory data: ``train_steps``
    slices it)."""

    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]]
    rank_local: bool = False

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self.iterator)


def endless(loader) -> Batches:
    """Batches across epoch boundaries (each pass reshuffles), for step-based training."""

    def passes():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    return Batches(passes(), getattr(loader, "rank_local", False))


# Streamed epochs (large data) run in chunks of this many steps and save their place in the
# epoch at the end of a chunk once this long has passed since the last save.
MID_EPOCH_CHUNK_STEPS = 50
MID_EPOCH_SAVE_S = 600.0


@dataclass
class _Place:
    """How far into an epoch a run got: batches done, and the sums of their statistics."""

    batch: int = 0
    loss_sum: float = 0.0
    top1_sum: float = 0.0


def _epoch(
    model,
    loader,
    epoch: int,
    place: _Place,
    optimizer,
    scheduler,
    settings,
    regularizer,
    check,
    save: Callable[[_Place], None],
) -> dict:
    """One epoch's steps from ``place``; a streamed epoch saves its place now and then, so
    a killed run resumes within it (``StreamingLoader.set_epoch(epoch, start_batch)``)."""
    if not isinstance(loader, StreamingLoader):
        loader.set_epoch(epoch)
        return train_one_epoch(model, loader, optimizer, scheduler, settings, regularizer, check)
    steps = len(loader)
    loader.set_epoch(epoch, place.batch)
    batches = Batches(iter(loader), loader.rank_local)
    last_save = time.monotonic()
    while place.batch < steps:
        count = min(steps - place.batch, MID_EPOCH_CHUNK_STEPS)
        stats = train_steps(
            model, batches, count, optimizer, settings, scheduler, regularizer, check
        )
        place = _Place(
            place.batch + count,
            place.loss_sum + stats["train_loss"] * count,
            place.top1_sum + stats["train_top1"] * count,
        )
        if place.batch < steps and time.monotonic() - last_save >= MID_EPOCH_SAVE_S:
            save(place)
            last_save = time.monotonic()
    return {"train_loss": place.loss_sum / steps, "train_top1": place.top1_sum / steps}


def train(
    model: nn.Module,
    data: PreparedData,
    *,
    epochs: int,
    lr: float,
    settings: TrainConfig,
    seed: int,
    device: torch.device,
    regularizer: Regularizer | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    desc: str = "train",
    lr_factor: Callable[[float], float] | None = None,
    lr_name: str = DEFAULT_LR_NAME,
    validate: bool = True,
) -> list[dict]:
    """Train ``model`` in place for ``epochs``; returns one record per epoch, with the
    validation metrics after each epoch unless ``validate`` is false (nothing reads them).

    The learning rate is ``lr`` times ``lr_factor(epochs done, fractional)``; by default
    a cosine from 1 to 0 over ``epochs``. ``lr_name`` is the parameter ``lr`` comes from,
    which a divergence error tells the user to lower.

    With ``checkpoint`` set, state is saved after every epoch (and, on streamed data,
    every ``MID_EPOCH_SAVE_S`` within one); a later call with the same ``fingerprint``
    resumes where the last save was.
    """
    model.to(device)
    loader = make_loader(data, settings, seed, device)
    # A compiled wrapper shares the parameters; state dicts and checkpoints use `model`.
    step_model = compiled(model) if settings.compile else model
    optimizer = make_optimizer(model, lr, settings)
    if lr_factor is None:
        scheduler = cosine_lr(optimizer, epochs * len(loader))
    else:
        steps = len(loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s / steps))
    history: list[dict] = []
    start, place = 0, _Place()
    check = DivergenceCheck(lr_name)
    saved = Checkpoint(checkpoint, fingerprint, desc)
    state = saved.load()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, start = state["history"], state["epoch"]
        place = _Place(**state.get("place", {}))  # within epoch start + 1 (streamed data)
        check.start_loss = state.get("start_loss")  # None in older checkpoints: set anew
        within = f", batch {place.batch}" if place.batch else ""
        console.log(f"{desc}: resuming after epoch {start}/{epochs}{within} from {checkpoint}")
    distributed.check_same((start, place.batch), f"the epoch and batch {desc} resumes at")
    limit = gpu_data_limit(settings, torch.device(device))

    def save(place: _Place) -> None:
        saved.save(
            {
                "epoch": len(history),
                "place": place.__dict__,
                "history": history,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "start_loss": check.start_loss,
            }
        )

    with fixed_shape_speedups(torch.device(device)), epoch_progress(desc, epochs, start) as advance:
        for epoch in range(start, epochs):
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
            try:
                record |= _epoch(
                    step_model,
                    loader,
                    epoch,
                    place,
                    optimizer,
                    scheduler,
                    settings,
                    regularizer,
                    check,
                    save,
                )
            except TrainingDiverged as err:
                kept = saved.kept("epoch", epoch)
                raise diverged_at(f"{desc} epoch {epoch + 1}/{epochs}", err, kept) from None
            place = _Place()
            if validate:
                val = evaluate(
                    model,
                    data.val,
                    data,
                    device,
                    max_resident_bytes=limit,
                    workers=settings.workers,
                )
                record |= {f"val_{k}": v for k, v in val.items()}
            history.append(record)
            if on_epoch is not None:
                on_epoch(record)
            save(place)
            advance(record)
    return history
