"""The latency model of the deployment runtime, and searches budgeted by it."""

import json

import pytest
import torch

from pipeline import latency
from pipeline.errors import ConfigError
from pipeline.latency import LatencyModel, Runtime, cache_key, width_choices
from pipeline.methods import SearchContext, get_method
from pipeline.methods.base import dense_setup
from tests.conftest import synthetic_data, tiny_config

RUNTIME = Runtime(threads=1, batch=8, warmup=1, repeats=3)


def test_cache_key_changes_with_runtime_version_machine_threads_and_batch(monkeypatch):
    import onnxruntime

    base = cache_key(RUNTIME)
    assert cache_key(Runtime(threads=1, batch=8)) == base  # timing repeats are not part of it
    assert cache_key(Runtime(threads=2, batch=8)) != base
    assert cache_key(Runtime(threads=1, batch=64)) != base
    monkeypatch.setattr(latency, "processor_name", lambda: "another CPU")
    assert cache_key(RUNTIME) != base
    monkeypatch.undo()
    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    assert cache_key(RUNTIME) != base


def test_interpolation_is_exact_on_the_grid_and_linear_between():
    assert latency._interpolate([8, 16, 32], 16) == [(16, 1.0)]
    assert latency._interpolate([8, 16, 32], 24) == [(16, 0.5), (32, 0.5)]
    assert latency._interpolate([8, 16, 32], 4) == [(8, 1.0)]
    assert latency.width_grid(64, range(8, 65, 8)) == list(range(8, 65, 8))
    grid = latency.width_grid(64, range(1, 65))
    assert len(grid) == latency.GRID_POINTS and grid[0] == 1 and grid[-1] == 64


def test_layer_timings_are_measured_once_per_machine_then_read_from_the_cache(tmp_path):
    first = LatencyModelProbe(tmp_path)
    assert first.timed > 0
    cached = json.loads(next(tmp_path.glob("latency-*.json")).read_text())
    assert len(cached["layers"]) == first.timed
    assert LatencyModelProbe(tmp_path).timed == 0


class LatencyModelProbe:
    """A latency model of the tiny network, with the number of layer shapes it timed."""

    def __init__(self, cache_dir):
        cfg = tiny_config(search={"method": "scratch"})
        setup = dense_setup(SearchContext(cfg, synthetic_data(), torch.device("cpu")))
        choices = width_choices(setup.spec.widths, setup.groups, 1, 4)
        timed = []
        self.model = LatencyModel(
            setup.model,
            setup.layout,
            setup.spec.input_shape,
            choices,
            RUNTIME,
            cache_dir,
            lambda widths: 1.0 + sum(widths.values()) / 100,
            lambda done, total: timed.append(done),
        )
        self.timed = len(timed)


def test_calibration_fits_the_measured_networks_and_prediction_grows_with_width(tmp_path):
    probe = LatencyModelProbe(tmp_path)
    model = probe.model
    assert model(model.dense_widths) == pytest.approx(1.0 + sum(model.dense_widths.values()) / 100)
    assert model.ratio(model.dense_widths) == pytest.approx(1.0)
    thinner = {g: max(model.grids[g][0], w // 2) for g, w in model.dense_widths.items()}
    assert model.ratio(thinner) < 1.0


@pytest.mark.parametrize("method", ["scratch", "jst"])
def test_a_latency_budgeted_search_meets_its_budget_on_the_prediction(
    tmp_path, monkeypatch, method
):
    monkeypatch.setenv("JST_CACHE_DIR", str(tmp_path))
    cfg = tiny_config(
        search={
            "method": method,
            "epochs": 3,
            "target_latency": 0.7,
            "latency_batch": 8,
            "round_to": 4,
            "jst": {"iterations": 2, "warmup_epochs": 1},
        },
        evaluate={"threads": 1},
    )
    result = get_method(method)(SearchContext(cfg, synthetic_data(), torch.device("cpu")))
    summary = result.summary
    assert summary["predicted_latency_ratio"] <= 0.7 + 1e-9
    assert summary["dense_latency_ms"] > summary["predicted_latency_ms"] > 0
    assert list(tmp_path.glob("latency-*.json"))  # the layer timings were cached


def test_a_cuda_runtime_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA latency model is measured on it")
    cfg = tiny_config(
        search={"method": "scratch", "target_latency": 0.5}, evaluate={"device": "cuda"}
    )
    ctx = SearchContext(cfg, synthetic_data(), torch.device("cpu"))
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        dense_setup(ctx)


class _Concatenating(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.b = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "structure"),
    [
        (_Concatenating(), "concatenations"),
        (
            torch.nn.Sequential(
                torch.nn.Conv2d(3, 8, 3, padding=1),
                torch.nn.BatchNorm2d(8),
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(8 * 8 * 8, 4),
            ),
            "feature maps flattened",
        ),
    ],
)
def test_structures_the_latency_model_lacks_are_refused_before_measuring(model, structure):
    from pipeline.pruning.discovery import discover_layout

    layout = discover_layout(model, (3, 8, 8))
    with pytest.raises(ConfigError, match=f"does not cover {structure}"):
        latency.check_latency_modelled(layout)
