"""The formatting helpers of benchmarks/performance_report.py (the generated tables of
docs/performance.md and docs/discovery.md; test_published.py checks the documents)."""

from __future__ import annotations

import pytest

from tests.benchmarks.conftest import load_benchmark


@pytest.fixture(scope="module")
def report():
    return load_benchmark("performance_report")


def test_a_span_collapses_when_the_ends_agree_at_its_precision(report):
    assert report.span([0.82, 0.861, 0.85]) == "0.82–0.86"
    assert report.span([0.801, 0.799]) == "0.80"
    assert report.span([15, 100], "d", sep="-") == "15-100"


def test_signed_numbers_use_a_typographic_minus_and_leave_zero_unsigned(report):
    assert report.signed(0.25) == "+0.25"
    assert report.signed(-0.393) == "−0.39"
    assert report.signed(-0.001) == "0.00"
    assert report.signed(1.04, ".1f") == "+1.0"


def test_every_record_schema_names_its_machine(report):
    assert report.machine_text("x86_64") == "machine recorded as `x86_64` only"
    # compare_methods.py's older records wrote torch's thread count as "cpus"
    assert report.machine_text({"device": "x86_64", "cpus": 1, "torch": "2.15"}) == (
        "x86_64, 1 torch thread(s), torch 2.15"
    )
    text = report.machine_text(
        {"cpu": "Xeon", "logical_cpus": 2, "gpu": None, "onnxruntime": "1.31.1", "torch": "2.15"}
    )
    assert text == "Xeon, 2 CPU(s), no GPU, torch 2.15, onnxruntime 1.31.1"


def test_whole_reasons_drop_layer_names_and_count_each_reason(report):
    whole = [
        {"module": "a", "reason": "layer 'layer1.0.conv2' is a grouped convolution (groups=32)"},
        {"module": "b", "reason": "layer 'layer2.0.conv2' is a grouped convolution (groups=6)"},
        {"module": "c", "reason": "'cat' (node 'cat_1') concatenates channels"},
    ]
    assert report.whole_reasons(whole) == "grouped convolution (2); `cat` concatenates channels (1)"
    assert report.whole_reasons([]) == ""


def test_every_block_renders_from_the_committed_records(report):
    for (path, name), render in report.BLOCKS.items():
        text = render()
        assert text.strip(), (path, name)
        assert "record" in text.lower(), f"{path}:{name} names no record"
