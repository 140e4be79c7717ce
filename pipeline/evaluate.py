"""Evaluate ONNX models with ONNX Runtime: accuracy and latency.

``select_providers`` and ``open_session`` choose the execution provider honestly:
onnxruntime-gpu lists the CUDA provider as *available* even on machines without a GPU,
so CUDA is requested only when torch sees a GPU, and a session that silently fell back to
the CPU is reported loudly. ``measure_latency`` interleaves the sessions' runs so that
machine noise affects the compared models alike.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pipeline.errors import ArtifactError, ConfigError, restore_output_hint

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def select_providers(device: str) -> list[str]:
    """Execution providers for ``device`` ("auto", "cpu" or "cuda"), preferred first.

    "auto" uses CUDA when a GPU is visible and ONNX Runtime has the CUDA provider, else
    the CPU; "cuda" without a usable GPU raises ``ConfigError`` (a ``PipelineError``).
    """
    if device not in DEVICES:
        raise ConfigError(f"evaluate device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return [CPU]
    gpu = torch.cuda.is_available()
    cuda_ep = CUDA in ort.get_available_providers()
    if gpu and cuda_ep:
        return [CUDA, CPU]
    if device == "cuda":
        reason = "no CUDA GPU visible" if not gpu else "onnxruntime has no CUDA provider"
        raise ConfigError(
            f"device 'cuda' requested but {reason}; set train.device / the evaluate device "
            "to 'auto' or 'cpu'"
        )
    return [CPU]


def open_session(
    path: str | os.PathLike, device: str, *, intra_op_threads: int | None = None
) -> tuple[ort.InferenceSession, str]:
    """Open ``path`` on ``device``; return the session and the provider that really runs it.

    ``intra_op_threads`` fixes the CPU thread count (stable latency); None keeps ONNX
    Runtime's default. A CUDA request that ends on the CPU is warned about loudly.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX model file {path} does not exist; run the export stage")
    providers = select_providers(device)
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(intra_op_threads), providers=providers
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        here = Path.cwd()
        shown = path.relative_to(here) if path.is_absolute() and path.is_relative_to(here) else path
        raise ArtifactError(
            f"ONNX Runtime cannot load {shown}: {str(exc).rstrip('. ')}. The file is damaged or "
            f"not an ONNX model: {restore_output_hint(shown)}"
        ) from exc
    used = session.get_providers()[0]
    if providers[0] == CUDA and used != CUDA:
        _warn_fallback(path, used)
    return session, used


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """The options of every session the pipeline times or evaluates with."""
    options = ort.SessionOptions()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1  # a sequential CNN graph gains nothing from more
    # Denormal activations cost up to 75x (ResNet-56, batch 1: 154 ms vs 2 ms); flushing
    # them to zero changes no prediction. ORT applies this to its worker threads;
    # ``time_interleaved`` flushes on the calling thread, where one-thread sessions run.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    return options


