"""Export a PyTorch CNN to a single, checked ONNX file.

``export_onnx`` uses the torch.export-based exporter (``torch.onnx.export(dynamo=True)``),
the default since PyTorch 2.9; the TorchScript exporter is deprecated. The file gets a
dynamic batch axis, input ``"input"`` and output ``"logits"``, optional metadata_props,
and is written atomically only after it has passed ``onnx.checker`` and matched PyTorch's
outputs on real samples under ONNX Runtime.

Two input formats (metadata ``input_format``):

* ``image``: uint8 N x H x W x C, images as PIL, numpy or OpenCV decode them (C as in the
  data set); the graph scales and normalizes them with the training mean/std itself
  (``ImageInput``), so a consumer only resizes. Resizing stays outside: how to resize is
  the caller's choice, and a fixed-size graph input keeps the model's cost fixed.
* ``tensor``: float32 N x C x H x W, already scaled to [0, 1] and normalized.

``check_onnx_matches`` refuses an ONNX file that does not fit an architecture spec, and
``read_metadata`` returns a file's metadata_props.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from pipeline.data import normalize
from pipeline.errors import SANE_LOGIT_BOUND, ArtifactError, restore_output_hint

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE = "image"
TENSOR = "tensor"
INPUT_FORMATS = (IMAGE, TENSOR)
INPUT_FORMAT_KEY = "input_format"  # metadata_props key; files without it take tensors
_ELEMENT_TYPES = {IMAGE: onnx.TensorProto.UINT8, TENSOR: onnx.TensorProto.FLOAT}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SPEC_FIX = "the file does not belong to this architecture spec; re-run the export stage"
_FORWARD_FIX = (
    "the exported graph is not a classifier of any batch size; make the model's forward "
    "keep the batch axis free (torch.flatten(x, 1), not x.view(<constant>, -1))"
)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    opset: int
    max_abs_diff: float
    logit_scale: float  # largest |PyTorch output| on the samples: what the difference is against
    num_checked: int
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    input_format: str = TENSOR


class ImageInput(nn.Module):
    """``classifier`` taking uint8 N x H x W x C images: the training normalization
    (``pipeline.data.normalize``, mean/std baked in) and the NCHW transpose run in the graph."""

    def __init__(self, classifier: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # contiguous: channels-last strides would reach the classifier and turn its
        # flatten into a strided gather in the exported graph.
        nchw = images.permute(0, 3, 1, 2).contiguous()
        return self.classifier(normalize(nchw, self.mean, self.std))


def graph_input_shape(input_shape: tuple[int, int, int], input_format: str) -> tuple[int, ...]:
    """One sample's shape at the graph input: (C, H, W) for tensors, (H, W, C) for images."""
    _check_format(input_format)
    channels, height, width = input_shape
    return (height, width, channels) if input_format == IMAGE else tuple(input_shape)


