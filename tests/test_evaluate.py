"""Evaluation with real ONNX Runtime sessions: providers, accuracy and latency."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pipeline import evaluate
from pipeline.errors import ArtifactError, PipelineError
from pipeline.evaluate import (
    measure_latency,
    open_session,
    select_providers,
    speedup,
    time_interleaved,
    top_k_accuracy,
)
from tests.conftest import onnxruntime_cuda_or_skip

NUM_CLASSES = 7
INPUT_SHAPE = (NUM_CLASSES, 1, 1)
GPU = torch.cuda.is_available()


def write_flatten_model(path, num_classes: int = NUM_CLASSES) -> None:
    """An ONNX model whose logits are its N x classes x 1 x 1 input, flattened."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"])],
        "flatten",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", num_classes, 1, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
    )
    # IR 10: what torch's exporter writes, and what this onnxruntime reads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "flatten.onnx"
    write_flatten_model(path)
    return path


@pytest.fixture(scope="module")
def session(model_path):
    return open_session(model_path, "cpu", intra_op_threads=1)[0]


def test_cpu_selects_cpu_only():
    assert select_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.skipif(GPU, reason="a GPU is present")
def test_auto_without_gpu_selects_cpu_only():
    # onnxruntime-gpu lists CUDA as available here, yet there is no GPU to run it on.
    assert select_providers("auto") == ["CPUExecutionProvider"]


@pytest.mark.skipif(GPU, reason="a GPU is present")
def test_cuda_without_gpu_is_a_user_error():
    with pytest.raises(PipelineError, match="no CUDA GPU visible.*'auto' or 'cpu'"):
        select_providers("cuda")


@pytest.mark.skipif(not GPU, reason="no GPU")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_gpu_selects_cuda_first(device):
    onnxruntime_cuda_or_skip()
    assert select_providers(device) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.skipif(not GPU, reason="no GPU")
def test_open_session_runs_on_cuda(model_path):
    onnxruntime_cuda_or_skip()
    assert open_session(model_path, "cuda")[1] == "CUDAExecutionProvider"


def test_unknown_device_is_a_user_error():
    with pytest.raises(PipelineError, match="one of auto, cpu, cuda"):
        select_providers("tpu")


@pytest.mark.skipif(GPU, reason="a GPU is present")
def test_open_session_reports_cpu(model_path):
    session, provider = open_session(model_path, "auto")
    assert provider == "CPUExecutionProvider" == session.get_providers()[0]


def test_open_session_warns_loudly_on_cuda_fallback(model_path, monkeypatch, caplog):
    if GPU:
        pytest.skip("the CUDA provider loads on this machine")
    # Request CUDA as on a GPU machine; the real onnxruntime then falls back to the CPU.
    monkeypatch.setattr(
        evaluate,
        "select_providers",
        lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    with pytest.warns(RuntimeWarning, match="CUDA EXECUTION PROVIDER FAILED"):
        _, provider = open_session(model_path, "cuda")
    assert provider == "CPUExecutionProvider"
    assert "fell back to CPUExecutionProvider" in caplog.text


def test_open_session_refuses_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="absent.onnx does not exist"):
        open_session(tmp_path / "absent.onnx", "cpu")


def test_accuracy_of_known_predictions(session):
    # Row i ranks class (i + j) % 7 in place j: its logit is 7 - j.
    n = 20
    rows, places = np.arange(n)[:, None], np.arange(NUM_CLASSES)
    logits = np.zeros((n, NUM_CLASSES), dtype=np.float32)
    logits[rows, (rows + places) % NUM_CLASSES] = NUM_CLASSES - places
    place = np.zeros(n, dtype=np.int64)  # rows 8..19: the best class, a top-1 hit
    place[:5] = 1  # second best: a top-5 hit, a top-1 miss
    place[5:8] = 5  # sixth best: a miss for both
    labels = (np.arange(n) + place) % NUM_CLASSES
    images = logits.reshape(n, *INPUT_SHAPE)
    result = top_k_accuracy(session, images, labels, batch_size=6)
    assert result == {"top1": 12 / 20, "top5": 17 / 20}


