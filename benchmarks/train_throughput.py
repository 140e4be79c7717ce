"""Training throughput: images/s of dense training and of a JST search, 32x32 inputs.

Data: random uint8 images shaped like CIFAR-10 (3 x 32 x 32, 10 classes, random labels),
so no data set is needed and the numbers depend only on the network, the batch and the
machine. Augmentation is CIFAR's (random crop with padding 4, horizontal flip) and runs
on the device through the pipeline's own loader.

* dense: ``--steps`` SGD steps of the dense network through ``train_steps`` (the loop every
  phase uses) after ``--warmup-steps``; images/s = steps x batch / time.
* epochs: the real dense ``train()`` and the real JST search (``benchmarks/search_cost.py``)
  on the same data; JST images/s = search.epochs x training images / search wall time, so
  "JST epoch time <= dense epoch time" is ``jst.images_per_s >= dense_epoch.images_per_s``.
  The search time includes setup, candidate scoring, BN re-estimation and gate updates.

    uv run --frozen python benchmarks/train_throughput.py --device cpu   # batch 128, small windows
    uv run --frozen python benchmarks/train_throughput.py --device cpu --arch resnet20 \
        --skip-jst --dense-epochs 1 --steps 10 --versus-fp32 3 --out ...  # auto vs fp32
    uv run --frozen python benchmarks/train_throughput.py --device cuda  # batch 512, CIFAR-sized
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from search_cost import dense_epoch_seconds, jst_epoch_seconds, search_config

from pipeline.data import PreparedData, Split
from pipeline.hardware import processor_name
from pipeline.models import create_model
from pipeline.train import (
    autocast_dtype,
    endless,
    fixed_shape_speedups,
    make_loader,
    make_optimizer,
    resolve_device,
    seed_everything,
    train_steps,
    training_numerics,
    uses_channels_last,
)

ROOT = Path(__file__).resolve().parents[1]
# Per device: (batch, train images, timed steps, warm-up steps, JST iterations, dense epochs).
# The CPU windows are small so the run ends in minutes on a shared 2-core machine.
DEFAULTS = {"cpu": (128, 1024, 3, 1, 1, 1), "cuda": (512, 45000, 50, 10, 4, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--batch-size", type=int, help="default: 512 on CUDA, 128 on CPU")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"]
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the dense network")
    p.add_argument("--images", type=int, help="synthetic training images (default per device)")
    p.add_argument("--steps", type=int, help="timed dense steps")
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--jst-iterations", type=int, help="JST iterations, one epoch each")
    p.add_argument("--dense-epochs", type=int)
    p.add_argument("--target", type=float, default=0.5, help="JST target_flops")
    p.add_argument("--skip-jst", action="store_true")
    p.add_argument(
        "--versus-fp32",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time fp32 + contiguous steps against the chosen settings, interleaved\n"
        "for ROUNDS rounds (the ratio is robust to a shared machine's drift)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/train_throughput.json"))
    args = p.parse_args()

    device = resolve_device(args.device)
    batch, images, steps, warmup, iterations, dense_epochs = DEFAULTS[device.type]
    batch, images, steps = args.batch_size or batch, args.images or images, args.steps or steps
    warmup = warmup if args.warmup_steps is None else args.warmup_steps
    iterations = args.jst_iterations or iterations
    dense_epochs = args.dense_epochs or dense_epochs
    train_settings = {
        "device": device.type,
        "batch_size": batch,
        "precision": args.precision,
        "memory_format": args.memory_format,
        "compile": args.compile,
        "augment": {"crop_padding": 4, "hflip": True},
    }
    cfg = search_config(
        args.arch, args.target, iterations, train_settings, iterations, warmup_epochs=0
    )
    data = synthetic_cifar(images)

    record = {
        "data": f"synthetic uint8 3x32x32, 10 random labels, {images} train images",
        "arch": args.arch,
        "batch_size": batch,
        "device": str(device),
        "autocast_dtype": str(autocast_dtype(cfg.train, device) or torch.float32),
        "channels_last": uses_channels_last(cfg.train, device),
        "numerics": training_numerics(cfg.train, device),
        "compile": args.compile,
        "machine": machine(device),
    }
    record["dense_steps"] = dense_step_throughput(data, cfg, device, steps, warmup)
    if args.versus_fp32:
        record["versus_fp32"] = versus_fp32(data, cfg, device, steps, warmup, args.versus_fp32)
    dense_epoch_s = dense_epoch_seconds(data, cfg, device, dense_epochs)
    record["dense_epoch"] = epoch_record(dense_epoch_s, images, dense_epochs)
    if not args.skip_jst:
        jst_epoch_s = jst_epoch_seconds(data, cfg, device)
        record["jst"] = epoch_record(jst_epoch_s, images, iterations) | {
            "iterations": iterations,
            "target_flops": args.target,
            "warmup_epochs": 0,
        }
        record["jst_over_dense_epoch_time"] = jst_epoch_s / dense_epoch_s

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def synthetic_cifar(count: int) -> PreparedData:
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return Split(images, torch.randint(0, 10, (n,), generator=generator))

    evaluation = max(64, count // 10)
    mean, std = [0.5] * 3, [0.29] * 3  # uniform bytes: mean 0.5, std about 0.29
    return PreparedData(
        split(count), split(evaluation), split(evaluation), [str(c) for c in range(10)], mean, std
    )


def dense_step_throughput(data, cfg, device, steps: int, warmup: int) -> dict:
    """Images/s of ``steps`` dense SGD steps (loader, augmentation, forward, backward)."""
    c, h, _ = data.input_shape
    seed_everything(0)
    model = create_model(cfg.model.arch, num_classes=10, in_channels=c, input_size=h).to(device)
    step_model = torch.compile(model) if cfg.train.compile else model
    optimizer = make_optimizer(model, 0.05, cfg.train)
    batches = endless(make_loader(data, cfg.train, 0, device))
    with fixed_shape_speedups(device):
        train_steps(step_model, batches, warmup, optimizer, cfg.train)  # ends in a sync
        start = time.perf_counter()
        train_steps(step_model, batches, steps, optimizer, cfg.train)
        seconds = time.perf_counter() - start
    return {
        "images_per_s": steps * cfg.train.batch_size / seconds,
        "steps": steps,
        "warmup_steps": warmup,
        "seconds": seconds,
    }


def versus_fp32(data, cfg, device, steps: int, warmup: int, rounds: int) -> dict:
    """Dense step throughput of ``cfg.train`` and of plain fp32 + contiguous, measured in
    alternation; the speed-up is the ratio of their medians."""
    plain = cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"precision": "fp32", "memory_format": "contiguous"}
            )
        }
    )
    chosen, fp32 = [], []
    for _ in range(rounds):
        chosen.append(dense_step_throughput(data, cfg, device, steps, warmup)["images_per_s"])
        fp32.append(dense_step_throughput(data, plain, device, steps, warmup)["images_per_s"])
    return {
        "rounds": rounds,
        "numerics": training_numerics(cfg.train, device),
        "images_per_s": statistics.median(chosen),
        "fp32_images_per_s": statistics.median(fp32),
        "speedup": statistics.median(chosen) / statistics.median(fp32),
    }


def epoch_record(epoch_s: float, images: int, epochs: int) -> dict:
    return {"epoch_s": epoch_s, "epochs": epochs, "images_per_s": images / epoch_s}


def machine(device: torch.device) -> dict:
    info = {
        "cpu": processor_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


if __name__ == "__main__":
    main()
