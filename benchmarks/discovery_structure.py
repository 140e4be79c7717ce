"""The channel groups discovered on real-size torchvision CNNs (3 x 32 x 32, 10 classes):
prunable groups, coupled groups, depthwise convs pruned, and the channel classes left
whole with their reasons. Discovery only, on the meta device (nothing is allocated or
run), so it takes seconds; docs/discovery.md's table is generated from the record.

    uv run --frozen python benchmarks/discovery_structure.py   # benchmarks/results/discovery.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torchvision
from bench_common import run_provenance

from pipeline.models import build_on_meta
from pipeline.pruning.discovery import discover

ROOT = Path(__file__).resolve().parents[1]
MODELS = (
    "resnet18",
    "resnet50",
    "wide_resnet50_2",
    "resnext50_32x4d",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "mnasnet1_0",
    "regnet_y_400mf",
    "shufflenet_v2_x1_0",
    "densenet121",
    "convnext_tiny",
)


def structure(name: str, shape: tuple[int, ...]) -> dict:
    model = build_on_meta(lambda: torchvision.models.get_model(name, weights=None, num_classes=10))
    found = discover(model, shape)
    groups = found.layout.groups.values()
    return {
        "model": name,
        "groups": len(groups),
        "coupled": sum(g.coupled for g in groups),
        "depthwise_pruned": sum(
            w.kind == "dwconv" and w.out_group is not None for w in found.layout.layers
        ),
        "whole": [{"module": module, "reason": reason} for module, reason in found.whole],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", type=int, nargs=3, default=[3, 32, 32])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/discovery.json"))
    args = p.parse_args()
    record = {
        "input_shape": args.input,
        **run_provenance(torch.device("cpu")),
        "torchvision": torchvision.__version__,
        "models": [structure(name, tuple(args.input)) for name in MODELS],
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    for m in record["models"]:
        print(m["model"], m["groups"], m["coupled"], m["depthwise_pruned"], len(m["whole"]))


if __name__ == "__main__":
    main()
