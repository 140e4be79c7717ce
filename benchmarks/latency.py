"""Inference latency: dense vs compact ResNet-56 (32x32), ONNX Runtime and PyTorch eager.

The compact networks are built the way a user of the default ``l1`` method gets them:
widths from the ``l1`` criterion's budget projection (``MagnitudeImportance.widths``, every
group prunable, ``round_to`` 16, 8 and 1 for comparison) at kept-FLOPs 0.5 and 0.3, the kept
filters chosen by L1 norm, sliced physically out of the dense network
(``compact_from_dense``), exported with the pipeline's ``export_onnx`` and opened with
its ``open_session``. Weights are random: latency does not depend on their values.

All models of one (backend, threads, batch) cell are timed side by side, their runs
interleaved (``pipeline.evaluate.time_interleaved``), median of many repeats, so that the
noise of a shared machine hits dense and compact alike. ``flops_speedup`` is dense FLOPs /
compact FLOPs counted on the built models; ``latency_speedup`` is dense / compact median.

    uv run --frozen python benchmarks/latency.py            # writes benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from bench_common import run_provenance
from torch import nn

from pipeline.errors import PipelineError
from pipeline.evaluate import CUDA, open_session, time_interleaved
from pipeline.export import export_onnx
from pipeline.methods.base import compact_from_dense, flops_setup
from pipeline.pruning.flops import count_flops
from pipeline.pruning.groups import indices_from_scores
from pipeline.pruning.importance import MagnitudeImportance
from pipeline.pruning.slicing import dense_model
from pipeline.pruning.spec import ArchSpec

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "latency.json"
TARGET_FRACTION = 0.85  # latency_speedup >= 0.85 x flops_speedup at batch 64, ort-cpu


@dataclass
class Variant:
    """One network to time: the dense reference or a compact one."""

    name: str
    keep: float | None  # kept-FLOPs target (None: dense)
    round_to: int | None
    model: nn.Module
    spec: ArchSpec
    flops: int


def build_variants(
    arch: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    keeps: tuple[float, ...],
    round_tos: tuple[int, ...],
    seed: int = 0,
) -> list[Variant]:
    """The dense model first, then one compact model per (keep, round_to)."""
    torch.manual_seed(seed)
    setup = flops_setup(dense_model(arch, input_shape, num_classes), True, 1.0)
    model, spec = setup.model.eval(), setup.spec
    criterion = MagnitudeImportance()
    scores = criterion(model, setup.layout)
    variants = [Variant("dense", None, None, model, spec, count_flops(model, input_shape))]
    for keep in keeps:
        for round_to in round_tos:
            try:
                widths = criterion.widths(setup.flops, scores, setup.groups, keep, 1, round_to)
            except PipelineError as err:  # e.g. round_to 16 keeps too much at keep 0.3
                print(f"skipped keep={keep} round_to={round_to}: {err}")
                continue
            compact_spec, compact = compact_from_dense(setup, indices_from_scores(scores, widths))
            variants.append(
                Variant(
                    f"keep{keep}_round{round_to}",
                    keep,
                    round_to,
                    compact.eval(),
                    compact_spec,
                    count_flops(compact, input_shape),
                )
            )
    return variants


def export_variants(variants: list[Variant], folder: Path, opset: int = 18) -> dict[str, Path]:
    """Export every variant with the pipeline's exporter (checked against PyTorch)."""
    samples = torch.randn(4, *variants[0].spec.input_shape, generator=torch.Generator())
    paths = {}
    for v in variants:
        path = folder / f"{v.name}.onnx"
        # Random weights give large logits; hold the parity check to a relative 1e-5.
        with torch.no_grad():
            scale = max(1.0, float(v.model(samples).abs().max()))
        export_onnx(
            v.model,
            v.spec.input_shape,
            path,
            sample_inputs=samples,
            opset=opset,
            tolerance=1e-5 * scale,
        )
        paths[v.name] = path
    return paths


def ort_runners(
    paths: dict[str, Path], device: str, threads: int, x: np.ndarray
) -> dict[str, Callable[[], object]]:
    runners = {}
    for name, path in paths.items():
        session, used = open_session(path, device, intra_op_threads=threads)
        if device == "cuda" and used != CUDA:
            raise RuntimeError(f"ONNX Runtime fell back to {used}; no ort-cuda numbers")
        feed = {session.get_inputs()[0].name: x}
        runners[name] = lambda session=session, feed=feed: session.run(None, feed)
    return runners


def torch_runners(
    variants: list[Variant], device: str, x: np.ndarray
) -> dict[str, Callable[[], object]]:
    batch = torch.from_numpy(x).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runners = {}
    for v in variants:
        model = v.model.to(device).eval()

        def run(model=model):
            with torch.inference_mode():
                out = model(batch)
            sync()
            return out

        runners[v.name] = run
    return runners


