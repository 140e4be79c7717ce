"""Compact models round-trip through spec + safetensors; mismatches are refused."""

import json

import pytest
import torch
from safetensors.torch import save_file

from pipeline.artifacts import load_compact, save_compact
from pipeline.errors import ArtifactError
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.pruning.spec import ArchSpec


def _compact():
    spec = dense_spec("resnet20", (1, 8, 8), 4)
    widths = {g: max(1, w // 2) for g, w in spec.widths.items()}
    spec = ArchSpec(spec.model, spec.input_shape, spec.num_classes, widths)
    torch.manual_seed(0)
    return spec, build_model(spec).eval()


def test_round_trip(tmp_path):
    spec, model = _compact()
    save_compact(tmp_path / "m", spec, model)
    loaded_spec, loaded = load_compact(tmp_path / "m")
    assert loaded_spec.sha256 == spec.sha256
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


def test_weights_of_another_architecture_are_refused(tmp_path):
    spec, model = _compact()
    save_compact(tmp_path / "m", spec, model)
    other = dict(spec.widths, stem=spec.widths["stem"] + 1)
    (tmp_path / "m" / "arch.json").write_text(
        json.dumps(ArchSpec(spec.model, spec.input_shape, spec.num_classes, other).to_dict())
    )
    with pytest.raises(ArtifactError, match="does not match"):
        load_compact(tmp_path / "m")


@pytest.mark.parametrize("content", [b"", b"not safetensors at all", b"\x00" * 64])
def test_corrupt_weights_are_refused(tmp_path, content):
    spec, model = _compact()
    save_compact(tmp_path / "m", spec, model)
    (tmp_path / "m" / "weights.safetensors").write_bytes(content)
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        load_compact(tmp_path / "m")


def test_missing_tensor_is_refused(tmp_path):
    spec, model = _compact()
    save_compact(tmp_path / "m", spec, model)
    state = {k: v for k, v in model.state_dict().items() if k != "fc.weight"}
    save_file(state, tmp_path / "m" / "weights.safetensors")
    with pytest.raises(ArtifactError, match="fc.weight"):
        load_compact(tmp_path / "m")


def test_failed_save_keeps_the_old_model(tmp_path):
    spec, model = _compact()
    save_compact(tmp_path / "m", spec, model)
    before = (tmp_path / "m" / "weights.safetensors").read_bytes()

    class Broken(torch.nn.Module):
        def state_dict(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_compact(tmp_path / "m", spec, Broken())
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_modules_that_need_their_state_dict_version_load_from_safetensors(tmp_path):
    """safetensors stores no ``_metadata``; torchvision's MNASNet refuses a state without its
    version ("version should be set to 1 or 2 instead of None"): load_compact restores every
    module's version from the rebuilt model."""
    dense = dense_spec("mnasnet0_5", (3, 32, 32), 5)
    widths = {g: max(1, w // 2) for g, w in dense.widths.items()}
    spec = ArchSpec(dense.model, dense.input_shape, dense.num_classes, widths)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    save_compact(tmp_path / "m", spec, model)
    loaded_spec, loaded = load_compact(tmp_path / "m")
    assert loaded_spec.sha256 == spec.sha256
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)


SCALED_MODULE = '''
import torch
from torch import nn


class Scaled(nn.Module):
    """A conv net whose input scale is a non-persistent buffer: not in its state_dict."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.register_buffer("scale", torch.full((1,), 0.5), persistent=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes),
        )

    def forward(self, x):
        return self.body(x * self.scale)


def scaled(num_classes, in_channels):
    return Scaled(num_classes, in_channels)
'''


def test_a_buffer_outside_the_state_dict_keeps_its_value_after_loading(tmp_path, monkeypatch):
    """Compact models are built uninitialised for loading; a non-persistent buffer is not
    loaded, so such a model is built initialised."""
    (tmp_path / "scaled_models.py").write_text(SCALED_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = dense_spec("scaled_models:scaled", (1, 8, 8), 3)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    save_compact(tmp_path / "m", spec, model)
    _, loaded = load_compact(tmp_path / "m")
    assert torch.equal(loaded.scale, torch.full((1,), 0.5))
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
