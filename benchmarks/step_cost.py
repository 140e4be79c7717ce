"""CPU time of one training step: dense ResNet-20 vs uniformly thinned ones, with and
without JST's learnable gates (applied through every gate point's affine parameters),
timed in ``--rounds`` rounds in one process, each round timing dense and every thinned one.

    uv run --frozen python benchmarks/step_cost.py                  # bf16 + channels_last
    uv run --frozen python benchmarks/step_cost.py --precision fp32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from bench_common import run_provenance
from compare_methods import PRECISIONS

from pipeline.config import parse_config
from pipeline.methods.jst.gates import WeightsAndGates, learnable_gates
from pipeline.models import create_model
from pipeline.pruning.budget import uniform_budget_widths
from pipeline.pruning.flops import FlopsModel
from pipeline.pruning.slicing import build_model
from pipeline.pruning.spec import ArchSpec
from pipeline.train import make_optimizer, train_steps

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (3, 32, 32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3, help="alternations of dense and thinned")
    p.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    p.add_argument("--round-to", type=int, nargs="+", default=[8, 16])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/step_cost.json"))
    args = p.parse_args()
    provenance = run_provenance(torch.device("cpu"))  # the code as it was imported
    settings = parse_config({"train": {"device": "cpu", **PRECISIONS[args.precision]}}).train
    generator = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(128, *SHAPE, generator=generator),
            torch.randint(0, 10, (128,), generator=generator),
        )
        for _ in range(4)
    ]

    def step_s(model: torch.nn.Module, gated_widths: dict | None = None) -> float:
        """CPU seconds per step, after two warm-up steps."""

        def run(net, optimizer):
            train_steps(net, endless(batches), 2, optimizer, settings)
            start = time.process_time()
            train_steps(net, endless(batches), args.steps, optimizer, settings)
            return (time.process_time() - start) / args.steps

        if gated_widths is None:
            return run(model, make_optimizer(model, 0.05, settings))
        alpha = {g: torch.zeros(w) for g, w in gated_widths.items()}
        with learnable_gates(model, model.channel_layout(), alpha) as net:
            return run(net, WeightsAndGates(make_optimizer(model, 0.05, settings), net, 0.01, 3.0))

    dense = create_model("resnet20", num_classes=10, in_channels=3, input_size=32)
    layout = dense.channel_layout()
    flops = FlopsModel(dense, layout, SHAPE)
    spec = ArchSpec("resnet20", SHAPE, 10, layout.dense_widths())
    thinned = {}
    for round_to in args.round_to:
        for target in args.targets:
            widths = uniform_budget_widths(flops, layout.prunable_groups(True), target, 1, round_to)
            thinned[(round_to, target)] = (widths, dataclasses.replace(spec, widths=widths))
    # Each round times dense and every thinned network, so a slow spell hits all alike.
    per_round: dict = {key: {"plain": [], "gated": []} for key in thinned}
    dense_steps = []
    for i in range(args.rounds):
        dense_s = step_s(dense)
        dense_steps.append(dense_s)
        for key, (widths, thin) in thinned.items():
            per_round[key]["plain"].append(step_s(build_model(thin)) / dense_s)
            per_round[key]["gated"].append(step_s(build_model(thin), widths) / dense_s)
        print(f"round {i + 1}/{args.rounds}: dense step {dense_s:.3f} s", flush=True)
    rows = []
    for (round_to, target), ratios in per_round.items():
        widths = thinned[(round_to, target)][0]
        rows.append(
            {
                "round_to": round_to,
                "target_flops": target,
                "flops_ratio": flops.ratio(widths),
                "plain_over_dense": statistics.median(ratios["plain"]),
                "gated_over_dense": statistics.median(ratios["gated"]),
                "plain_over_dense_rounds": ratios["plain"],
                "gated_over_dense_rounds": ratios["gated"],
            }
        )
        print(rows[-1])
    record = {
        "precision": args.precision,
        "dense_step_cpu_s": statistics.median(dense_steps),
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "rows": rows,
        **provenance,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


def endless(batches):
    while True:
        yield from batches


if __name__ == "__main__":
    main()
