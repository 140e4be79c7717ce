"""Time per epoch: a JST search vs dense training of the same network on the same data,
measured side by side: ``--repeats`` rounds in one process, each timing both, the order
alternating from round to round so that a slow spell of the machine hits both alike.

Wall time and this process's CPU time are recorded per round; the report gives the median
ratio and its range over rounds. "Epoch" counts the training epochs the search spends
(warm-up + per-iteration epochs), i.e. ``search.epochs``; candidate scoring, BN
re-estimation, gate updates and validation are inside that time, as the dense epochs
include their validation.

    uv run python benchmarks/search_cost.py                       # cifar10-dev, ResNet-20
    uv run python benchmarks/search_cost.py --dataset digits --image-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import yaml
from bench_common import (
    add_data_arguments,
    add_jst_variant_argument,
    benchmark_split,
    run_provenance,
)

from pipeline.config import PipelineConfig, parse_config
from pipeline.data import PreparedData
from pipeline.methods import SearchContext, get_method
from pipeline.models import create_model
from pipeline.train import resolve_device, seed_everything, train, training_numerics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=float, default=12, help="search.epochs of the JST run")
    p.add_argument("--dense-epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--jst", default="{}", help="search.jst overrides as JSON, e.g. '{\"alpha_lr\": 0}'"
    )
    add_jst_variant_argument(p, "another JST setting timed in the same rounds (on top of --jst)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/search_cost.json"))
    args = p.parse_args()

    provenance = run_provenance(resolve_device(args.device))  # the code as it was imported
    load_at_start = os.getloadavg()[0]
    data = benchmark_split(args.dataset, args.data, args.image_size, 0)
    train_settings = {"device": args.device, "precision": args.precision}
    cfg = search_config(
        args.arch, args.target, args.epochs, train_settings, jst=json.loads(args.jst)
    )
    device = resolve_device(cfg.train.device)
    configs = {"jst": cfg}
    for name, overrides in args.jst_variant:
        jst = json.loads(args.jst) | json.loads(overrides)
        configs[name] = search_config(args.arch, args.target, args.epochs, train_settings, jst=jst)
    phases = {"dense": lambda: dense_epoch_seconds(data, cfg, device, args.dense_epochs)}
    for name, config in configs.items():
        phases[name] = lambda config=config: jst_epoch_seconds(data, config, device)
    rounds = []
    for i in range(args.repeats):
        order = list(phases) if i % 2 == 0 else list(reversed(phases))
        timed = {}
        for phase in order:
            cpu_start = time.process_time()
            wall = phases[phase]()
            epochs = args.dense_epochs if phase == "dense" else cfg.search.epochs
            timed[phase] = {"wall_s": wall, "cpu_s": (time.process_time() - cpu_start) / epochs}
        rounds.append(
            {
                "order": order,
                **{f"{k}_epoch_s": v["wall_s"] for k, v in timed.items()},
                **{f"{k}_epoch_cpu_s": v["cpu_s"] for k, v in timed.items()},
                **ratios(timed, configs),
            }
        )
        print(json.dumps(rounds[-1]), flush=True)

    record = {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "arch": args.arch,
        "target_flops": args.target,
        "train_images": len(data.train.labels),
        "rounds": rounds,
        "ratio": statistics.median(r["ratio"] for r in rounds),
        "cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
        "numerics": training_numerics(cfg.train, device),
        "search_epochs": cfg.search.epochs,
        "dense_epochs": args.dense_epochs,
        "jst": cfg.search.jst.model_dump(),
        "variants": {
            name: {
                "overrides": json.loads(overrides),
                "ratio": statistics.median(r[f"{name}_ratio"] for r in rounds),
                "cpu_ratio": statistics.median(r[f"{name}_cpu_ratio"] for r in rounds),
            }
            for name, overrides in args.jst_variant
        },
        "device": str(device),
        # the machine's 1-minute load average: above the threads used, others competed
        "load_average": [load_at_start, os.getloadavg()[0]],
        "command": "uv run python benchmarks/search_cost.py " + shlex.join(sys.argv[1:]),
        **provenance,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("ratio", "cpu_ratio", "numerics")}, indent=2))


def ratios(timed: dict, configs: dict) -> dict:
    """Every JST configuration's wall and CPU time over dense training's: ``ratio`` and
    ``cpu_ratio`` for the shipped one, ``<name>_ratio`` and ``<name>_cpu_ratio`` for others."""
    out = {}
    for name in configs:
        prefix = "" if name == "jst" else f"{name}_"
        out[f"{prefix}ratio"] = timed[name]["wall_s"] / timed["dense"]["wall_s"]
        out[f"{prefix}cpu_ratio"] = timed[name]["cpu_s"] / timed["dense"]["cpu_s"]
    return out


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
