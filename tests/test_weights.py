"""model.weights: the search starts from a trained dense model, loaded strictly and never
unpickled; every bad file is refused with a message naming it and the fix."""

import re

import pytest
import torch
from safetensors.torch import save_file

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.methods.base import SearchContext, dense_setup
from pipeline.models import create_model
from pipeline.models.weights import check_weights_source, load_weights, weights_file
from stages.common import resolve_names
from tests.conftest import synthetic_data, tiny_config

DATA = {"num_classes": 4, "size": 8, "channels": 1, "per_class": 3}


def trained_resnet20(num_classes=4):
    torch.manual_seed(1)
    model = create_model("resnet20", num_classes=num_classes, in_channels=1, input_size=8)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()  # far from a fresh initialisation
    return model


def save(model, path):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def dense_from(path):
    cfg = tiny_config(model={"weights": str(path)}, search={"method": "l1"})
    return dense_setup(SearchContext(cfg, synthetic_data(**DATA), torch.device("cpu"))).model


def test_the_dense_setup_starts_from_the_saved_weights(tmp_path):
    trained = trained_resnet20()
    dense = dense_from(save(trained, tmp_path / "dense.safetensors"))
    expected = trained.state_dict()
    assert dense.state_dict().keys() == expected.keys()
    for name, tensor in dense.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_a_file_of_another_model_names_the_first_mismatching_tensor(tmp_path):
    path = save(trained_resnet20(num_classes=5), tmp_path / "dense.safetensors")
    with pytest.raises(ConfigError) as caught:
        dense_from(path)
    message = str(caught.value)
    assert message.startswith(f"model.weights: {path} does not fit model 'resnet20'")
    assert "for 1x8x8 images and 4 classes (2 mismatched tensor(s)" in message
    assert "first fc.weight: expected shape [4, 64], found [5, 64]" in message
    assert "safetensors.torch.save_file" in message


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda state: state.pop("fc.bias"), "first fc.bias: missing (expected shape [4])"),
        (
            lambda state: state.update(extra=torch.zeros(1)),
            "first extra: not a tensor of the model",
        ),
    ],
)
def test_missing_and_unexpected_tensors_are_refused(tmp_path, change, problem):
    state = dict(trained_resnet20().state_dict())
    change(state)
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_weights(
            create_model("resnet20", num_classes=4, in_channels=1, input_size=8), str(path), "it"
        )


def test_a_torch_save_file_is_refused_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "dense.safetensors"
    torch.save(trained_resnet20().state_dict(), path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(ConfigError, match="looks like a pickle or torch.save file; it was not"):
        check_weights_source(str(path))


@pytest.mark.parametrize("name", ["dense.pt", "dense.pth", "folder/"])
def test_params_refuse_weights_that_are_no_safetensors_file(name):
    with pytest.raises(ConfigError, match="model.weights: must be a .safetensors file"):
        parse_config({"model": {"weights": name}})


def test_a_missing_file_is_reported_by_the_first_stage(tmp_path):
    cfg = parse_config({"model": {"weights": str(tmp_path / "nowhere.safetensors")}})
    with pytest.raises(ConfigError, match=r"model.weights: .*nowhere.safetensors not found"):
        resolve_names(cfg)


def test_torchvision_weights_come_from_the_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    expected = tmp_path / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    assert weights_file(name) == expected
    with pytest.raises(ConfigError, match=f"not in the torch hub cache \\(expected {expected}\\)"):
        check_weights_source(name)
    # As torchvision's download leaves it (a torch.save state_dict), read weights_only.
    torch.manual_seed(2)
    cached = create_model("mobilenet_v3_small", num_classes=1000, in_channels=3, input_size=32)
    expected.parent.mkdir()
    torch.save(cached.state_dict(), expected)
    fresh = create_model("mobilenet_v3_small", num_classes=1000, in_channels=3, input_size=32)
    load_weights(fresh, name, "mobilenet_v3_small")
    for key, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, cached.state_dict()[key]), key


def test_an_unknown_torchvision_weights_name_is_refused():
    with pytest.raises(ConfigError, match="'Nope_Weights.X' is no torchvision weights name"):
        check_weights_source("Nope_Weights.X")


def test_l1_without_further_training_prunes_the_supplied_model(tmp_path):
    """search.epochs 0: every kept stem filter is one of the supplied model's, unchanged."""
    from pipeline.methods import get_method

    trained = trained_resnet20()
    path = save(trained, tmp_path / "dense.safetensors")
    cfg = tiny_config(model={"weights": str(path)}, search={"method": "l1", "epochs": 0})
    result = get_method("l1")(SearchContext(cfg, synthetic_data(**DATA), torch.device("cpu")))
    supplied, kept = trained.state_dict()["conv1.weight"], result.model.state_dict()["conv1.weight"]
    assert 0 < len(kept) < len(supplied)
    assert all(any(torch.equal(row, s) for s in supplied) for row in kept)
