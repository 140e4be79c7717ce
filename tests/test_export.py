"""ONNX export: a checked, single-file model with a dynamic batch axis, written atomically;
uint8 image input with the normalization in the graph."""

from __future__ import annotations

from typing import get_args

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pipeline.config import ExportConfig
from pipeline.data import normalize
from pipeline.errors import ArtifactError
from pipeline.export import (
    INPUT_FORMATS,
    ImageInput,
    check_onnx_matches,
    export_onnx,
    graph_input_shape,
    graph_inputs,
    read_metadata,
)

INPUT_SHAPE = (3, 16, 16)
NUM_CLASSES = 5
METADATA = {"model": "tiny-cnn", "flops_ratio": "0.5"}


class TinyCNN(nn.Module):
    """conv-bn-relu, a residual add, maxpool, adaptive avgpool and a linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = torch.relu(y + self.bn(self.conv(y)))
        return self.fc(torch.flatten(self.gap(self.pool(y)), 1))


class Broken(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward is broken on purpose")


class FixedBatch(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Hard-codes the batch size that export_onnx traces with (2): torch.export then
        # specializes the batch axis instead of failing, so only the graph check catches it.
        return self.fc(self.gap(self.stem(x)).view(2, -1))


def trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them is really exercised."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *INPUT_SHAPE) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def samples() -> torch.Tensor:
    return torch.randn(8, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, samples):
    model = trained_like(TinyCNN())
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    report = export_onnx(model, INPUT_SHAPE, path, sample_inputs=samples, metadata=METADATA)
    return model, path, report


def test_export_writes_one_checked_file(exported):
    _, path, report = exported
    assert report.path == path and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no external data
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert not any(
        init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer
    )
    assert report.opset == 18 and report.num_checked == 8
    assert (report.input_name, report.output_name) == ("input", "logits")
    assert 0 <= report.max_abs_diff < 1e-4


@pytest.mark.parametrize("batch", [1, 7])
def test_exported_model_matches_torch_at_any_batch(exported, batch):
    model, path, _ = exported
    x = torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(batch))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (batch, NUM_CLASSES)
    assert abs(logits - expected).max() < 1e-4


def test_metadata_round_trip(exported):
    _, path, _ = exported
    assert read_metadata(path) == METADATA | {"input_format": "tensor"}


def test_export_leaves_caller_model_untouched(tmp_path, samples):
    model = TinyCNN().train()
    export_onnx(model, INPUT_SHAPE, tmp_path / "m.onnx", sample_inputs=samples[:1])
    assert model.training
    check_onnx_matches(tmp_path / "m.onnx", INPUT_SHAPE, NUM_CLASSES)  # batch 1 samples suffice


def test_parity_failure_keeps_existing_file(tmp_path, samples):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous model")
    with pytest.raises(ArtifactError, match="does not match PyTorch"):
        export_onnx(TinyCNN().eval(), INPUT_SHAPE, path, sample_inputs=samples, tolerance=-1)
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left


class Scaled(nn.Module):
    """TinyCNN with its logits multiplied: the same operators, values in the thousands."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.net, self.factor = TinyCNN().eval(), factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.factor


def test_parity_tolerance_scales_with_the_logits(tmp_path, samples):
    """float32 rounding grows with the values: large logits pass on the relative difference,
    and the report says against what scale the difference was taken."""
    torch.manual_seed(0)
    model = Scaled(1e4)
    report = export_onnx(model, INPUT_SHAPE, tmp_path / "m.onnx", sample_inputs=samples)
    assert report.logit_scale > 1e3
    assert report.max_abs_diff < 1e-4 * report.logit_scale
    with pytest.raises(ArtifactError, match="logit scale"):
        export_onnx(
            model,
            INPUT_SHAPE,
            tmp_path / "m2.onnx",
            sample_inputs=samples,
            tolerance=0.1 * report.max_abs_diff / report.logit_scale,
        )


def with_head_scaled(factor: float) -> TinyCNN:
    model = trained_like(TinyCNN())
    with torch.no_grad():
        model.fc.weight.mul_(factor)
        model.fc.bias.mul_(factor)
    return model


def parity_error(model: nn.Module, path, samples, **kwargs) -> str:
    with pytest.raises(ArtifactError, match="does not match PyTorch") as caught:
        export_onnx(model, INPUT_SHAPE, path, sample_inputs=samples, **kwargs)
    return str(caught.value)