def records_for_cell(
    variants: list[Variant],
    timings: dict[str, dict[str, float]],
    *,
    backend: str,
    batch: int,
    threads: int | None,
) -> list[dict]:
    """One record per compact variant, against the dense model timed in the same cell."""
    dense, compacts = variants[0], variants[1:]
    base = timings[dense.name]
    records = []
    for v in compacts:
        t = timings[v.name]
        flops_speedup = dense.flops / v.flops
        latency_speedup = base["median_ms"] / t["median_ms"]
        records.append(
            {
                "backend": backend,
                "batch": batch,
                "threads": threads,
                "keep": v.keep,
                "round_to": v.round_to,
                "flops_speedup": flops_speedup,
                "latency_speedup": latency_speedup,
                "latency_over_flops_speedup": latency_speedup / flops_speedup,
                "dense_median_ms": base["median_ms"],
                "compact_median_ms": t["median_ms"],
                "dense_p90_ms": base["p90_ms"],
                "compact_p90_ms": t["p90_ms"],
                "repeats": t["repeats"],
                "dense_flops": dense.flops,
                "compact_flops": v.flops,
                "widths": dict(sorted(v.spec.widths.items())),
            }
        )
    return records


def backends(cuda: bool) -> Iterator[tuple[str, str, str]]:
    """(record name, framework, device) of every backend this machine can run."""
    yield "ort-cpu", "ort", "cpu"
    yield "torch-cpu", "torch", "cpu"
    if cuda:
        yield "ort-cuda", "ort", "cuda"
        yield "torch-cuda", "torch", "cuda"


def measure(
    variants: list[Variant],
    paths: dict[str, Path],
    *,
    batches: tuple[int, ...],
    threads: tuple[int, ...],
    repeats: dict[int, int],
    warmup: int,
    cuda: bool,
    log: Callable[[str], None] = print,
) -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for backend, framework, device in backends(cuda):
        # Thread counts are a CPU setting; a GPU cell is timed once.
        for n in threads if device == "cpu" else (None,):
            if n is not None:
                torch.set_num_threads(n)
            for batch in batches:
                x = rng.standard_normal((batch, *variants[0].spec.input_shape), dtype=np.float32)
                runners = (
                    ort_runners(paths, device, n, x)
                    if framework == "ort"
                    else torch_runners(variants, device, x)
                )
                timings = time_interleaved(runners, warmup=warmup, repeats=repeats[batch])
                cell = records_for_cell(variants, timings, backend=backend, batch=batch, threads=n)
                records += cell
                for r in cell:
                    log(_line(r))
    for v in variants:
        v.model.to("cpu")
    return records


def machine() -> dict:
    model_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in _lscpu().splitlines()
            if line.startswith("Model name")
        ),
        platform.processor() or "unknown",
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": model_name,
        "logical_cpus": os.cpu_count(),
        "gpu": gpu,
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _lscpu() -> str:
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def _line(r: dict) -> str:
    flag = (
        ""
        if r["batch"] != 64 or r["backend"] != "ort-cpu"
        else ("  ok" if r["latency_over_flops_speedup"] >= TARGET_FRACTION else "  SHORT")
    )
    return (
        f"{r['backend']:10s} threads={r['threads']} batch={r['batch']:3d} keep={r['keep']} "
        f"round_to={r['round_to']}: dense {r['dense_median_ms']:.2f} ms, compact "
        f"{r['compact_median_ms']:.2f} ms, latency x{r['latency_speedup']:.2f} vs FLOPs "
        f"x{r['flops_speedup']:.2f} ({r['latency_over_flops_speedup']:.2f}){flag}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument("--round-to", type=int, nargs="+", default=[16, 8, 1])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats-batch1", type=int, default=100)
    p.add_argument("--repeats", type=int, default=15, help="repeats of the other batch sizes")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULT)
    args = p.parse_args()
    commit = run_provenance(torch.device("cpu"))["commit"]  # the code as it was imported

    cuda = torch.cuda.is_available() and CUDA in ort.get_available_providers()
    variants = build_variants(args.arch, (3, 32, 32), 10, tuple(args.keeps), tuple(args.round_to))
    repeats = {b: args.repeats_batch1 if b == 1 else args.repeats for b in args.batches}
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_variants(variants, Path(tmp))
        records = measure(
            variants,
            paths,
            batches=tuple(args.batches),
            threads=tuple(args.threads),
            repeats=repeats,
            warmup=args.warmup,
            cuda=cuda,
        )
    info = machine() | {
        "commit": commit,
        "arch": args.arch,
        "input_shape": [3, 32, 32],
        "warmup": args.warmup,
        "ort_graph_optimization": "ORT_ENABLE_ALL (ONNX Runtime's default, NCHWc layouts)",
    }
    records = [r | info for r in records]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