def graph_inputs(
    images: torch.Tensor, input_format: str, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 N x C x H x W images (a data split) as a graph of ``input_format`` takes them."""
    _check_format(input_format)
    if input_format == IMAGE:
        return images.permute(0, 2, 3, 1).contiguous().numpy()
    return normalize(images, mean, std).numpy()


def export_arguments(
    images: torch.Tensor, input_format: str, mean: Sequence[float], std: Sequence[float]
) -> dict:
    """``export_onnx``'s ``sample_inputs`` and ``image_input`` for a graph of ``input_format``
    checked on uint8 N x C x H x W ``images`` (a data split's)."""
    _check_format(input_format)
    if input_format == IMAGE:
        return {"sample_inputs": images, "image_input": (mean, std)}
    return {"sample_inputs": normalize(images, mean, std), "image_input": None}


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | os.PathLike,
    *,
    sample_inputs: torch.Tensor,
    opset: int = 18,
    metadata: dict[str, str] | None = None,
    tolerance: float = 1e-4,
    image_input: tuple[Sequence[float], Sequence[float]] | None = None,
) -> ExportReport:
    """Export ``model`` (eval mode, CPU, float32) to ``path`` and verify it.

    ``input_shape`` is the classifier's C x H x W. Without ``image_input`` the graph takes
    normalized float32 N x C x H x W and ``sample_inputs`` are such tensors. With
    ``image_input=(mean, std)`` the graph takes uint8 N x H x W x C images and normalizes
    them itself; ``sample_inputs`` are then uint8 N x C x H x W images (a data split's
    layout). The samples run through ONNX Runtime and PyTorch (on the same images
    normalized) at batch 1 and batch N; a largest absolute difference >= ``tolerance`` times
    the logits' scale (their largest magnitude, at least 1) raises ``ArtifactError``: float32
    rounding grows with the values, so logits in the thousands (an early, barely trained
    network) differ by more than 1e-4 with every operator computed alike. The error blames
    diverged training, not an operator, when the logits are past ``SANE_LOGIT_BOUND`` or not
    finite. The metadata gets ``input_format``. An existing file at ``path`` is replaced
    only by a verified export.
    """
    path = Path(path)
    input_format = TENSOR if image_input is None else IMAGE
    samples = _check_samples(sample_inputs, input_shape, input_format)
    # A copy, so that the caller's model keeps its device, dtype and train/eval mode.
    model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if image_input is not None:
        model = ImageInput(model, *image_input).eval()
        samples = samples.permute(0, 2, 3, 1).contiguous()
    expected_input = graph_input_shape(input_shape, input_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proto = _export_proto(model, samples, opset, path)
        onnx.helper.set_model_props(proto, dict(metadata or {}) | {INPUT_FORMAT_KEY: input_format})
        onnx.save_model(proto, tmp)  # weights inline: one self-contained file
        checked = _checked_model(tmp, path)
        _check_io(checked, path, expected_input, input_format, None, fix=_FORWARD_FIX)
        max_diff, scale = _max_abs_diff(model, tmp, samples, path)
        if not max_diff < tolerance * max(1.0, scale):  # also catches NaN
            raise ArtifactError(
                f"ONNX export of {path} does not match PyTorch: largest absolute difference "
                f"{max_diff:.3g} on {len(samples)} samples (tolerance {tolerance:g} x logit "
                f"scale {max(1.0, scale):.3g}); {_mismatch_cause(scale)}; the file was not "
                "written"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(
        path=path,
        opset=opset,
        max_abs_diff=max_diff,
        logit_scale=scale,
        num_checked=len(samples),
        input_format=input_format,
    )


def check_onnx_matches(
    path: str | os.PathLike,
    input_shape: tuple[int, int, int],
    num_classes: int,
    arch_sha256: str | None = None,
) -> None:
    """Raise ``ArtifactError`` unless ``path`` is a valid ONNX classifier of the given shape.

    The model must take one input with a dynamic batch axis (float32 N x C x H x W, or uint8
    N x H x W x C when its metadata says ``input_format: image``) and return one
    N x ``num_classes`` output. With ``arch_sha256``, the file's metadata_props must name
    that architecture hash (the export stage writes it), so an ONNX file of another
    architecture with the same input and output shapes is refused too.
    """
    path = Path(path)
    proto = _checked_model(path, path)
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    input_format = input_format_of(metadata, path)
    expected_input = graph_input_shape(input_shape, input_format)
    _check_io(proto, path, expected_input, input_format, num_classes, fix=_SPEC_FIX)
    if arch_sha256 is not None:
        stored = metadata.get("arch_sha256")
        if stored != arch_sha256:
            found = "no arch_sha256 metadata" if stored is None else f"architecture {stored[:12]}"
            raise ArtifactError(
                f"{path} does not match its architecture spec: the file holds {found}, the "
                f"spec is {arch_sha256[:12]}; {_SPEC_FIX}"
            )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the metadata_props of the ONNX file at ``path``."""
    proto = _load(Path(path))
    return {prop.key: prop.value for prop in proto.metadata_props}


def input_format_of(metadata: dict[str, str], shown: str | os.PathLike) -> str:
    """The ``input_format`` a file's metadata names; files written before it existed
    take normalized tensors."""
    input_format = metadata.get(INPUT_FORMAT_KEY, TENSOR)
    if input_format not in INPUT_FORMATS:
        raise ArtifactError(
            f"{shown} has metadata {INPUT_FORMAT_KEY}={input_format!r}; this version reads "
            f"{' or '.join(INPUT_FORMATS)}; re-run the export stage"
        )
    return input_format


def _mismatch_cause(logit_scale: float) -> str:
    """Why ONNX Runtime and PyTorch disagree: a diverged model (float32 rounding at its
    magnitudes differs between any two runtimes) or, for sane logits, an operator."""
    if math.isfinite(logit_scale) and logit_scale <= SANE_LOGIT_BOUND:
        return "the model uses an operator that ONNX Runtime computes differently"
    return (
        f"the model's training diverged: its logits reach {logit_scale:.3g} (a healthy "
        f"classifier stays far below {SANE_LOGIT_BOUND:.0e}), where float32 rounding differs "
        "between runtimes; lower the learning rate (finetune.lr, or search.lr if the search "
        "diverged) or raise train.batch_size, and rerun the pipeline"
    )


def _check_format(input_format: str) -> None:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")


def _check_samples(
    sample_inputs: torch.Tensor, input_shape: tuple[int, int, int], input_format: str
) -> torch.Tensor:
    shape = tuple(sample_inputs.shape)
    if sample_inputs.ndim != 4 or shape[1:] != tuple(input_shape) or shape[0] < 1:
        raise ValueError(
            f"sample_inputs must be N x {' x '.join(map(str, input_shape))} with N >= 1, "
            f"got {list(shape)}"
        )
    if input_format == IMAGE:
        if sample_inputs.dtype != torch.uint8:
            raise ValueError(f"image_input needs uint8 sample images, got {sample_inputs.dtype}")
        return sample_inputs.detach().cpu()
    return sample_inputs.detach().to(device="cpu", dtype=torch.float32)


def _export_proto(
    model: nn.Module, samples: torch.Tensor, opset: int, path: Path
) -> onnx.ModelProto:
    # torch.export specializes a traced size of 1, so trace with two rows to keep N dynamic.
    trace_input = _at_least_two(samples)
    batch = torch.export.Dim("batch")
    try:
        program = torch.onnx.export(
            model,
            (trace_input,),
            None,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
        )
    except Exception as exc:
        reason = _ANSI.sub("", str(exc))  # torch colours its export errors
        raise ArtifactError(
            f"ONNX export of {path} failed: {type(exc).__name__}: {reason}"
        ) from exc
    return _without_source_paths(program.model_proto)


# Node metadata torch's exporter writes with absolute paths of the source files: it would make
# the same model exported from two checkouts differ in bytes (and in DVC hash).
_SOURCE_PATH_KEYS = ("pkg.torch.onnx.stack_trace",)


def _without_source_paths(proto: onnx.ModelProto) -> onnx.ModelProto:
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key not in _SOURCE_PATH_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return proto


def _load(path: Path, shown: Path | None = None) -> onnx.ModelProto:
    shown = shown or path
    if not path.is_file():
        raise ArtifactError(f"ONNX model file {shown} does not exist; run the export stage")
    try:
        return onnx.load(path)
    except Exception as exc:  # protobuf raises DecodeError, among others
        raise ArtifactError(
            f"{shown} is not a readable ONNX model ({exc}); {restore_output_hint(shown)}"
        ) from exc


def _checked_model(file: Path, shown: Path) -> onnx.ModelProto:
    """Load ``file`` and run the full onnx.checker (with shape inference); errors name ``shown``."""
    proto = _load(file, shown)  # a clear message for files that are not ONNX at all
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ArtifactError(
            f"{shown} is not a valid ONNX model: {exc}; {restore_output_hint(shown)}"
        ) from exc
    return proto


def _check_io(
    proto: onnx.ModelProto,
    shown: Path,
    input_shape: tuple[int, ...],
    input_format: str,
    num_classes: int | None,
    *,
    fix: str,
) -> None:
    """Check one N x ``input_shape`` input (N dynamic) of ``input_format``'s element type
    and one N x classes output."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ArtifactError(
            f"{shown} has {len(inputs)} inputs and {len(graph.output)} outputs; an image "
            f"classifier needs exactly one of each; {fix}"
        )
    in_dims = _dims(inputs[0])
    if len(in_dims) != 4 or in_dims[1:] != list(input_shape) or isinstance(in_dims[0], int):
        raise ArtifactError(
            f"{shown} takes input of shape {in_dims}, expected [batch, "
            f"{', '.join(map(str, input_shape))}] with a dynamic batch axis; {fix}"
        )
    element_type = inputs[0].type.tensor_type.elem_type
    if element_type != _ELEMENT_TYPES[input_format]:
        expected = onnx.TensorProto.DataType.Name(_ELEMENT_TYPES[input_format])
        raise ArtifactError(
            f"{shown} takes {onnx.TensorProto.DataType.Name(element_type)} input, but its "
            f"{INPUT_FORMAT_KEY} {input_format!r} needs {expected}; {fix}"
        )
    out_dims = _dims(graph.output[0])
    if len(out_dims) != 2 or (num_classes is not None and out_dims[1] != num_classes):
        classes = "num_classes" if num_classes is None else num_classes
        raise ArtifactError(
            f"{shown} returns output of shape {out_dims}, expected [batch, {classes}]; {fix}"
        )


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Static sizes as ints, symbolic or unknown sizes as their name (or '?')."""
    return [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
        for dim in value.type.tensor_type.shape.dim
    ]


def _at_least_two(samples: torch.Tensor) -> torch.Tensor:
    return samples[:2] if len(samples) >= 2 else samples.repeat(2, 1, 1, 1)


def _max_abs_diff(
    model: nn.Module, file: Path, samples: torch.Tensor, shown: Path
) -> tuple[float, float]:
    """Largest |ORT - PyTorch| over ``samples`` run at batch 1 and at batch N (NaN kept),
    and the largest |PyTorch output|."""
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    full = samples if len(samples) >= 2 else _at_least_two(samples)
    diffs, scales = [], []
    for batch in (samples[:1], full):
        with torch.no_grad():
            expected = model(batch).numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        if actual.shape != expected.shape:
            raise ArtifactError(
                f"ONNX export of {shown} returns shape {list(actual.shape)} at batch "
                f"{len(batch)}, PyTorch {list(expected.shape)}; the batch axis is not dynamic"
            )
        diffs.append(np.max(np.abs(actual - expected)))
        scales.append(np.max(np.abs(expected)))
    return float(np.max(diffs)), float(np.max(scales))
