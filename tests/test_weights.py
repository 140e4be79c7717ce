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
from pipeline.models.weights import (
    adapted_input_kernels,
    check_weights_source,
    load_weights,
    weights_file,
)
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
    state = dict(trained_resnet20(num_classes=5).state_dict())
    state["stages.0.0.conv1.weight"] = torch.zeros(8, 16, 3, 3)  # a narrower layer
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ConfigError) as caught:
        dense_from(path)
    message = str(caught.value)
    assert message.startswith(f"model.weights: {path} does not fit model 'resnet20'")
    # The head (5 classes in the file, 4 in the data) is replaced, not a mismatch.
    assert "for 1x8x8 images and 4 classes (1 mismatched tensor(s)" in message
    assert "first stages.0.0.conv1.weight: expected shape [16, 16, 3, 3], found [8, 16, 3, 3]" in (
        message
    )
    assert "Only the classifier head (other classes) and the first convolution" in message
    assert "safetensors.torch.save_file" in message


def test_a_head_of_another_width_is_refused_not_replaced(tmp_path):
    """Only the class count may differ: a head reading other features is another model."""
    state = dict(trained_resnet20(num_classes=5).state_dict())
    state["fc.weight"] = torch.zeros(5, 32)
    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(ConfigError, match=re.escape("first fc.weight: expected shape [4, 64]")):
        dense_from(path)


def test_weights_of_other_classes_and_channels_start_the_model_for_this_data(tmp_path, monkeypatch):
    """RGB weights of 10 classes on 1-channel data of 4 classes: the head is the data's own,
    fresh; the first conv takes the summed RGB kernels; every other tensor is the file's."""
    from pipeline import progress

    logged = []
    monkeypatch.setattr(progress.console, "log", lambda text, *args, **kwargs: logged.append(text))
    torch.manual_seed(1)
    rgb = create_model("resnet20", num_classes=10, in_channels=3, input_size=8)
    with torch.no_grad():
        for tensor in rgb.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
    supplied = rgb.state_dict()
    dense = dense_from(save(rgb, tmp_path / "rgb.safetensors"))
    assert logged == [
        "model.weights: replaced the classifier head 'fc' (10 classes in the weights, 4 in the "
        "data): freshly initialised, to be trained",
        "model.weights: adapted the first convolution 'conv1' from 3 to 1 input channel(s) "
        "(its kernels summed)",
    ]
    loaded = dense.state_dict()
    assert loaded["fc.weight"].shape == (4, 64) and loaded["fc.bias"].shape == (4,)
    torch.testing.assert_close(
        loaded["conv1.weight"], supplied["conv1.weight"].sum(1, keepdim=True), rtol=0, atol=0
    )
    others = set(loaded) - {"fc.weight", "fc.bias", "conv1.weight"}
    assert len(others) > 50
    for name in others:
        torch.testing.assert_close(loaded[name], supplied[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("in_channels", [1, 6])
def test_adapted_kernels_respond_to_grey_images_as_the_rgb_kernels_did(in_channels):
    """A grey image (one value in every channel) gives the response the RGB kernels gave to
    it in RGB: exactly for one channel (summed) and for multiples of three (tiled)."""
    torch.manual_seed(0)
    rgb = torch.randn(6, 3, 3, 3)
    grey = torch.rand(2, 1, 9, 9)
    adapted = adapted_input_kernels(rgb, in_channels)
    assert adapted.shape == (6, in_channels, 3, 3)
    torch.testing.assert_close(
        torch.conv2d(grey.expand(-1, in_channels, -1, -1), adapted),
        torch.conv2d(grey.expand(-1, 3, -1, -1), rgb),
        rtol=1e-5,
        atol=1e-5,
    )


def test_other_channel_counts_tile_the_rgb_kernels_scaled_by_three_over_the_count():
    rgb = torch.randn(6, 3, 3, 3)
    adapted = adapted_input_kernels(rgb, 4)  # RGB plus one more channel, e.g. depth
    for channel in range(4):
        torch.testing.assert_close(adapted[:, channel], rgb[:, channel % 3] * 3 / 4)


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


def test_torchvision_imagenet_weights_fine_tune_on_other_classes_and_grey_images(
    tmp_path, monkeypatch
):
    """torchvision's weights name, written to the hub cache by the test (no download): the
    1000-class head is replaced, the RGB stem summed for 1-channel data, all else strict."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    torch.manual_seed(2)
    imagenet = create_model("mobilenet_v3_small", num_classes=1000, in_channels=3, input_size=32)
    weights_file(name).parent.mkdir()
    torch.save(imagenet.state_dict(), weights_file(name))
    model = create_model("mobilenet_v3_small", num_classes=4, in_channels=1, input_size=32)
    head = model.state_dict()["classifier.3.weight"].clone()
    changes = load_weights(model, name, "mobilenet_v3_small for 1x32x32 images and 4 classes")
    assert changes == [
        "replaced the classifier head 'classifier.3' (1000 classes in the weights, 4 in the "
        "data): freshly initialised, to be trained",
        "adapted the first convolution 'features.0.0' from 3 to 1 input channel(s) (its "
        "kernels summed)",
    ]
    loaded, supplied = model.state_dict(), imagenet.state_dict()
    assert torch.equal(loaded["classifier.3.weight"], head)  # the fresh one, kept
    stem = supplied["features.0.0.weight"].sum(1, keepdim=True)
    assert torch.equal(loaded["features.0.0.weight"], stem)
    for key in set(loaded) - {"classifier.3.weight", "classifier.3.bias", "features.0.0.weight"}:
        assert torch.equal(loaded[key], supplied[key]), key


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
