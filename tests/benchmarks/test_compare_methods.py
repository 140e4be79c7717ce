"""benchmarks/compare_methods.py: its results store and its report (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, str(BENCHMARKS))  # it imports its sibling search_cost
    try:
        spec = importlib.util.spec_from_file_location(
            "compare_methods_benchmark", BENCHMARKS / "compare_methods.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def record(variant, budget, seed, test, arch="resnet20", search=12, finetune=6):
    return {
        "arch": arch,
        "variant": variant,
        "method": variant,
        "budget": budget,
        "seed": seed,
        "test_top1": test,
        "val_top1": test,
        "flops_ratio": budget,
        "params": 1000,
        "wall_s": 1.0,
        "train_gmacs": 10.0,
        "search_epochs": search,
        "finetune_epochs": finetune,
    }


def test_records_of_other_models_and_schedules_are_kept_apart(compare, tmp_path):
    path = tmp_path / "results.json"
    args = SimpleNamespace(arch="resnet20", search_epochs=12, finetune_epochs=6)
    compare.add_record(path, record("l1", 0.5, 0, 0.50), args)
    compare.add_record(path, record("l1", 0.5, 0, 0.60, search=60, finetune=30), args)
    compare.add_record(path, record("l1", 0.5, 0, 0.40, arch="vgg16"), args)
    compare.add_record(path, {**record("l1", 0.5, 0, 0.45), "precision": "bf16"}, args)
    latency = {"precision": "bf16", "budget_metric": "latency"}
    compare.add_record(path, {**record("l1", 0.5, 0, 0.47), **latency}, args)
    compare.add_record(path, record("l1", 0.5, 0, 0.55), args)  # a rerun replaces its own
    store = compare.load_store(path)
    assert sorted(r["test_top1"] for r in store["runs"]) == [0.40, 0.45, 0.47, 0.55, 0.60]
    assert set(compare.cells(store)) == {
        ("resnet20", 12, 6, "fp32", "flops"),
        ("resnet20", 60, 30, "fp32", "flops"),
        ("vgg16", 12, 6, "fp32", "flops"),
        ("resnet20", 12, 6, "bf16", "flops"),
        ("resnet20", 12, 6, "bf16", "latency"),
    }
    assert set(store["setups"]) == {"resnet20:12+6", "resnet20:60+30", "vgg16:12+6"} | {
        "resnet20:12+6:bf16",
        "resnet20:12+6:bf16:latency",
    }


def test_old_records_without_model_or_schedule_read_as_the_short_resnet20_cell(compare):
    old = record("scratch", 0.3, 1, 0.5)
    for key in ("arch", "search_epochs", "finetune_epochs"):
        del old[key]
    assert compare.run_key(old) == ("resnet20", "scratch", 0.3, 1, 12, 6, "fp32", "flops")


def test_paired_differences_are_against_the_best_baseline_seed_by_seed(compare):
    runs = [
        record("jst", 0.3, 0, 0.52),
        record("jst", 0.3, 1, 0.50),
        record("scratch", 0.3, 0, 0.51),
        record("scratch", 0.3, 1, 0.51),
        record("l1", 0.3, 0, 0.49),
        record("l1", 0.3, 1, 0.49),
    ]
    rows = compare.cells({"runs": runs})[("resnet20", 12, 6, "fp32", "flops")]
    [_, _, line] = compare.paired_differences(rows)
    assert line.startswith("| 0.3 | scratch | seed 0: +1.00, seed 1: -1.00 |")
    assert "+0.00 ± 1.41" in line


def test_summary_pairs_jst_with_the_best_baseline_over_the_seeds_both_ran(compare):
    runs = [
        record("jst", 0.3, 0, 0.60),
        record("jst", 0.3, 1, 0.70),
        record("scratch", 0.3, 0, 0.50),
        record("scratch", 0.3, 1, 0.40),
        record("l1", 0.3, 0, 0.55),
        record("l1", 0.3, 1, 0.65),
        record("l1", 0.3, 2, 0.99),  # JST has no seed 2: not paired, not counted
        {**record("jst", 0.3, 0, 0.1), "budget_metric": "latency"},  # other cell: left out
    ]
    header, rule, *rows = compare.headline_table({"runs": runs})
    assert rows == [
        "| resnet20, 12 + 6, fp32 | 0.3 | 65.00 ± 7.07 | l1 | 60.00 ± 7.07 | +5.00 ± 0.00 "
        "| 2 | 1.00 |"
    ]
