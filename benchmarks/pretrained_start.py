"""Pruning from the user's trained dense model (``model.weights``) vs pruning after the
method's own pre-training, on the same data split, for ``l1``.

For each seed: a dense network is trained for ``--dense-epochs`` from its own initialisation
(seed + 1000) on the seed's training split only; it stands for the model a user brings. Then

- ``own``: ``l1`` pre-trains from scratch for ``--search-epochs``, prunes, fine-tunes for
  ``--finetune-epochs`` (the pipeline without weights);
- ``supplied``: ``l1`` starts from the trained dense model (``model.weights``, ``search.epochs:
  0``: no further pre-training), prunes, fine-tunes for ``--finetune-epochs``.

Both prune to the same kept-FLOPs budget; test top-1 is reported, nothing is tuned on it.
Results accumulate in a JSON file (finished runs are skipped), then a Markdown report.

    uv run python benchmarks/pretrained_start.py                 # the documented run
    uv run python benchmarks/pretrained_start.py --report-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench_common import add_data_arguments, benchmark_split, finetune, run_provenance
from compare_methods import PRECISIONS
from records import machine_text
from safetensors.torch import save_file

from pipeline.config import parse_config
from pipeline.methods import SearchContext, get_method
from pipeline.pruning.flops import count_flops
from pipeline.pruning.slicing import dense_model
from pipeline.train import evaluate, resolve_device, seed_everything, train

ROOT = Path(__file__).resolve().parents[1]
USER_MODEL_SEED_OFFSET = 1000  # the user's model: its own initialisation and data order
ARMS = ("own", "supplied")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(p)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dense-epochs", type=int, default=30)
    p.add_argument("--search-epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "jst-pipeline" / "pretrained_start")
    )
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/pretrained_start.json"))
    p.add_argument("--report", default=str(ROOT / "docs/pretrained_start.md"))
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def config_for(args, seed: int, *, search_epochs: int, weights: str | None = None):
    return parse_config(
        {
            "seed": seed,
            "model": {"arch": args.arch, "weights": weights},
            "train": {
                "device": args.device,
                **PRECISIONS[args.precision],
                "batch_size": 128,
                "augment": {"crop_padding": max(1, args.image_size // 8), "hflip": True},
            },
            "search": {
                "method": "l1",
                "target_flops": args.budget,
                "epochs": search_epochs,
                "lr": 0.1,
                "round_to": 8,
            },
            "finetune": {"epochs": args.finetune_epochs, "lr": 0.01},
        }
    )


def user_model(args, seed: int, data, device) -> tuple[Path, dict]:
    """The trained dense model a user would bring, as a safetensors file (made once)."""
    path = Path(args.cache) / f"{args.arch}_seed{seed}_{args.dense_epochs}ep.safetensors"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    user_seed = seed + USER_MODEL_SEED_OFFSET
    cfg = config_for(args, user_seed, search_epochs=args.dense_epochs)
    seed_everything(user_seed)
    dense = dense_model(args.arch, data.input_shape, data.num_classes).model.to(device)
    start = time.perf_counter()
    train(
        dense,
        data,
        epochs=args.dense_epochs,
        lr=0.1,
        settings=cfg.train,
        seed=user_seed,
        device=device,
        desc="user's dense model",
    )
    info = {
        "dense_val_top1": evaluate(dense, data.val, data, device)["top1"],
        "dense_train_s": time.perf_counter() - start,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in dense.state_dict().items()}, path)
    info_path.write_text(json.dumps(info))
    return path, info


def run_arm(args, arm: str, seed: int) -> dict:
    data = benchmark_split(args.dataset, args.data, args.image_size, seed)
    device = resolve_device(args.device)
    extra = {}
    if arm == "supplied":
        weights, extra = user_model(args, seed, data, device)
        cfg = config_for(args, seed, search_epochs=0, weights=str(weights))
    else:
        cfg = config_for(args, seed, search_epochs=args.search_epochs)
    seed_everything(seed)
    start = time.perf_counter()
    result = get_method("l1")(SearchContext(cfg, data, device))
    model = result.model.to(device)
    finetune(model, data, cfg, seed, device, f"{arm} finetune")
    dense_flops = count_flops(
        dense_model(args.arch, data.input_shape, data.num_classes).model, data.input_shape
    )
    return {
        "arm": arm,
        "seed": seed,
        "arch": args.arch,
        "budget": args.budget,
        "pipeline_epochs": cfg.search.epochs + cfg.finetune.epochs,
        "dense_epochs": args.dense_epochs if arm == "supplied" else None,
        "val_top1": evaluate(model, data.val, data, device)["top1"],
        "test_top1": evaluate(model, data.test, data, device)["top1"],
        "flops_ratio": count_flops(model, data.input_shape) / dense_flops,
        "wall_s": time.perf_counter() - start,
        "arch_sha256": result.spec.sha256,
        "precision": args.precision,
        **extra,
    }


def run_key(args, arm: str, seed: int) -> tuple:
    return (
        args.arch,
        args.budget,
        arm,
        seed,
        args.search_epochs,
        args.finetune_epochs,
        args.dense_epochs,
        args.precision,
    )


def main() -> None:
    args = parse_args()
    path = Path(args.results)
    store = json.loads(path.read_text()) if path.exists() else {"runs": []}
    if not args.report_only:
        for seed in args.seeds:
            for arm in ARMS:
                key = run_key(args, arm, seed)
                if any(tuple(r["key"]) == key for r in store["runs"]):
                    continue
                print(f"== {key}", flush=True)
                provenance = run_provenance(resolve_device(args.device))  # before the run
                record = run_arm(args, arm, seed) | {"key": list(key)} | provenance
                store["runs"].append(record)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(store, indent=2) + "\n")
                tmp.replace(path)
    write_report(store, args, Path(args.report))


def _mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def write_report(store: dict, args, path: Path) -> None:
    path.write_text(report_text(store, args))
    print(f"wrote {path}")


def machine_of(runs: list[dict]) -> str:
    return "; ".join(sorted({machine_text(r["machine"]) for r in runs}))


def report_text(store: dict, args: argparse.Namespace | None = None) -> str:
    """docs/pretrained_start.md, from the records (for the documented run by default)."""
    args = args or parse_args([])
    runs = [r for r in store["runs"] if tuple(r["key"])[:2] == (args.arch, args.budget)]
    by_arm = {arm: {r["seed"]: r for r in runs if r["arm"] == arm} for arm in ARMS}
    seeds = sorted(set(by_arm["own"]) & set(by_arm["supplied"]))
    lines = [
        "# Pruning from a trained dense model (`model.weights`)",
        "",
        "`uv run python benchmarks/pretrained_start.py` "
        f"(`--arch {args.arch} --budget {args.budget} --dense-epochs {args.dense_epochs} "
        f"--search-epochs {args.search_epochs} --finetune-epochs {args.finetune_epochs} "
        f"--precision {args.precision}`); results: `benchmarks/results/pretrained_start.json`. "
        f"Machine: {machine_of(runs)}. Data: `../shared/datasets/cifar10-dev` "
        "(5,085 CIFAR-10 images, 70/10/20 split per seed). `l1` at kept-FLOPs "
        f"{args.budget}; the user's dense model is trained on the seed's training split only "
        "(own initialisation and data order), then handed over as a safetensors file.",
        "",
        "| arm | pipeline epochs (pre-train + fine-tune) | test top-1 (mean ± std) | "
        "val top-1 | wall time of the pipeline (s) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rows = [by_arm[arm][s] for s in seeds]
        if not rows:
            continue
        lines.append(
            f"| {arm} | {rows[0]['pipeline_epochs']} | {_mean_std([r['test_top1'] for r in rows])}"
            f" | {_mean_std([r['val_top1'] for r in rows])} | "
            f"{statistics.mean(r['wall_s'] for r in rows):.0f} | {len(rows)} |"
        )
    if seeds:
        diffs = [by_arm["supplied"][s]["test_top1"] - by_arm["own"][s]["test_top1"] for s in seeds]
        dense = [by_arm["supplied"][s].get("dense_val_top1") for s in seeds]
        lines += [
            "",
            f"Paired by seed, supplied − own test top-1: {_mean_std(diffs)} points "
            f"(per seed: {', '.join(f'{100 * d:+.2f}' for d in diffs)}). The user's dense models "
            f"({args.dense_epochs} epochs, not counted in the pipeline's epochs) reached "
            f"{_mean_std([d for d in dense if d is not None])} validation top-1. Wall times "
            "are means over seeds, noisy when other jobs share the machine: the epochs are "
            "the cost measure.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
