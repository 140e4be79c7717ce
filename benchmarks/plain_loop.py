"""The project's training loop against the simplest correct plain PyTorch loop, side by side.

The plain loop is the reference a training loop should not fall behind: the same network
(``pipeline.models``), the same augmentation (per image: random crop after zero padding
by ``crop_padding``, horizontal flip with probability 1/2), the same numerics
(``train.precision`` / ``train.memory_format`` as ``pipeline.train`` resolves them for the
device), the same SGD (momentum, Nesterov, weight decay on weights only) with a per-step
cosine schedule, on synthetic CIFAR-shaped data resident on the device. It does nothing
else: no divergence checks, no statistics beyond a loss sum read once an epoch, PyTorch's
default (non-deterministic) kernels and, under channels_last, the model converted too
(PyTorch's recipe; the project converts only batches).

Each round times, from a fresh network and in an order that alternates between rounds:

* ``plain``: one epoch of the plain loop;
* ``project_step``: one epoch of the project's step loop (``train_one_epoch`` ->
  ``train_steps``, with its loader ``make_loader`` and cosine schedule);
* ``project_epoch``: one whole ``train()`` epoch (set-up, the epoch, its validation).

images/s counts training images (the validation inside ``train()`` is overhead it pays).
Ratios are taken within a round and their median reported. Before the rounds, every path
runs a few untimed steps (and one evaluation), so no round pays one-time costs (cuDNN
autotuning, allocator growth) that the others skip.

    OMP_NUM_THREADS=1 uv run python benchmarks/plain_loop.py --device cpu
    uv run python benchmarks/plain_loop.py --device cuda --out /tmp/train_vs_plain_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import run_provenance
from train_throughput import synthetic_cifar

from pipeline.config import TrainConfig
from pipeline.models import create_model
from pipeline.train import (
    cosine_lr,
    endless,
    evaluate,
    fixed_shape_speedups,
    make_loader,
    make_optimizer,
    mixed_precision,
    resolve_device,
    seed_everything,
    train,
    train_one_epoch,
    train_steps,
    training_numerics,
    uses_channels_last,
)

ROOT = Path(__file__).resolve().parents[1]
LR = 0.1  # as benchmarks/search_cost.dense_epoch_seconds
# Per device: (batch, training images, rounds). CPU: minutes on a shared 2-core machine;
# CUDA: a CIFAR-10-sized training split.
DEFAULTS = {"cpu": (128, 1024, 3), "cuda": (512, 45000, 5)}
WARMUP_STEPS = 2
TARGETS = {"step_over_plain": 1.0, "epoch_over_plain": 0.95}
PATHS = ("plain", "project_step", "project_epoch")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch-size", type=int, help="default: 512 on CUDA, 128 on CPU")
    p.add_argument("--images", type=int, help="training images (default: 45000 CUDA, 1024 CPU)")
    p.add_argument("--rounds", type=int, help="default: 5 on CUDA, 3 on CPU")
    p.add_argument("--out", help="default: benchmarks/results/train_vs_plain_<device>.json")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    provenance = run_provenance(device)  # the code as it was imported, before the timing
    batch, images, rounds = DEFAULTS[device.type]
    batch, images, rounds = args.batch_size or batch, args.images or images, args.rounds or rounds
    settings = TrainConfig(
        device=device.type, batch_size=batch, augment={"crop_padding": 4, "hflip": True}
    )
    data = synthetic_cifar(images)
    load_at_start = os.getloadavg()[0]

    bench = Bench(data, settings, device, args.arch)
    bench.warm_up()
    measured = []
    for i in range(rounds):
        order = list(PATHS) if i % 2 == 0 else list(reversed(PATHS))
        seconds = {path: bench.time(path) for path in order}
        measured.append(round_record(order, seconds, images))
        print(json.dumps(measured[-1]), flush=True)

    record = {
        "device": device.type,
        "torch": torch.__version__,
        "arch": args.arch,
        "batch_size": batch,
        "train_images": images,
        "val_images": len(data.val.labels),
        "data": f"synthetic uint8 3x32x32, 10 random labels, resident on {device.type}",
        "augment": settings.augment.model_dump(),
        "numerics": training_numerics(settings, device),
        "plain_model_channels_last": uses_channels_last(settings, device),
        "deterministic": {"plain": False, "project": True},  # project: seed_everything's
        "warmup_steps": WARMUP_STEPS,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "command": command(sys.argv[1:] if argv is None else argv),
        **summarize(measured),
        "targets": TARGETS,
        "rounds": measured,
        "load_average": [load_at_start, os.getloadavg()[0]],
        **provenance,
    }
    record["meets_targets"] = {k: record[k] >= v for k, v in TARGETS.items()}
    out = Path(args.out or ROOT / f"benchmarks/results/train_vs_plain_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    keys = [*(f"{k}_images_per_s" for k in PATHS), *TARGETS, "meets_targets"]
    print(json.dumps({k: record[k] for k in keys}, indent=2))


def command(args: list[str]) -> str:
    """How this run was started, thread setting included (it decides CPU speed)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    return f"{prefix}uv run python benchmarks/plain_loop.py {' '.join(args)}".rstrip()