def test_accuracy_matches_torch(session):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((300, *INPUT_SHAPE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, 300)
    result = top_k_accuracy(session, images, labels, batch_size=64)
    top5 = torch.from_numpy(images.reshape(300, NUM_CLASSES)).topk(5, dim=1).indices
    hits = top5 == torch.from_numpy(labels)[:, None]
    assert result["top1"] == pytest.approx(hits[:, 0].float().mean().item())
    assert result["top5"] == pytest.approx(hits.any(dim=1).float().mean().item())
    assert 0 < result["top1"] < result["top5"] < 1


def test_top5_of_few_classes_counts_every_class(tmp_path):
    write_flatten_model(tmp_path / "three.onnx", num_classes=3)
    session, _ = open_session(tmp_path / "three.onnx", "cpu")
    images = np.random.default_rng(0).standard_normal((10, 3, 1, 1), dtype=np.float32)
    result = top_k_accuracy(session, images, np.zeros(10, dtype=np.int64))
    assert result["top5"] == 1.0


def test_latency_structure_and_values(model_path):
    sessions = {
        name: open_session(model_path, "cpu", intra_op_threads=1)[0]
        for name in ("dense", "compact")
    }
    result = measure_latency(sessions, INPUT_SHAPE, batch_sizes=(1, 64), warmup=2, repeats=9)
    assert set(result) == {"batch_1", "batch_64"}
    for per_session in result.values():
        assert set(per_session) == {"dense", "compact"}
        for stats in per_session.values():
            assert set(stats) == {"median_ms", "p90_ms", "mean_ms", "repeats"}
            assert stats["repeats"] == 9
            assert 0 < stats["median_ms"] <= stats["p90_ms"]
            assert stats["mean_ms"] > 0


def test_speedup():
    assert speedup(10.0, 4.0) == 2.5


def test_sessions_flush_denormals_and_timing_runs_with_them_flushed(model_path):
    session, _ = open_session(model_path, "cpu", intra_op_threads=1)
    entry = session.get_session_options().get_session_config_entry("session.set_denormal_as_zero")
    assert entry == "1"
    denormal = torch.tensor([1e-39])  # below float32's smallest normal (1.2e-38)
    seen = []
    time_interleaved({"probe": lambda: seen.append(float(denormal * 1.0))}, warmup=0, repeats=2)
    assert seen == [0.0, 0.0]  # flushed while timed (a 75x slowdown otherwise)
    assert float(denormal * 1.0) > 0  # and restored afterwards


def write_uint8_image_model(path) -> None:
    """An image-input model: uint8 N x 1 x 1 x classes in, the pixels cast to float32 out."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["pixels"], ["logits"]),
        ],
        "cast",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", 1, 1, NUM_CLASSES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def test_accuracy_and_latency_of_a_uint8_image_input_model(tmp_path, model_path):
    write_uint8_image_model(tmp_path / "image.onnx")
    image_session, _ = open_session(tmp_path / "image.onnx", "cpu", intra_op_threads=1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 1, 1, NUM_CLASSES), dtype=np.uint8)
    labels = images.reshape(50, NUM_CLASSES).argmax(axis=1)
    labels[:10] = (labels[:10] + 1) % NUM_CLASSES  # ten top-1 misses
    assert top_k_accuracy(image_session, images, labels, batch_size=16)["top1"] == 40 / 50
    sessions = {"image": image_session, "tensor": open_session(model_path, "cpu")[0]}
    # The classifier is classes x 1 x 1: each session gets its own layout and type.
    result = measure_latency(sessions, INPUT_SHAPE, batch_sizes=(3,), warmup=1, repeats=3)
    assert set(result["batch_3"]) == {"image", "tensor"}
