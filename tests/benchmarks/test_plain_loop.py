"""The pure parts of benchmarks/plain_loop.py: its one-gather augmentation and its summary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def plain():
    return load_benchmark("plain_loop")


def test_crop_flip_equals_slicing_each_padded_image_and_mirroring_it(plain):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 5, 7), dtype=torch.uint8, generator=g)
    pad = 2
    padded = F.pad(images, (pad, pad, pad, pad))
    index = torch.tensor([4, 0, 5, 5, 2])
    offsets = torch.randint(0, 2 * pad + 1, (5, 2), generator=g)
    offsets[0] = torch.tensor([0, 2 * pad])  # both extremes of the range
    flips = torch.tensor([True, False, True, False, True])

    got = plain.crop_flip(padded, (5, 7), index, offsets, flips)

    for k, (i, (dy, dx), flip) in enumerate(zip(index, offsets.tolist(), flips, strict=True)):
        want = padded[i, :, dy : dy + 5, dx : dx + 7]
        assert torch.equal(got[k], want.flip(-1) if flip else want)


def test_ratios_are_per_round_and_summarized_by_their_median_and_range(plain):
    rounds = [
        plain.round_record(
            list(plain.PATHS), {"plain": 1.0, "project_step": 2.0, "project_epoch": 4.0}, 100
        ),
        plain.round_record(
            list(plain.PATHS), {"plain": 2.0, "project_step": 2.0, "project_epoch": 2.5}, 100
        ),
        plain.round_record(
            list(plain.PATHS), {"plain": 1.0, "project_step": 1.0, "project_epoch": 1.0}, 100
        ),
    ]
    assert rounds[0]["plain_images_per_s"] == 100
    assert rounds[0]["step_over_plain"] == 0.5
    summary = plain.summarize(rounds)
    assert summary["rounds_count"] == 3
    assert summary["plain_images_per_s"] == 100
    assert summary["step_over_plain"] == 1.0
    assert summary["step_over_plain_range"] == [0.5, 1.0]
    assert summary["epoch_over_plain"] == 0.8
    assert summary["epoch_over_plain_range"] == [0.25, 1.0]
