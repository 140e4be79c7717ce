"""Shared fixtures: tiny synthetic data sets that make training tests fast."""

import pytest
import torch

from pipeline.config import parse_config
from pipeline.data import PreparedData, Split


def synthetic_data(num_classes=4, size=8, channels=1, per_class=24, seed=0) -> PreparedData:
    """Learnable images: each class lights up its own quadrant pattern, plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def split(n_per_class):
        images, labels = [], []
        for c in range(num_classes):
            base = torch.zeros(channels, size, size)
            base[
                :,
                (c % 2) * size // 2 : (c % 2 + 1) * size // 2,
                (c // 2 % 2) * size // 2 : (c // 2 % 2 + 1) * size // 2,
            ] = 200
            noise = torch.randint(0, 55, (n_per_class, channels, size, size), generator=generator)
            images.append((base + noise).clamp(0, 255).to(torch.uint8))
            labels.append(torch.full((n_per_class,), c, dtype=torch.int64))
        return Split(torch.cat(images), torch.cat(labels))

    return PreparedData(
        split(per_class),
        split(per_class // 3),
        split(per_class // 3),
        [f"c{i}" for i in range(num_classes)],
        [0.3] * channels,
        [0.3] * channels,
        dataset="synthetic",
    )


@pytest.fixture
def tiny_data() -> PreparedData:
    return synthetic_data()


def tiny_config(**sections):
    raw = {
        "train": {"batch_size": 32, "device": "cpu"},
        "search": {"epochs": 1, "lr": 0.05},
        "finetune": {"epochs": 1},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return parse_config(raw)
