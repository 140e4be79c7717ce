"""Files that do not fit their architecture are refused with a clear message; pickles are
never loaded; a model folder killed mid-write is never accepted half-written."""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import save_file

from pipeline.artifacts import load_compact, save_compact
from pipeline.errors import ArtifactError
from pipeline.export import check_onnx_matches
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.pruning.spec import ArchSpec


def compact(divisor: int = 2, seed: int = 0) -> tuple[ArchSpec, torch.nn.Module]:
    dense = dense_spec("resnet20", (1, 8, 8), 4)
    widths = {g: max(1, w // divisor) for g, w in dense.widths.items()}
    spec = ArchSpec(dense.model, dense.input_shape, dense.num_classes, widths)
    torch.manual_seed(seed)
    return spec, build_model(spec).eval()


# --------------------------------------------------------------------------- weights


def test_wrong_shapes_name_file_tensor_expected_and_found(tmp_path):
    spec, model = compact()
    save_compact(tmp_path / "m", spec, model)
    state = dict(model.state_dict())
    state["fc.weight"] = torch.zeros(4, 3)  # the spec's head is [4, width]
    save_file(state, tmp_path / "m" / "weights.safetensors")  # no hash metadata
    with pytest.raises(ArtifactError) as err:
        load_compact(tmp_path / "m")
    message = str(err.value)
    expected = list(model.state_dict()["fc.weight"].shape)
    assert "weights.safetensors does not match its architecture spec" in message
    assert f"fc.weight: expected {expected}, found [4, 3]" in message
    assert "arch.json" in message and "dvc repro" in message


def test_unknown_tensor_is_refused(tmp_path):
    spec, model = compact()
    save_compact(tmp_path / "m", spec, model)
    save_file(
        {**model.state_dict(), "extra.weight": torch.zeros(2)},
        tmp_path / "m" / "weights.safetensors",
    )
    with pytest.raises(ArtifactError, match="extra.weight: not part of the architecture"):
        load_compact(tmp_path / "m")


def test_weights_saved_for_another_architecture_are_refused_by_hash(tmp_path):
    spec, model = compact()
    other_spec, _ = compact(divisor=4)
    save_compact(tmp_path / "m", spec, model)
    other_spec.save(tmp_path / "m" / "arch.json")
    with pytest.raises(ArtifactError) as err:
        load_compact(tmp_path / "m")
    assert f"saved for architecture {spec.sha256[:12]}" in str(err.value)
    assert f"the spec is {other_spec.sha256[:12]}" in str(err.value)


class _CreatesMarker:
    """Unpickling this object runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_passed_as_weights_is_refused_without_unpickling(tmp_path, writer):
    spec, model = compact()
    save_compact(tmp_path / "m", spec, model)
    marker = tmp_path / "unpickled-marker"
    payload = {"fc.weight": _CreatesMarker(marker)}
    weights = tmp_path / "m" / "weights.safetensors"
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload, protocol=4))
    else:
        torch.save(payload, weights)
    with pytest.raises(ArtifactError) as err:
        load_compact(tmp_path / "m")
    assert not marker.exists(), "the weights file was unpickled"
    assert "looks like a pickle or torch.save file" in str(err.value)
    assert "safetensors.torch.save_file" in str(err.value)
    # The payload is live: unpickling it (as we just refused to) does create the marker.
    if writer == "pickle":
        pickle.loads(weights.read_bytes())
    else:
        copy = tmp_path / "copy.pt"  # torch.load hands *.safetensors names to safetensors
        copy.write_bytes(weights.read_bytes())
        torch.load(copy, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- ONNX


def tiny_onnx(path: Path, classes: int, metadata: dict[str, str]) -> Path:
    """A valid N x 1 x 8 x 8 -> N x classes classifier (flatten + matmul), built by hand."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, classes], [0.0] * (64 * classes))
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(proto, metadata)
    onnx.save_model(proto, path)
    return path


def test_onnx_of_the_spec_is_accepted(tmp_path):
    spec, _ = compact()
    path = tiny_onnx(tmp_path / "m.onnx", 4, {"arch_sha256": spec.sha256})
    check_onnx_matches(path, spec.input_shape, spec.num_classes, spec.sha256)


@pytest.mark.parametrize(
    ("metadata", "found"),
    [({"arch_sha256": "f" * 64}, "architecture ffffffffffff"), ({}, "no arch_sha256 metadata")],
)
def test_onnx_of_another_architecture_is_refused(tmp_path, metadata, found):
    spec, _ = compact()
    path = tiny_onnx(tmp_path / "m.onnx", 4, metadata)
    with pytest.raises(ArtifactError) as err:
        check_onnx_matches(path, spec.input_shape, spec.num_classes, spec.sha256)
    message = str(err.value)
    assert str(path) in message and found in message and spec.sha256[:12] in message
    assert "re-run the export stage" in message


def test_onnx_with_other_output_shape_is_refused(tmp_path):
    spec, _ = compact()
    path = tiny_onnx(tmp_path / "m.onnx", 7, {"arch_sha256": spec.sha256})
    with pytest.raises(
        ArtifactError, match=r"output of shape \['batch', 7\], expected \[batch, 4\]"
    ):
        check_onnx_matches(path, spec.input_shape, spec.num_classes, spec.sha256)


# --------------------------------------------------------------------------- SIGKILL


def rewrite_forever(target: Path, models: list) -> None:
    """In a forked child: replace the model folder again and again until killed."""
    try:
        i = 0
        while True:
            save_compact(target, *models[i % 2])
            i += 1
    finally:
        os._exit(1)  # never return into the test runner


def test_sigkill_during_save_never_leaves_a_half_model(tmp_path):
    """SIGKILL a process that rewrites a model folder non-stop, at seeded random moments:
    the folder is then one complete model, or absent (reported as missing), never half."""
    rng = random.Random(5)
    models = [compact(2, seed=0), compact(4, seed=1)]
    versions = {spec.sha256: model.state_dict() for spec, model in models}
    target = tmp_path / "searched"
    outcomes = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            rewrite_forever(target, models)
        time.sleep(rng.uniform(0.3, 1.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            spec, model = load_compact(target)
        except ArtifactError as err:  # killed between the two renames of replace_dir
            assert "not found" in str(err), err
            outcomes.append("absent")
            continue
        assert spec.sha256 in versions
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, versions[spec.sha256][name]), name
        outcomes.append(spec.sha256[:8])
    assert any(o != "absent" for o in outcomes), outcomes  # the writer did write models
