"""benchmarks/compare_methods.py's results store and benchmarks/comparison_report.py's
protocol (no training here)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from scipy import stats as scipy_stats

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def compare():
    return load_benchmark("compare_methods")


@pytest.fixture(scope="module")
def significance():
    return load_benchmark("significance")


def record(variant, budget, seed, test, val=None, arch="resnet20", search=12, finetune=6):
    return {
        "arch": arch,
        "variant": variant,
        "method": variant,
        "budget": budget,
        "seed": seed,
        "test_top1": test,
        "val_top1": test if val is None else val,
        "flops_ratio": budget,
        "params": 1000,
        "wall_s": 1.0,
        "train_gmacs": 10.0,
        "search_epochs": search,
        "finetune_epochs": finetune,
        "machine": {"cpu": "test CPU", "amx": False, "threads": 1, "torch": "x"},
        "commit": "abc",
    }


def test_records_of_other_models_and_schedules_are_kept_apart(compare, report, tmp_path):
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
    assert set(report.cells(store)) == {
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


def test_old_records_without_model_or_schedule_read_as_the_short_resnet20_cell(report):
    old = record("scratch", 0.3, 1, 0.5)
    for key in ("arch", "search_epochs", "finetune_epochs"):
        del old[key]
    assert report.run_key(old) == ("resnet20", "scratch", 0.3, 1, 12, 6, "fp32", "flops")


def test_the_best_baseline_is_chosen_on_validation_never_on_test(report):
    runs = (
        [record("jst", 0.3, s, 0.50) for s in range(3)]
        + [
            record("scratch", 0.3, s, test=0.60, val=0.40)
            for s in range(3)  # best on test
        ]
        + [
            record("l1", 0.3, s, test=0.45, val=0.55)
            for s in range(3)  # best on validation
        ]
    )
    rows = report.cells({"runs": runs})[("resnet20", 12, 6, "fp32", "flops")]
    name, _, seeds = report.best_baseline(rows, 0.3)
    assert (name, seeds) == ("l1", [0, 1, 2])


def test_a_baseline_run_on_fewer_seeds_is_not_the_best_on_one_lucky_seed(report):
    runs = [record("jst", 0.5, s, 0.50) for s in range(3)]
    runs += [record("l1", 0.5, s, 0.50, val=0.50) for s in range(3)]
    runs += [record("scratch", 0.5, 0, 0.50, val=0.90)]  # one seed only
    rows = report.cells({"runs": runs})[("resnet20", 12, 6, "fp32", "flops")]
    name, _, seeds = report.best_baseline(rows, 0.5)
    assert (name, seeds) == ("l1", [0, 1, 2])


def test_the_paired_t_test_matches_scipy_and_sets_the_verdict(significance):
    jst, base = [54.0, 52.1, 55.3], [51.0, 50.2, 52.9]
    d = significance.paired_difference(jst, base)
    assert d.p == pytest.approx(scipy_stats.ttest_rel(jst, base).pvalue)
    interval = scipy_stats.ttest_rel(jst, base).confidence_interval(0.95)
    assert (d.low, d.high) == pytest.approx((interval.low, interval.high))
    assert d.verdict == "win"
    assert significance.paired_difference(base, jst).verdict == "loss"
    noisy = significance.paired_difference([54.0, 50.0, 56.0], [53.0, 52.0, 54.0])
    assert noisy.verdict == "within noise"
    two = significance.paired_difference([60.0, 70.0], [50.0, 40.0])
    assert two.p is None and two.verdict.startswith("n < 3")


def test_the_summary_bolds_and_names_only_significant_differences(report):
    seeds = range(3)
    runs = (
        [record("jst", 0.5, s, t) for s, t in zip(seeds, (0.60, 0.52, 0.66), strict=True)]
        + [record("scratch", 0.5, s, t) for s, t in zip(seeds, (0.50, 0.58, 0.60), strict=True)]
        + [record("jst", 0.3, s, t) for s, t in zip(seeds, (0.60, 0.61, 0.63), strict=True)]
        + [record("scratch", 0.3, s, t) for s, t in zip(seeds, (0.50, 0.52, 0.53), strict=True)]
        + [{**record("jst", 0.3, 0, 0.1), "budget_metric": "latency"}]  # other cell: left out
    )
    header, rule, noisy, win = report.headline_table({"runs": runs})
    assert "| 0.5 |" in noisy and "| within noise |" in noisy and "**" not in noisy
    assert "| 0.3 |" in win and "**+9.67 ± 0.58**" in win and "| win |" in win
    sentence = report.verdict_sentence({"runs": runs})
    assert "JST wins (significant): ResNet-20, 12 + 6, fp32 at 0.3" in sentence
    assert "Within noise: ResNet-20, 12 + 6, fp32 at 0.5" in sentence


def test_a_cell_says_when_its_records_come_from_different_code(report):
    runs = [record("jst", 0.3, 0, 0.5), {**record("l1", 0.3, 0, 0.5), "commit": "def"}]
    rows = report.cells({"runs": runs})[("resnet20", 12, 6, "fp32", "flops")]
    assert "mixes code versions" in report.provenance(rows, {})
    same = report.cells({"runs": runs[:1]})[("resnet20", 12, 6, "fp32", "flops")]
    assert "mixes" not in report.provenance(same, {}) and "abc" in report.provenance(same, {})


def test_the_time_table_pairs_jst_with_the_best_baseline_seed_by_seed(report):
    runs = []
    for s in range(3):
        runs.append({**record("jst", 0.5, s, 0.5), "search_s": 60.0 + s, "wall_s": 90.0})
        runs.append({**record("l1", 0.5, s, 0.5, val=0.6), "search_s": 100.0, "wall_s": 120.0})
        runs.append({**record("scratch", 0.5, s, 0.5, val=0.4), "search_s": 1.0, "wall_s": 2.0})
    rows = report.cells({"runs": runs})[("resnet20", 12, 6, "fp32", "flops")]
    lines = report.time_table(("resnet20", 12, 6, "fp32", "flops"), rows)
    assert [line.split(" | ")[1:3] for line in lines[2:5]] == [["l1", str(s)] for s in range(3)]
    assert "| 0.60 |" in lines[2] and "| 0.75 |" in lines[2]  # search 60/100, run 90/120
    assert "**0.61**" in lines[-1] and "**0.75**" in lines[-1]  # medians