def round_record(order: list[str], seconds: dict[str, float], images: int) -> dict:
    rate = {path: images / s for path, s in seconds.items()}
    return {
        "order": order,
        **{f"{path}_s": seconds[path] for path in PATHS},
        **{f"{path}_images_per_s": rate[path] for path in PATHS},
        "step_over_plain": rate["project_step"] / rate["plain"],
        "epoch_over_plain": rate["project_epoch"] / rate["plain"],
    }


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds (ratios: of the per-round ratios) and each ratio's range."""
    out = {"rounds_count": len(rounds)}
    for path in PATHS:
        out[f"{path}_images_per_s"] = statistics.median(r[f"{path}_images_per_s"] for r in rounds)
    for ratio in TARGETS:
        values = [r[ratio] for r in rounds]
        out[ratio] = statistics.median(values)
        out[f"{ratio}_range"] = [min(values), max(values)]
    return out


# --- the plain loop ------------------------------------------------------------------


def crop_flip(
    padded: torch.Tensor,
    size: tuple[int, int],
    index: torch.Tensor,
    offsets: torch.Tensor,
    flips: torch.Tensor,
) -> torch.Tensor:
    """Images ``index`` of the zero-padded ``padded`` (N x C x H' x W'), each cropped to
    ``size`` (H, W) at its (row, column) ``offsets`` and mirrored where ``flips``: one
    gather, the flip folded into the column index."""
    height, width = size
    device = padded.device
    rows = offsets[:, :1] + torch.arange(height, device=device)  # B x H
    cols = offsets[:, 1:] + torch.arange(width, device=device)  # B x W
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        index[:, None, None, None],
        torch.arange(padded.shape[1], device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class PlainLoop:
    """The reference: data padded once and resident on the device, random numbers drawn
    there, the project's numerics, SGD and cosine schedule, and nothing else."""

    def __init__(self, data, settings: TrainConfig, device: torch.device, arch: str) -> None:
        c, h, w = data.input_shape
        self.arch, self.shape, self.device = arch, (c, h, w), device
        pad = settings.augment.crop_padding
        self.padding = pad
        self.padded = F.pad(data.train.images.to(device), (pad, pad, pad, pad))
        self.labels = data.train.labels.to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.settings = settings
        self.channels_last = uses_channels_last(settings, device)
        self.generator = torch.Generator(device=device).manual_seed(0)

    def fresh_model(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        c, h, _ = self.shape
        torch.manual_seed(0)
        model = create_model(self.arch, num_classes=10, in_channels=c, input_size=h)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        s = self.settings
        decay = [p for p in model.parameters() if p.dim() > 1]
        no_decay = [p for p in model.parameters() if p.dim() <= 1]  # BN and biases
        optimizer = torch.optim.SGD(
            [
                {"params": decay, "weight_decay": s.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=LR,
            momentum=s.momentum,
            nesterov=s.momentum > 0,
        )
        return model, optimizer

    def epoch(self, model, optimizer, steps: int | None = None) -> float:
        """One epoch (or its first ``steps`` steps); returns the mean training loss."""
        n, batch = len(self.labels), self.settings.batch_size
        total = -(-n // batch)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        order = torch.randperm(n, device=self.device, generator=self.generator)
        span = 2 * self.padding + 1
        loss_sum = torch.zeros((), device=self.device)
        model.train()
        for step in range(total if steps is None else min(steps, total)):
            index = order[step * batch : (step + 1) * batch]
            b = len(index)
            offsets = torch.randint(0, span, (b, 2), device=self.device, generator=self.generator)
            flips = torch.rand(b, device=self.device, generator=self.generator) < 0.5
            x = crop_flip(self.padded, self.shape[1:], index, offsets, flips)
            x = (x.float().div_(255) - self.mean).div_(self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with mixed_precision(self.settings, self.device):
                loss = F.cross_entropy(
                    model(x), self.labels[index], label_smoothing=self.settings.label_smoothing
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * b
        return loss_sum.item() / n  # the epoch's one read back


@contextlib.contextmanager
def deterministic(on: bool):
    """PyTorch's deterministic-kernel flag for a block (seed_everything turns it on)."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch._C._set_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch._C._set_deterministic_algorithms(previous, warn_only=warn_only)


# --- the three timed paths -------------------------------------------------------------


class Bench:
    def __init__(self, data, settings: TrainConfig, device: torch.device, arch: str) -> None:
        self.data, self.settings, self.device, self.arch = data, settings, device, arch
        self.plain = PlainLoop(data, settings, device, arch)

    def project_model(self) -> torch.nn.Module:
        c, h, _ = self.data.input_shape
        seed_everything(0)  # as every stage does: deterministic kernels on
        model = create_model(self.arch, num_classes=10, in_channels=c, input_size=h)
        return model.to(self.device)

    def warm_up(self) -> None:
        """A few untimed steps of each path and one evaluation, for one-time costs."""
        with deterministic(False), fixed_shape_speedups(self.device):
            self.plain.epoch(*self.plain.fresh_model(), steps=WARMUP_STEPS)
        model = self.project_model()
        optimizer = make_optimizer(model, LR, self.settings)
        loader = make_loader(self.data, self.settings, 0, self.device)
        with fixed_shape_speedups(self.device):
            train_steps(model, endless(loader), WARMUP_STEPS, optimizer, self.settings)
            evaluate(model, self.data.val, self.data, self.device)
        self._sync()

    def time(self, path: str) -> float:
        """Wall seconds of one epoch of ``path`` from a fresh network (made untimed)."""
        if path == "plain":
            model, optimizer = self.plain.fresh_model()
            with deterministic(False), fixed_shape_speedups(self.device):
                return self._timed(lambda: self.plain.epoch(model, optimizer))
        model = self.project_model()
        if path == "project_step":
            optimizer = make_optimizer(model, LR, self.settings)
            loader = make_loader(self.data, self.settings, 0, self.device)
            scheduler = cosine_lr(optimizer, len(loader))
            with fixed_shape_speedups(self.device):
                return self._timed(
                    lambda: train_one_epoch(model, loader, optimizer, scheduler, self.settings)
                )
        return self._timed(
            lambda: train(
                model,
                self.data,
                epochs=1,
                lr=LR,
                settings=self.settings,
                seed=0,
                device=self.device,
                desc="train",
            )
        )

    def _timed(self, work) -> float:
        self._sync()
        start = time.perf_counter()
        work()
        self._sync()  # CUDA runs ahead of the host: wait before reading the clock
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


if __name__ == "__main__":
    main()
