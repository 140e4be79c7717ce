"""What a 0.5 FLOPs budget buys on torchvision CNNs whose concatenations and grouped
convolutions now prune: parameters and measured ONNX Runtime CPU latency, dense vs pruned
to uniform widths at the default budget (``search.target_flops`` 0.5, ``round_to`` 8).

Untrained weights (latency does not depend on their values); both models exported with
the pipeline's exporter and timed by ``pipeline.evaluate.measure_latency`` (interleaved,
on the same random input), ``--rounds`` times.

    uv run python benchmarks/any_cnn_latency.py   # benchmarks/results/any_cnn_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from bench_common import ROOT, run_provenance

from pipeline.config import SearchConfig
from pipeline.evaluate import measure_latency, open_session
from pipeline.export import export_onnx
from pipeline.methods.base import compact_from_dense, flops_setup
from pipeline.pruning.budget import uniform_budget_widths
from pipeline.pruning.flops import count_flops, count_params
from pipeline.pruning.groups import indices_from_scores
from pipeline.pruning.slicing import dense_model

MODELS = ("densenet121", "resnext50_32x4d", "regnet_y_400mf")
OUT = ROOT / "benchmarks" / "results" / "any_cnn_latency.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


def pruned(name: str, input_shape) -> tuple[torch.nn.Module, torch.nn.Module]:
    defaults = SearchConfig()
    torch.manual_seed(0)
    setup = flops_setup(dense_model(name, input_shape, 10), defaults.prune_residual, 0.5)
    widths = uniform_budget_widths(
        setup.flops, setup.groups, defaults.target_flops, defaults.k_min, defaults.round_to
    )
    scores = {g: torch.rand(group.width) for g, group in setup.layout.groups.items()}
    _, compact = compact_from_dense(setup, indices_from_scores(scores, widths))
    return setup.model.eval(), compact.eval()


def measure(name: str, args) -> dict:
    shape = (3, args.side, args.side)
    dense, compact = pruned(name, shape)
    sample = torch.randn(2, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for label, model in (("dense", dense), ("compact", compact)):
            path = Path(tmp) / f"{label}.onnx"
            export_onnx(model, shape, path, sample_inputs=sample, tolerance=1e-2)
            sessions[label] = open_session(path, "cpu")[0]
        rounds = [
            measure_latency(sessions, shape, batch_sizes=(args.batch,), repeats=args.repeats)
            for _ in range(args.rounds)
        ]
    key = f"batch_{args.batch}"
    ms = {label: [r[key][label]["median_ms"] for r in rounds] for label in ("dense", "compact")}
    speedups = [d / c for d, c in zip(ms["dense"], ms["compact"], strict=True)]
    return {
        "flops_ratio": count_flops(compact, shape) / count_flops(dense, shape),
        "params": count_params(compact),
        "dense_params": count_params(dense),
        "dense_ms": ms["dense"],
        "compact_ms": ms["compact"],
        "speedup_median": statistics.median(speedups),
    }


def main() -> None:
    args = parse_args()
    record = {
        "side": args.side,
        "batch": args.batch,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "models": {},
        **run_provenance(torch.device("cpu")),
    }
    for name in MODELS:
        record["models"][name] = measure(name, args)
        print(name, record["models"][name], flush=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
