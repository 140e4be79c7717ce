"""What every benchmark does alike: the data split and the fine-tuning of a found network."""

from __future__ import annotations

from pipeline.data import PreparedData, load_dataset
from pipeline.train import train

# The benchmarks' split of a data set: 70 % train, 10 % validation, 20 % test, per seed.
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


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
