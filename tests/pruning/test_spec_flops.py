"""Architecture specs (canonical JSON, hash, validation) and FLOPs counting."""

import json

import pytest
import torch

from pipeline.errors import ArtifactError
from pipeline.models import create_model
from pipeline.pruning.flops import FlopsModel, count_flops, count_params
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.pruning.spec import ArchSpec


def test_hash_is_canonical_and_width_sensitive():
    a = ArchSpec("resnet20", (3, 32, 32), 10, {"b": 2, "a": 1})
    b = ArchSpec("resnet20", (3, 32, 32), 10, {"a": 1, "b": 2})
    assert a.sha256 == b.sha256
    assert a.sha256 != ArchSpec("resnet20", (3, 32, 32), 10, {"a": 1, "b": 3}).sha256


def test_save_load_round_trip(tmp_path):
    spec = dense_spec("resnet20", (3, 32, 32), 10)
    spec.save(tmp_path / "arch.json")
    assert ArchSpec.load(tmp_path / "arch.json") == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{",
        '{"model": "resnet20"}',
        '{"model": "resnet20", "input_shape": [3, 32], "num_classes": 10, "widths": {}}',
        '{"model": "resnet20", "input_shape": [3, 32, 32], "num_classes": 10, "widths": {"a": -1}}',
    ],
)
def test_corrupt_specs_are_refused_clearly(tmp_path, text):
    path = tmp_path / "arch.json"
    path.write_text(text)
    with pytest.raises(ArtifactError, match="arch.json"):
        ArchSpec.load(path)


def test_spec_of_another_model_is_refused():
    spec = dense_spec("resnet20", (3, 32, 32), 10)
    with pytest.raises(ArtifactError, match="does not match"):
        build_model(ArchSpec("vgg16", spec.input_shape, 10, spec.widths))
    wider = dict(spec.widths, stem=999)
    with pytest.raises(ArtifactError, match="stem"):
        build_model(ArchSpec("resnet20", spec.input_shape, 10, wider))


def test_reference_flops():
    model = create_model("resnet56", num_classes=10, in_channels=3, input_size=32)
    assert count_flops(model, (3, 32, 32)) == pytest.approx(125.7e6, rel=0.01)
    assert count_params(model) == pytest.approx(0.856e6, rel=0.01)


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "resnet18", "resnet50"])
def test_analytic_flops_match_the_built_compact_model(name):
    size = 32
    dense = create_model(name, num_classes=10, in_channels=3, input_size=size)
    layout = dense.channel_layout()
    flops = FlopsModel(dense, layout, (3, size, size))
    generator = torch.Generator().manual_seed(0)
    widths = {
        n: int(torch.randint(1, g.width + 1, (1,), generator=generator))
        for n, g in layout.groups.items()
    }
    compact = build_model(ArchSpec(name, (3, size, size), 10, widths))
    assert flops(widths) == count_flops(compact, (3, size, size))
    json.dumps(widths)
