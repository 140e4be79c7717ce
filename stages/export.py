"""Stage 4, export: the fine-tuned compact model (and the dense reference) to ONNX."""

from __future__ import annotations

import json

from pipeline.artifacts import load_compact
from pipeline.data import load_prepared, normalize
from pipeline.export import export_onnx
from pipeline.pruning.slicing import build_model, dense_spec
from stages.common import (
    COMPACT_DIR,
    DENSE_ONNX,
    METRICS_DIR,
    ONNX_MODEL,
    PREPARED_DIR,
    run_stage,
    start,
    tracked_stage,
    write_json,
)

PARITY_IMAGES = 64


def main() -> None:
    cfg = start("export")
    with tracked_stage(cfg, "export", [PREPARED_DIR, COMPACT_DIR]) as run:
        data = load_prepared(PREPARED_DIR)
        spec, model = load_compact(COMPACT_DIR)
        samples = normalize(data.test.images[:PARITY_IMAGES], data.mean, data.std)
        metadata = {
            "arch_sha256": spec.sha256,
            "arch_spec": spec.canonical_json(),
            "classes": json.dumps(data.classes),
            "mean": json.dumps(data.mean),
            "std": json.dumps(data.std),
        }
        report = export_onnx(
            model,
            spec.input_shape,
            ONNX_MODEL,
            sample_inputs=samples,
            opset=cfg.export.opset,
            metadata=metadata,
            tolerance=cfg.export.tolerance,
        )
        # The dense architecture is exported only as the latency reference.
        dense = dense_spec(spec.model, spec.input_shape, spec.num_classes)
        dense_report = export_onnx(
            build_model(dense),
            dense.input_shape,
            DENSE_ONNX,
            sample_inputs=samples,
            opset=cfg.export.opset,
            metadata={"arch_sha256": dense.sha256},
            tolerance=cfg.export.tolerance,
        )
        metrics = {
            "max_abs_diff": report.max_abs_diff,
            "dense_max_abs_diff": dense_report.max_abs_diff,
            "parity_images": report.num_checked,
            "opset": cfg.export.opset,
            "arch_sha256": spec.sha256,
        }
        write_json(METRICS_DIR / "export.json", metrics)
        run.log_metrics({"max_abs_diff": report.max_abs_diff})
        run.log_artifact(ONNX_MODEL, "onnx")


if __name__ == "__main__":
    run_stage(main)
