"""Time per epoch: a JST search vs dense training of the same network on the same data.

Both run in this process, one after the other, on the same split, with the shipped
training numerics. Wall time and this process's CPU time are recorded: on a shared
machine the CPU-time ratio is the one to read (the wall-time ratio moves with the load
of other jobs between the two phases). "Epoch" counts the
training epochs the search spends (warm-up + per-iteration epochs), i.e. ``search.epochs``;
candidate scoring, BN recalibration and gate updates are overheads inside that time.

    uv run python benchmarks/search_cost.py                       # cifar10-dev, ResNet-20
    uv run python benchmarks/search_cost.py --dataset digits --image-size 16
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml
from bench_common import benchmark_split

from pipeline.config import PipelineConfig, parse_config
from pipeline.data import PreparedData
from pipeline.methods import SearchContext, get_method
from pipeline.models import create_model
from pipeline.train import resolve_device, seed_everything, train, training_numerics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="imagefolder")
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cifar10-dev"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--epochs", type=float, default=12, help="search.epochs of the JST run")
    p.add_argument("--dense-epochs", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--jst", default="{}", help="search.jst overrides as JSON, e.g. '{\"alpha_lr\": 0}'"
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/search_cost.json"))
    args = p.parse_args()

    data = benchmark_split(args.dataset, args.data, args.image_size, 0)
    cfg = search_config(
        args.arch, args.target, args.epochs, {"device": args.device}, jst=json.loads(args.jst)
    )
    device = resolve_device(cfg.train.device)
    cpu_start = time.process_time()
    dense_epoch_s = dense_epoch_seconds(data, cfg, device, args.dense_epochs)
    dense_cpu_s = (time.process_time() - cpu_start) / args.dense_epochs
    cpu_start = time.process_time()
    jst_epoch_s = jst_epoch_seconds(data, cfg, device)
    jst_cpu_s = (time.process_time() - cpu_start) / cfg.search.epochs

    record = {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "arch": args.arch,
        "target_flops": args.target,
        "train_images": len(data.train.labels),
        "dense_epoch_s": dense_epoch_s,
        "jst_epoch_s": jst_epoch_s,
        "ratio": jst_epoch_s / dense_epoch_s,
        # CPU seconds of this process: what the work costs, whatever else the machine runs
        # (the wall-time ratio moves with the neighbours' load between the two phases).
        "dense_epoch_cpu_s": dense_cpu_s,
        "jst_epoch_cpu_s": jst_cpu_s,
        "cpu_ratio": jst_cpu_s / dense_cpu_s,
        "numerics": training_numerics(cfg.train, device),
        "search_epochs": cfg.search.epochs,
        "jst": cfg.search.jst.model_dump(),
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def shipped_jst_knobs() -> dict:
    """search.jst of params.yaml: benchmarks measure the JST that ships."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())["search"]["jst"]


def search_config(
    arch: str,
    target: float,
    epochs: float,
    train: dict,
    iterations: int | None = None,
    warmup_epochs: float | None = None,
    jst: dict | None = None,
) -> PipelineConfig:
    """A JST search of ``epochs`` training epochs with the shipped knobs (``iterations``,
    ``warmup_epochs`` and ``jst`` override theirs); ``train`` overrides the train section."""
    jst = shipped_jst_knobs() | (jst or {})
    if iterations is not None:
        jst["iterations"] = iterations
    if warmup_epochs is not None:
        jst["warmup_epochs"] = warmup_epochs
    return parse_config(
        {
            "model": {"arch": arch},
            "train": {"batch_size": 128} | train,
            "search": {
                "method": "jst",
                "target_flops": target,
                "epochs": epochs,
                "round_to": 8,
                "jst": jst,
            },
        }
    )


def dense_epoch_seconds(data: PreparedData, cfg: PipelineConfig, device, epochs: int) -> float:
    """Wall time per epoch of dense training (with its per-epoch validation)."""
    c, h, _ = data.input_shape
    seed_everything(0)
    dense = create_model(cfg.model.arch, num_classes=data.num_classes, in_channels=c, input_size=h)
    start = time.perf_counter()
    train(
        dense, data, epochs=epochs, lr=0.1, settings=cfg.train, seed=0, device=device, desc="dense"
    )
    return (time.perf_counter() - start) / epochs


def jst_epoch_seconds(data: PreparedData, cfg: PipelineConfig, device) -> float:
    """Wall time of the whole JST search (the real method) per ``search.epochs``."""
    seed_everything(0)
    start = time.perf_counter()
    get_method("jst")(SearchContext(cfg, data, device))
    return (time.perf_counter() - start) / cfg.search.epochs


if __name__ == "__main__":
    main()
