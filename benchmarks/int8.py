"""int8 vs fp32: a compact ResNet-20 trained on cifar10-dev (32 px), quantized with the
export stage's function, then test top-1 and batch-64 ONNX Runtime CPU latency of the
dense, the fp32 compact and the int8 compact model, timed interleaved in one process.

    uv run --frozen python benchmarks/int8.py        # about 5 min on 2 cores; 3 seeds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from bench_common import run_provenance
from compare_methods import PRECISIONS
from search_cost import search_config

from pipeline.data import load_dataset, normalize
from pipeline.evaluate import measure_latency, open_session, top_k_accuracy
from pipeline.export import export_onnx
from pipeline.methods import SearchContext, get_method
from pipeline.pruning.slicing import build_model
from pipeline.quantize import quantize_int8
from pipeline.train import resolve_device, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cifar10-dev"))
    p.add_argument("--target", type=float, default=0.5, help="FLOPs budget of the compact model")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--round-to", type=int, default=8, help="kept widths' multiple")
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/int8.json"))
    args = p.parse_args()
    provenance = run_provenance(torch.device("cpu"))  # the code as it was imported
    runs = [run_seed(args, seed) for seed in args.seeds]
    record = {
        "arch": "resnet20",
        "target_flops": args.target,
        "epochs": args.epochs,
        "threads": args.threads,
        "round_to": args.round_to,
        "runs": runs,
        **provenance,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


def run_seed(args, seed: int) -> dict:
    data = load_dataset(
        "imagefolder",
        args.data,
        download=False,
        image_size=32,
        val_fraction=0.1,
        test_fraction=0.2,
        seed=seed,
    )
    cfg = search_config("resnet20", args.target, args.epochs, PRECISIONS["bf16"])
    cfg = cfg.model_copy(update={"seed": seed})
    search = cfg.search.model_copy(update={"method": "scratch", "round_to": args.round_to})
    cfg = cfg.model_copy(update={"search": search})
    seed_everything(seed)
    result = get_method("scratch")(SearchContext(cfg, data, resolve_device("cpu")))
    images = normalize(data.test.images, data.mean, data.std)
    labels = data.test.labels.numpy()
    calibration = normalize(data.train.images[: args.calibration_images], data.mean, data.std)
    dense = build_model(dataclasses.replace(result.spec, widths=result.dense_spec.widths))
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: Path(tmp) / f"{name}.onnx" for name in ("dense", "fp32", "int8")}
        export_onnx(
            result.model.cpu().eval(), data.input_shape, paths["fp32"], sample_inputs=images[:16]
        )
        export_onnx(
            dense.eval(), data.input_shape, paths["dense"], sample_inputs=images[:16], tolerance=1e9
        )
        quantize_int8(paths["fp32"], paths["int8"], calibration.numpy())
        sessions = {
            name: open_session(path, "cpu", intra_op_threads=args.threads)[0]
            for name, path in paths.items()
        }
        top1 = {
            name: top_k_accuracy(sessions[name], images.numpy(), labels)["top1"]
            for name in ("fp32", "int8")
        }
        timing = measure_latency(
            sessions, data.input_shape, batch_sizes=(64,), warmup=5, repeats=30, seed=seed
        )["batch_64"]
    ms = {name: t["median_ms"] for name, t in timing.items()}
    return {
        "seed": seed,
        "test_top1_fp32": top1["fp32"],
        "test_top1_int8": top1["int8"],
        "latency_b64_ms": ms,
        "int8_speedup_over_fp32": ms["fp32"] / ms["int8"],
        "int8_speedup_over_dense": ms["dense"] / ms["int8"],
        "fp32_speedup_over_dense": ms["dense"] / ms["fp32"],
    }


if __name__ == "__main__":
    main()