def test_a_parity_failure_of_exploded_logits_names_diverged_training(tmp_path, samples):
    """The same failure (forced: a negative tolerance fails any difference) blames the
    operators for sane logits and diverged training for logits past SANE_LOGIT_BOUND."""
    from pipeline.errors import SANE_LOGIT_BOUND

    sane = parity_error(with_head_scaled(1.0), tmp_path / "a.onnx", samples, tolerance=-1)
    assert "operator that ONNX Runtime computes differently" in sane
    assert "diverged" not in sane
    exploded = with_head_scaled(1e6)
    with torch.no_grad():
        scale = exploded(samples).abs().max().item()
    assert scale > SANE_LOGIT_BOUND
    message = parity_error(exploded, tmp_path / "b.onnx", samples, tolerance=-1)
    assert "the model's training diverged: its logits reach" in message
    assert "lower the learning rate (finetune.lr" in message and "operator" not in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_non_finite_logits_fail_parity_as_diverged_training(tmp_path, samples):
    message = parity_error(with_head_scaled(float("inf")), tmp_path / "m.onnx", samples)
    assert "the model's training diverged" in message and "operator" not in message


def test_export_failure_keeps_existing_file(tmp_path, samples):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous model")
    with pytest.raises(ArtifactError, match="export of .*model.onnx failed"):
        export_onnx(Broken(), INPUT_SHAPE, path, sample_inputs=samples)
    assert path.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_refuses_a_fixed_batch_size(tmp_path, samples):
    with pytest.raises(ArtifactError, match="dynamic batch axis"):
        export_onnx(FixedBatch(), INPUT_SHAPE, tmp_path / "m.onnx", sample_inputs=samples)
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_samples_of_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="sample_inputs"):
        export_onnx(TinyCNN(), INPUT_SHAPE, tmp_path / "m.onnx", sample_inputs=torch.zeros(2, 3))


def test_check_accepts_matching_model(exported):
    _, path, _ = exported
    check_onnx_matches(path, INPUT_SHAPE, NUM_CLASSES)


def test_check_refuses_missing_file(tmp_path):
    path = tmp_path / "absent.onnx"
    with pytest.raises(ArtifactError, match="absent.onnx does not exist"):
        check_onnx_matches(path, INPUT_SHAPE, NUM_CLASSES)


