"""Stage 5, evaluate: accuracy and latency with ONNX Runtime; registers the model."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.artifacts import load_compact
from pipeline.data import load_prepared
from pipeline.evaluate import measure_latency, open_session, split_top_k
from pipeline.export import (
    check_onnx_matches,
    export_arguments,
    export_onnx,
    graph_inputs,
    input_format_of,
    read_metadata,
)
from pipeline.provenance import git_state, git_tags
from pipeline.pruning.flops import count_flops, count_params
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.quantize import QUANTIZATION_KEY
from stages.common import (
    COMPACT_DIR,
    DENSE_ONNX,
    ONNX_MODEL,
    PREPARED_DIR,
    ROOT,
    done,
    run_stage,
    start,
    tracked_stage,
    write_metrics,
)

# In metrics/evaluate.json (the rest, per-batch timings and counts, in metrics/details/):
# accuracy, what pruning kept and what it bought on the deployment runtime.
COMPARED = (
    "top1",
    "top5",
    "flops_ratio",
    "params",
    "latency_ms",
    "dense_latency_ms",
    "speedup",
    "int8_speedup",
)


def main() -> None:
    cfg = start("evaluate")
    e = cfg.evaluate
    with tracked_stage(cfg, "evaluate", [PREPARED_DIR, COMPACT_DIR, ONNX_MODEL, DENSE_ONNX]) as run:
        data = load_prepared(PREPARED_DIR)
        spec, compact = load_compact(COMPACT_DIR)
        dense_arch = dense_spec(spec.model, spec.input_shape, spec.num_classes)
        dense = build_model(dense_arch)
        for path, arch in ((ONNX_MODEL, spec), (DENSE_ONNX, dense_arch)):
            check_onnx_matches(path, spec.input_shape, spec.num_classes, arch.sha256)

        session, provider = open_session(ONNX_MODEL, e.device, intra_op_threads=e.threads)
        dense_session, _ = open_session(DENSE_ONNX, e.device, intra_op_threads=e.threads)
        sessions = {"dense": dense_session, "compact": session}
        onnx_metadata = read_metadata(ONNX_MODEL)
        input_format = input_format_of(onnx_metadata, ONNX_MODEL)  # what model.onnx takes

        def to_inputs(images):
            return graph_inputs(images, input_format, data.mean, data.std)

        accuracy = split_top_k(session, data.test.batches(256), to_inputs)
        quantization = onnx_metadata.get(QUANTIZATION_KEY, "none")
        with tempfile.TemporaryDirectory() as tmp:
            if quantization != "none":  # the fp32 compact model, side by side, same input
                fp32_path = Path(tmp) / "model_fp32.onnx"
                export_onnx(
                    compact,
                    spec.input_shape,
                    fp32_path,
                    **export_arguments(data.test.head(16), input_format, data.mean, data.std),
                )
                sessions["fp32"] = open_session(fp32_path, e.device, intra_op_threads=e.threads)[0]
                accuracy["fp32_top1"] = split_top_k(
                    sessions["fp32"], data.test.batches(256), to_inputs
                )["top1"]
            latency = measure_latency(
                sessions,
                spec.input_shape,
                batch_sizes=e.batch_sizes,
                warmup=e.warmup,
                repeats=e.repeats,
                seed=cfg.seed,
            )
        metrics = summarize(accuracy, latency, e.batch_sizes, provider)
        metrics["quantization"] = quantization
        dense_flops, flops = (
            count_flops(dense, spec.input_shape),
            count_flops(compact, spec.input_shape),
        )
        metrics |= {
            "dense_flops": dense_flops,
            "flops": flops,
            "flops_ratio": flops / dense_flops,
            "dense_params": count_params(dense),
            "params": count_params(compact),
            "arch_sha256": spec.sha256,
            "test_size": len(data.test),
        }
        write_metrics("evaluate", metrics, COMPARED)

        numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        run.log_metrics(numeric)
        run.set_tags({"arch_sha256": spec.sha256, "onnxruntime.provider": provider})
        version = run.register_onnx_model(
            ONNX_MODEL,
            cfg.tracking.registered_model,
            tags={
                "arch_sha256": spec.sha256,
                "flops_ratio": f"{metrics['flops_ratio']:.4f}",
                "flops": metrics["flops"],
                "dense_flops": metrics["dense_flops"],
                "params": metrics["params"],
                "dense_params": metrics["dense_params"],
                "top1": f"{metrics['top1']:.4f}",
                "method": cfg.search.method,
                "quantization": quantization,
                **git_tags(git_state(ROOT)),  # what `jst reproduce` checks out
            },
            alias=cfg.tracking.alias,
        )
        # The version is logged on the pipeline run as metric model_version by the registry
        # call (also when it had to be spooled).
        run.finish_pipeline(numeric)
        done("evaluate", evaluate_summary(cfg, metrics, version))


def evaluate_summary(cfg, metrics: dict, version: str | None) -> str:
    """``test top-1 99.16 % (359 images); batch 64: 3.18 ms compact vs 5.31 ms dense (1.67x,
    CPUExecutionProvider); registered compact-cnn version 4 (@newest)``"""
    registered = (
        f"registered {cfg.tracking.registered_model} version {version} (@{cfg.tracking.alias})"
        if version is not None
        else f"registration of {cfg.tracking.registered_model} spooled until the tracking "
        "store answers (`jst tracking replay`)"
    )
    return (
        f"test top-1 {100 * metrics['top1']:.2f} % ({metrics['test_size']} images); "
        f"batch {metrics['latency_batch']}: {metrics['latency_ms']:.2f} ms compact vs "
        f"{metrics['dense_latency_ms']:.2f} ms dense ({metrics['speedup']:.2f}x, "
        f"{metrics['provider']}); {registered}"
    )


def summarize(accuracy: dict, latency: dict, batch_sizes: list[int], provider: str) -> dict:
    """Flatten latency into metrics; the headline numbers use the largest batch."""
    metrics = {"top1": accuracy["top1"], "top5": accuracy["top5"], "provider": provider}
    if "fp32_top1" in accuracy:
        metrics["fp32_top1"] = accuracy["fp32_top1"]
    prefixes = {"dense": "dense_", "compact": "", "fp32": "fp32_"}
    for batch in batch_sizes:
        for model, timing in latency[f"batch_{batch}"].items():
            prefix = prefixes[model]
            metrics[f"{prefix}latency_b{batch}_median_ms"] = timing["median_ms"]
            metrics[f"{prefix}latency_b{batch}_p90_ms"] = timing["p90_ms"]
    headline = latency[f"batch_{max(batch_sizes)}"]
    metrics["latency_batch"] = max(batch_sizes)
    for model, prefix in prefixes.items():
        if model in headline:
            metrics[f"{prefix}latency_ms"] = headline[model]["median_ms"]
    metrics["speedup"] = metrics["dense_latency_ms"] / metrics["latency_ms"]
    if "fp32" in headline:  # what int8 adds on top of pruning
        metrics["int8_speedup"] = metrics["fp32_latency_ms"] / metrics["latency_ms"]
    return metrics


if __name__ == "__main__":
    run_stage(main)