def _warn_fallback(path: Path, used: str) -> None:
    message = (
        f"CUDA EXECUTION PROVIDER FAILED TO LOAD for {path}: ONNX Runtime fell back to {used}. "
        "Accuracy is unaffected but latencies are CPU numbers, not GPU ones. Check that the "
        "CUDA/cuDNN libraries matching onnxruntime-gpu are installed, or set the device to 'cpu'."
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    log.warning(message)


def top_k_accuracy(
    session: ort.InferenceSession,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 256,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracies (fractions in [0, 1]) keyed "top1", "top5", ...

    ``images`` are what the session takes (normalized float32 N x C x H x W, or uint8
    N x H x W x C for an image-input model: ``pipeline.export.graph_inputs``), ``labels``
    int64 N. A k above the number of classes is clipped to it (top5 of a 3-class model is 1.0).
    """
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (> 0), got {len(images)}/{len(labels)}")
    labels = np.asarray(labels, dtype=np.int64)
    hits = dict.fromkeys(ks, 0)
    for start in range(0, len(images), batch_size):
        logits = _run(session, images[start : start + batch_size])
        truth = labels[start : start + batch_size, None]
        # Classes by descending score; column j holds each row's (j+1)-th best class.
        ranked = np.argsort(-logits, axis=1, kind="stable")
        for k in ks:
            hits[k] += int(np.any(ranked[:, : min(k, logits.shape[1])] == truth, axis=1).sum())
    return {f"top{k}": hits[k] / len(images) for k in ks}


def split_top_k(
    session: ort.InferenceSession,
    batches,
    to_inputs: Callable[[torch.Tensor], np.ndarray],
    *,
    ks: tuple[int, ...] = (1, 5),
) -> dict[str, float]:
    """``top_k_accuracy`` over ``batches`` of uint8 images and labels (a split's
    ``batches()``: in memory or streamed), each turned into the session's input by
    ``to_inputs``; one batch in memory at a time."""
    hits, count = dict.fromkeys(ks, 0), 0
    for images, labels in batches:
        result = top_k_accuracy(session, to_inputs(images), labels.numpy(), ks=ks)
        for k in ks:
            hits[k] += round(result[f"top{k}"] * len(labels))
        count += len(labels)
    if count == 0:
        raise ValueError("no images to measure accuracy on")
    return {f"top{k}": hits[k] / count for k in ks}


def measure_latency(
    sessions: dict[str, ort.InferenceSession],
    input_shape: tuple[int, int, int],
    *,
    batch_sizes: tuple[int, ...] = (1, 64),
    warmup: int = 10,
    repeats: int = 50,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Time every session on the same random input, per batch size.

    ``input_shape`` is the classifier's C x H x W; a session whose graph takes uint8 images
    (N x H x W x C) gets random uint8 images of that size, one taking tensors gets standard
    normal N x C x H x W. Runs are interleaved (each repeat runs every session once, the
    starting session rotating) so that load spikes and clock changes hit all sessions
    alike. A run is one
    ``session.run`` call, host-to-host (input copy and output copy included).

    Returns ``{"batch_<B>": {<session name>: {"median_ms", "p90_ms", "mean_ms",
    "repeats"}}}``, for example ``result["batch_64"]["compact"]["median_ms"]``.
    """
    if not sessions or warmup < 0 or repeats < 1:
        raise ValueError("need at least one session, warmup >= 0 and repeats >= 1")
    rng = np.random.default_rng(seed)
    result = {}
    channels, height, width = input_shape
    for batch in batch_sizes:
        tensors = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        images = rng.integers(0, 256, (batch, height, width, channels), dtype=np.uint8)
        runners = {
            name: _runner(session, images if _input_dtype(session) == np.uint8 else tensors)
            for name, session in sessions.items()
        }
        result[f"batch_{batch}"] = time_interleaved(runners, warmup=warmup, repeats=repeats)
    return result


def time_interleaved(
    runners: dict[str, Callable[[], object]], *, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Time argument-free callables, interleaved; ``{name: {"median_ms", ...}}``.

    Each repeat calls every runner once, the starting one rotating, so that load spikes
    and clock changes hit all of them alike. Any backend can be timed this way (an ONNX
    Runtime session, a PyTorch module); a GPU runner must synchronize before it returns.
    """
    if not runners or warmup < 0 or repeats < 1:
        raise ValueError("need at least one runner, warmup >= 0 and repeats >= 1")
    with flushed_denormals():
        for _ in range(warmup):
            for run in runners.values():
                run()
        times = _interleaved_times(runners, repeats)
    return {name: _summary(ms) for name, ms in times.items()}


@contextmanager
def flushed_denormals():
    """Denormals flushed to zero on this thread (FTZ/DAZ), as deployments should run:
    ORT sets it on the calling thread for the first session of a process only."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def speedup(dense_ms: float, compact_ms: float) -> float:
    """How many times faster the compact model is (> 1 means faster)."""
    return dense_ms / compact_ms


def _runner(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def _interleaved_times(
    runners: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)  # rotate who goes first: no model always runs on a cold cache
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _summary(ms: list[float]) -> dict[str, float]:
    values = np.asarray(ms)
    return {
        "median_ms": float(np.median(values)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "repeats": len(values),
    }


def _input_dtype(session: ort.InferenceSession) -> type[np.generic]:
    """The numpy type of the session's input: ONNX Runtime names it "tensor(uint8)" etc."""
    kind = session.get_inputs()[0].type
    return np.uint8 if kind == "tensor(uint8)" else np.float32


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=_input_dtype(session))}
    return session.run(None, feed)[0]
