"""benchmarks/latency.py: its records, from real timings of tiny dense and compact models."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate import time_interleaved
from pipeline.pruning.flops import count_flops
from pipeline.pruning.slicing import build_model
from tests.benchmarks.conftest import load_benchmark

SHAPE = (3, 8, 8)
RECORD_KEYS = {
    "backend",
    "batch",
    "threads",
    "keep",
    "round_to",
    "flops_speedup",
    "latency_speedup",
    "latency_over_flops_speedup",
    "dense_median_ms",
    "compact_median_ms",
    "dense_p90_ms",
    "compact_p90_ms",
    "repeats",
    "dense_flops",
    "compact_flops",
    "widths",
}


@pytest.fixture(scope="module")
def measured():
    """The benchmark's own record building on a tiny ResNet-20, timed in PyTorch (an ONNX
    export per model would cost more than this test's budget; test_evaluate.py covers
    the ONNX Runtime sessions and their interleaved timing)."""
    latency = load_benchmark("latency")
    variants = latency.build_variants("resnet20", SHAPE, 3, keeps=(0.5,), round_tos=(4,))
    records = []
    for batch in (1, 2):
        x = np.random.default_rng(0).standard_normal((batch, *SHAPE), dtype=np.float32)
        runners = latency.torch_runners(variants, "cpu", x)
        timings = time_interleaved(runners, warmup=1, repeats=3)
        records += latency.records_for_cell(
            variants, timings, backend="torch-cpu", batch=batch, threads=1
        )
    return variants, records


def test_one_record_per_backend_batch_and_compact_model(measured):
    _, records = measured
    cells = [(r["backend"], r["batch"], r["threads"]) for r in records]
    assert cells == [("torch-cpu", 1, 1), ("torch-cpu", 2, 1)]
    for r in records:
        assert set(r) == RECORD_KEYS
        assert (r["keep"], r["round_to"], r["repeats"]) == (0.5, 4, 3)
        assert r["dense_median_ms"] > 0 and r["compact_median_ms"] > 0
        assert r["latency_speedup"] == pytest.approx(r["dense_median_ms"] / r["compact_median_ms"])


def test_flops_speedup_comes_from_the_built_models(measured):
    variants, records = measured
    dense, compact = variants
    # Rebuild the compact network from its spec alone and count its FLOPs independently.
    dense_flops = count_flops(build_model(dense.spec), SHAPE)
    compact_flops = count_flops(build_model(compact.spec), SHAPE)
    assert compact_flops <= 0.5 * dense_flops
    assert all(w % 4 == 0 or w == dense.spec.widths[g] for g, w in compact.spec.widths.items())
    for r in records:
        assert (r["dense_flops"], r["compact_flops"]) == (dense_flops, compact_flops)
        assert r["flops_speedup"] == pytest.approx(dense_flops / compact_flops)
        assert r["latency_over_flops_speedup"] == pytest.approx(
            r["latency_speedup"] / r["flops_speedup"]
        )
