"""int8 deployment: ONNX Runtime static quantization of an exported model."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.evaluate import open_session, top_k_accuracy
from pipeline.export import check_onnx_matches, export_onnx, graph_inputs, read_metadata
from pipeline.quantize import AccuracyLoss, check_accuracy_kept, quantize_int8

SHAPE = (3, 8, 8)


def trained_classifier() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A small conv net that separates 4 classes of coloured noise, and its data."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    images = torch.randn(256, *SHAPE, generator=generator) * 0.5
    images[:, 0] += labels.view(-1, 1, 1) - 1.5
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), images.numpy(), labels.numpy()


def test_int8_model_is_qdq_keeps_metadata_and_accuracy(tmp_path):
    model, images, labels = trained_classifier()
    fp32 = tmp_path / "fp32.onnx"
    metadata = {"arch_sha256": "abc123", "classes": '["a", "b", "c", "d"]'}
    export_onnx(model, SHAPE, fp32, sample_inputs=torch.from_numpy(images[:8]), metadata=metadata)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", images[:128])

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "BatchNormalization" not in ops  # fused into the convs before quantizing
    assert read_metadata(int8) == metadata | {"input_format": "tensor", "quantization": "int8"}
    check_onnx_matches(int8, SHAPE, 4, "abc123")  # still a dynamic-batch classifier
    top1 = {
        name: top_k_accuracy(open_session(path, "cpu")[0], images, labels)["top1"]
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    assert top1["fp32"] > 0.9
    check_accuracy_kept(top1["fp32"], top1["int8"], max_drop=0.02)
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_int8_model_that_loses_too_much_is_refused_with_the_knob_to_turn():
    check_accuracy_kept(0.90, 0.895, max_drop=0.01)
    with pytest.raises(AccuracyLoss, match="export.int8_max_drop") as err:
        check_accuracy_kept(0.90, 0.85, max_drop=0.01)
    assert "5.00 points below" in str(err.value)


def test_int8_of_an_image_input_model_calibrates_on_uint8_images_and_keeps_accuracy(tmp_path):
    model, tensors, labels = trained_classifier()
    # uint8 images whose normalization (mean 0.5, std 0.25) is close to the training tensors
    images = torch.from_numpy(tensors * 0.25 * 255 + 127.5).round().clamp(0, 255).to(torch.uint8)
    mean, std = [0.5] * 3, [0.25] * 3
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model, SHAPE, fp32, sample_inputs=images[:8], image_input=(mean, std))
    nhwc = graph_inputs(images, "image", mean, std)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", nhwc[:128])

    assert read_metadata(int8)["input_format"] == "image"
    check_onnx_matches(int8, SHAPE, 4)  # still uint8 N x H x W x C in
    top1 = {
        name: top_k_accuracy(open_session(path, "cpu")[0], nhwc, labels)["top1"]
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    assert top1["fp32"] > 0.9
    check_accuracy_kept(top1["fp32"], top1["int8"], max_drop=0.02)
