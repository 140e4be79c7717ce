"""How much of each model pruning reaches (``pipeline.pruning.coverage``): the share of conv
output channels in channel groups and the hidden linear features that prune, at 3x32x32,
for every model ``jst models`` verifies and a few it does not. docs/discovery.md's coverage
table is generated from the record, beside the same measure of an earlier tree.

    uv run python benchmarks/coverage.py                    # benchmarks/results/coverage.json
    # the "before" column: this script and pipeline/pruning/coverage.py copied into a
    # worktree of an earlier commit, run there with --label before --out <this repo's record>
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from pipeline.pruning.coverage import model_coverage

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "coverage.json"
UNVERIFIED = ("googlenet", "alexnet", "convnext_tiny")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="now", help="the record's column (now, before)")
    parser.add_argument("--models", nargs="*", help="default: the verified list + a few")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.models:
        from pipeline.models.registry import verified_models  # absent from earlier trees

        args.models = [*verified_models(), *UNVERIFIED]
    names = args.models
    commit = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    rows = {}
    for name in names:
        c = model_coverage(name)
        rows[name] = {"conv_share": c.conv_share, "linear_features": c.prunable_linear_features}
        print(name, rows[name], flush=True)
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    record[args.label] = {"commit": commit, "input_shape": [3, 32, 32], "models": rows}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.label} to {args.out}")


if __name__ == "__main__":
    main()
