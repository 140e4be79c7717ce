"""Tests of pipeline.tracking.values: parameters and metrics made fit for MLflow."""

from __future__ import annotations

import math

from pipeline.tracking import finite_metrics, flatten_params


def test_flatten_params_stringifies_lists_and_truncates():
    flat = flatten_params({"a": {"b": [1, "x"], "c": None}, "long": "y" * 7000})
    assert flat["a.b"] == '[1, "x"]'
    assert flat["a.c"] == "None"
    assert len(flat["long"]) == 6000


def test_finite_metrics_keeps_numbers_only():
    assert finite_metrics({"a": 1, "b": 2.5, "c": math.nan, "d": "3", "e": None}) == {
        "a": 1.0,
        "b": 2.5,
    }
