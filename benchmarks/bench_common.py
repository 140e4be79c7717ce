"""What every benchmark does alike: the data split and the fine-tuning of a found network."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data import PreparedData, load_dataset
from pipeline.hardware import processor_name
from pipeline.provenance import git_state
from pipeline.train import cpu_has_bf16_matrix_units, train

ROOT = Path(__file__).resolve().parents[1]

# The benchmarks' split of a data set: 70 % train, 10 % validation, 20 % test, per seed.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "cifar10-dev"  # read in place, never copied


def add_data_arguments(parser) -> None:
    """--data, --dataset, --image-size and --arch: what every accuracy benchmark trains on."""
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet20")


def add_jst_variant_argument(parser, role: str) -> None:
    """--jst-variant NAME JSON (repeatable): a JST setting by name, as search.jst overrides."""
    parser.add_argument(
        "--jst-variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "JSON"),
        help=f"{role}: its name and search.jst overrides as JSON, e.g.\n"
        "--jst-variant early-budget '{\"anneal_fraction\": 0.25}'",
    )


def benchmark_split(dataset: str, root: str, image_size: int | None, seed: int) -> PreparedData:
    return load_dataset(
        dataset,
        root,
        download=False,
        image_size=image_size,
        val_fraction=VAL_FRACTION,
        test_fraction=TEST_FRACTION,
        seed=seed,
    )


def finetune(model, data: PreparedData, cfg, seed: int, device, desc: str) -> list[dict]:
    """``finetune.epochs`` at ``finetune.lr`` with the run's training settings."""
    return train(
        model,
        data,
        epochs=cfg.finetune.epochs,
        lr=cfg.finetune.lr,
        settings=cfg.train,
        seed=seed,
        device=device,
        desc=desc,
    )


def run_provenance(device: torch.device) -> dict:
    """What a result record must name: the code (the commit; ``-dirty`` when the pipeline's
    code differed from it) and the machine it ran on."""
    git = git_state(ROOT)
    return {
        "commit": git["commit"][:12] + ("-dirty" if git["dirty"] else "")
        if git["commit"]
        else None,
        "machine": {
            "cpu": processor_name(),
            "amx": cpu_has_bf16_matrix_units(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
