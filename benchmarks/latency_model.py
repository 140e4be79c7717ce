"""How well the latency model predicts: predicted vs measured whole-network latency on
random compact networks (ONNX Runtime, one process). Absolute ms follow the machine's
load; the latency *ratio* to the dense network, measured side by side, is what a budget
constrains, and is reported too.

    uv run --frozen python benchmarks/latency_model.py   # ResNet-20, batch 64, 1 thread
    uv run --frozen python benchmarks/latency_model.py --arch resnet56 --networks 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from bench_common import run_provenance

from pipeline.latency import LatencyModel, NetworkTimer, Runtime, width_choices
from pipeline.models import create_model
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.spec import ArchSpec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--input", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--networks", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="alternations with the dense network")
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache/jst-pipeline"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/latency_model.json"))
    args = p.parse_args()
    provenance = run_provenance(torch.device("cpu"))  # the code as it was imported

    shape = tuple(args.input)
    dense = create_model(args.arch, num_classes=10, in_channels=shape[0], input_size=shape[1])
    layout = dense.channel_layout()
    groups = layout.prunable_groups(True)
    runtime = Runtime(threads=args.threads, batch=args.batch)
    choices = width_choices(layout.dense_widths(), groups, 1, args.round_to)
    spec = ArchSpec(args.arch, shape, 10, layout.dense_widths())

    measure = NetworkTimer(spec, runtime)

    start = time.perf_counter()
    model = LatencyModel(dense, layout, shape, choices, runtime, Path(args.cache_dir), measure)
    build_s = time.perf_counter() - start
    flops = FlopsModel(dense, layout, shape)
    rng = random.Random(0)
    dense_widths = layout.dense_widths()
    rows = []
    for i in range(args.networks):
        widths = {g: rng.choice(c) for g, c in choices.items()}
        # The network and the dense one alternate, fastest of each: the measured ratio is
        # what a budget constrains, and it survives the load of a shared machine.
        timings = [(measure(widths), measure(dense_widths)) for _ in range(args.rounds)]
        measured = min(t for t, _ in timings)
        measured_ratio = measured / min(d for _, d in timings)
        predicted, predicted_ratio = model(widths), model.ratio(widths)
        rows.append(
            {
                "widths": widths,
                "flops_ratio": flops.ratio(widths),
                "predicted_ms": predicted,
                "measured_ms": measured,
                "error": predicted / measured - 1,
                "predicted_ratio": predicted_ratio,
                "measured_ratio": measured_ratio,
                "ratio_error": predicted_ratio / measured_ratio - 1,
            }
        )
        print(
            f"{i + 1}/{args.networks} FLOPs {flops.ratio(widths):.3f}: latency ratio predicted "
            f"{predicted_ratio:.3f}, measured {measured_ratio:.3f}"
        )
    errors = [abs(r["error"]) for r in rows]
    ratio_errors = [abs(r["ratio_error"]) for r in rows]
    record = {
        "arch": args.arch,
        "runtime": runtime.__dict__,
        "round_to": args.round_to,
        "build_s": build_s,
        "layer_points": len(model.table),
        "calibration": model.calibration,
        "dense_predicted_ms": model.dense_ms,
        "median_abs_error": statistics.median(errors),
        "max_abs_error": max(errors),
        "median_abs_ratio_error": statistics.median(ratio_errors),
        "max_abs_ratio_error": max(ratio_errors),
        "rounds": args.rounds,
        "networks": rows,
        **provenance,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "networks"}, indent=1))


if __name__ == "__main__":
    main()