def test_check_refuses_garbage(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffnot a protobuf at all" * 10)
    with pytest.raises(ArtifactError, match="garbage.onnx"):
        check_onnx_matches(path, INPUT_SHAPE, NUM_CLASSES)


@pytest.mark.parametrize(
    ("input_shape", "num_classes", "match"),
    [
        ((3, 32, 32), NUM_CLASSES, "input of shape"),
        ((1, 16, 16), NUM_CLASSES, "input of shape"),
        (INPUT_SHAPE, 10, "output of shape"),
    ],
)
def test_check_refuses_mismatched_shapes(exported, input_shape, num_classes, match):
    _, path, _ = exported
    with pytest.raises(ArtifactError, match=match) as err:
        check_onnx_matches(path, input_shape, num_classes)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- image input

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """uint8 images in a data split's layout, N x C x H x W."""
    generator = torch.Generator().manual_seed(2)
    return torch.randint(0, 256, (6, *INPUT_SHAPE), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def exported_images(tmp_path_factory, images):
    model = trained_like(TinyCNN())
    path = tmp_path_factory.mktemp("export") / "image.onnx"
    report = export_onnx(
        model, INPUT_SHAPE, path, sample_inputs=images, metadata=METADATA, image_input=(MEAN, STD)
    )
    return model, path, report


def test_image_input_wrapper_normalizes_as_training_does(images):
    model = trained_like(TinyCNN())
    nhwc = images.permute(0, 2, 3, 1).contiguous()  # as PIL/numpy decode images
    with torch.no_grad():
        wrapped = ImageInput(model, MEAN, STD).eval()(nhwc)
        expected = model(normalize(images, MEAN, STD))
    assert torch.equal(wrapped, expected)


def test_image_input_graph_takes_uint8_nhwc_and_matches_torch_on_normalized_images(
    exported_images, images
):
    model, path, report = exported_images
    graph_input = onnx.load(path).graph.input[0]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    height, width, channels = (d.dim_value for d in graph_input.type.tensor_type.shape.dim[1:])
    assert (channels, height, width) == INPUT_SHAPE
    assert report.input_format == "image" and report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images):  # the batch axis stays free
        (logits,) = session.run(["logits"], {"input": batch.permute(0, 2, 3, 1).numpy()})
        with torch.no_grad():
            expected = model(normalize(batch, MEAN, STD)).numpy()
        assert abs(logits - expected).max() < 1e-4


def test_image_input_metadata_and_graph_inputs(exported_images, images):
    _, path, _ = exported_images
    assert read_metadata(path) == METADATA | {"input_format": "image"}
    check_onnx_matches(path, INPUT_SHAPE, NUM_CLASSES)  # C x H x W, whatever the layout
    assert graph_input_shape(INPUT_SHAPE, "image") == (16, 16, 3)
    fed = graph_inputs(images, "image", MEAN, STD)
    assert fed.dtype == np.uint8 and fed.shape == (6, 16, 16, 3)
    tensors = graph_inputs(images, "tensor", MEAN, STD)
    assert np.array_equal(tensors, normalize(images, MEAN, STD).numpy())


def float_nhwc_classifier(input_format: str) -> onnx.ModelProto:
    """A float32 N x H x W x C classifier (channel means times a matrix), labelled as given."""
    height, width, channels = graph_input_shape(INPUT_SHAPE, "image")
    weight = onnx.numpy_helper.from_array(np.ones((channels, NUM_CLASSES), np.float32), "w")
    axes = onnx.numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    graph = onnx.helper.make_graph(
        [
            onnx.helper.make_node("ReduceMean", ["input", "axes"], ["means"], keepdims=0),
            onnx.helper.make_node("MatMul", ["means", "w"], ["logits"]),
        ],
        "nhwc",
        [
            onnx.helper.make_tensor_value_info(
                "input", onnx.TensorProto.FLOAT, ["N", height, width, channels]
            )
        ],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", NUM_CLASSES])],
        [weight, axes],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=10
    )
    onnx.helper.set_model_props(model, {"input_format": input_format})
    return model


def test_check_refuses_an_input_that_contradicts_the_input_format(exported, tmp_path):
    onnx.save(float_nhwc_classifier("image"), tmp_path / "float.onnx")
    with pytest.raises(ArtifactError, match="takes FLOAT input.*'image' needs UINT8"):
        check_onnx_matches(tmp_path / "float.onnx", INPUT_SHAPE, NUM_CLASSES)
    onnx.save(float_nhwc_classifier("jpeg"), tmp_path / "unknown.onnx")
    with pytest.raises(ArtifactError, match="input_format='jpeg'.*image or tensor"):
        check_onnx_matches(tmp_path / "unknown.onnx", INPUT_SHAPE, NUM_CLASSES)
    _, tensor_path, _ = exported  # float N x C x H x W, claimed to take images
    proto = onnx.load(tensor_path)
    onnx.helper.set_model_props(proto, {"input_format": "image"})
    onnx.save(proto, tmp_path / "lying.onnx")
    with pytest.raises(ArtifactError, match=r"input of shape \['batch', 3, 16, 16\]"):
        check_onnx_matches(tmp_path / "lying.onnx", INPUT_SHAPE, NUM_CLASSES)


def test_image_input_needs_uint8_samples(tmp_path, samples):
    with pytest.raises(ValueError, match="uint8 sample images"):
        export_onnx(
            TinyCNN(),
            INPUT_SHAPE,
            tmp_path / "m.onnx",
            sample_inputs=samples,
            image_input=(MEAN, STD),
        )
    assert list(tmp_path.iterdir()) == []


def test_export_input_parameter_offers_exactly_the_input_formats():
    annotation = ExportConfig.model_fields["input"].annotation
    assert set(get_args(annotation)) == set(INPUT_FORMATS)
    assert ExportConfig().input in INPUT_FORMATS


def test_the_same_model_exports_to_the_same_bytes_without_source_paths(tmp_path, samples):
    """Exports from two checkouts of the same commit must have one DVC hash: no node keeps
    the exporter's stack traces, which hold absolute paths of the source files."""
    torch.manual_seed(0)
    model = TinyCNN().eval()
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_onnx(model, INPUT_SHAPE, first, sample_inputs=samples)
    export_onnx(model, INPUT_SHAPE, second, sample_inputs=samples)
    assert first.read_bytes() == second.read_bytes()
    keys = {p.key for node in onnx.load(str(first)).graph.node for p in node.metadata_props}
    assert keys and "pkg.torch.onnx.stack_trace" not in keys
