"""Every registered search method learns: on a small task any working method solves, its
compact model classifies held-out images far above chance, within its FLOPs budget."""

import pytest
import torch

from pipeline.methods import SearchContext, available_methods, get_method
from pipeline.pruning.flops import count_flops
from pipeline.pruning.slicing import build_model
from pipeline.train import evaluate, seed_everything
from tests.conftest import TEST_DEVICE, synthetic_data, tiny_config

TARGET_FLOPS = 0.7  # pruned without fine-tuning, the baselines keep their accuracy here

# Each class lights its own quadrant: 192 training and 64 test images. Over seeds 0-7 in
# fp32 (0-9 for the baselines) and 0-2 in bf16, every method's compact model scored
# 0.95-1.00 on the test split.
DATA = {"num_classes": 4, "per_class": 48}


@pytest.mark.parametrize("method", available_methods())
def test_compact_model_learns_far_above_chance_within_its_budget(method):
    data = synthetic_data(**DATA)
    cfg = tiny_config(
        train={"precision": "fp32"},
        search={
            "method": method,
            "target_flops": TARGET_FLOPS,
            "epochs": 6,
            "jst": {
                "iterations": 3,
                "warmup_epochs": 1,
                "candidates": 2,
                "score_batches": 1,
                "recalibrate_batches": 1,
            },
        },
        model={"arch": "resnet20"},
    )
    seed_everything(cfg.seed)
    result = get_method(method)(SearchContext(cfg, data, torch.device(TEST_DEVICE)))

    chance = 1 / data.num_classes
    held_out = evaluate(result.model, data.test, data, TEST_DEVICE)["top1"]  # no method saw it
    assert held_out >= 3 * chance, f"{method}: test top-1 {held_out:.3f}"
    ratio = count_flops(result.model, data.input_shape) / count_flops(
        build_model(result.dense_spec), data.input_shape
    )
    assert TARGET_FLOPS - 0.02 <= ratio <= TARGET_FLOPS
    assert result.summary["flops_ratio"] == pytest.approx(ratio)
