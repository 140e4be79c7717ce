"""benchmarks/teacher_probe.py: it measures the target beside the search and leaves the
search as it was."""

from __future__ import annotations

import json

import torch

from pipeline.methods import SearchContext
from pipeline.methods.jst.search import JointSearch
from pipeline.train import seed_everything
from tests.benchmarks.conftest import load_benchmark

ARGS = ["--dataset", "digits", "--image-size", "8", "--search-epochs", "4", "--device", "cpu"]


def test_probe_measures_the_target_and_leaves_the_search_unchanged(tmp_path):
    probe = load_benchmark("teacher_probe")
    out = tmp_path / "probe.json"
    probe.main([*ARGS, "--seeds", "0", "--out", str(out)])
    (record,) = json.loads(out.read_text())["runs"]
    assert record["command"].startswith("uv run python benchmarks/teacher_probe.py --dataset")
    iterations = record["iterations"]
    assert all(0 <= i["target_val_top1"] <= 1 for i in iterations)
    assert iterations[-1]["val_top1"] is not None  # the last iteration meets the final budget

    args = probe.parse_args([*ARGS, "--seeds", "0"])
    data = probe.benchmark_split(args.dataset, args.data, args.image_size, 0)
    seed_everything(0)
    cfg = probe.config_for(args, "jst", args.budget, 0, {})
    plain = JointSearch(SearchContext(cfg, data, torch.device("cpu"))).run()
    for key in ("arch_sha256", "val_top1"):
        assert [h.get(key) for h in plain.history] == [i[key] for i in iterations], key
