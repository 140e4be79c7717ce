"""Compare JST with the baselines at equal FLOPs budgets and equal total epochs.

Every method gets ``--search-epochs`` for its search phase (JST: warm-up + iterations;
l1/slimming/random: dense pre-training; scratch: training the thinned network) and then
``--finetune-epochs`` of fine-tuning, so total epochs are equal. Data are split into
train/validation/test by seed; test accuracy is reported, and nothing is tuned on it.

Results accumulate in a JSON file (one record per method x budget x seed; finished runs
are skipped, so the benchmark resumes), then a Markdown table and a Pareto plot are
written from it.

    uv run python benchmarks/compare_methods.py                      # the documented run
    uv run python benchmarks/compare_methods.py --report-only        # rebuild table + plot
    uv run python benchmarks/compare_methods.py --variants jst-arch-from-scratch \
        --budgets 0.3 --results /tmp/diag.json --report /tmp/diag.md   # diagnostic, see DIAGNOSTICS
"""

from __future__ import annotations

import argparse
import fcntl
import json
import tempfile
import time
from pathlib import Path

from bench_common import (
    add_data_arguments,
    add_jst_variant_argument,
    benchmark_split,
    finetune,
    run_provenance,
)
from comparison_report import (
    cell_name,
    cell_of,
    cells,
    comparison_markdown,
    pareto_plot,
    run_key,
)
from search_cost import shipped_jst_knobs

from pipeline.config import parse_config
from pipeline.data import normalize
from pipeline.evaluate import measure_latency, open_session
from pipeline.export import export_onnx
from pipeline.methods import SearchContext, get_method
from pipeline.methods.baselines import train_from_scratch
from pipeline.pruning.flops import count_flops, count_params
from pipeline.pruning.slicing import build_model
from pipeline.train import evaluate, resolve_device, seed_everything

ROOT = Path(__file__).resolve().parents[1]
# name -> (method, overrides of search.jst); the jst-* are ablations, mechanisms
# switched from their params.yaml setting
VARIANTS = {
    "jst": ("jst", {}),
    "scratch": ("scratch", {}),
    "l1": ("l1", {}),
    "slimming": ("slimming", {}),
    "random": ("random", {}),
    "jst-no-freeze": ("jst", {"freeze_fraction": 0.0}),
    "jst-no-gates": ("jst", {"alpha_lr": 0.0}),
    "jst-perturbation": ("jst", {"perturbation": True}),
    "jst-no-thresholding": ("jst", {"thresholding": False}),
    # both learned parts of the search off: every candidate keeps the first filters of each
    # group at one shared keep-fraction (nested sub-networks, progressively thinner)
    "jst-no-gates-no-thresholding": ("jst", {"alpha_lr": 0.0, "thresholding": False}),
    "jst-early-budget": ("jst", {"anneal_fraction": 0.25}),  # the final budget at K/4
}
# Not methods but diagnostics (name -> the variant whose architecture they retrain), run
# only when named in --variants (at the ablation budgets).
LATENCY_THREADS = 1  # ONNX Runtime CPU threads of every latency measured or budgeted here

# Training numerics of a benchmark run, as train.* settings; the same for every method.
PRECISIONS = {
    "fp32": {"precision": "fp32", "memory_format": "contiguous"},
    "bf16": {"precision": "bf16", "memory_format": "channels_last"},
}

DIAGNOSTICS = {
    # JST's architecture (default knobs, same seed) freshly initialised and trained as
    # `scratch` trains its uniform widths: is a gap to the baselines in the architecture
    # or in the weights the search trained? Costs the search's epochs on top (not equal).
    "jst-arch-from-scratch": "jst",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument(
        "--ablation-budgets",
        nargs="+",
        type=float,
        default=[0.3],
        help="budgets at which the jst-* ablations run",
    )
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--search-epochs", type=int, default=12)
    p.add_argument("--finetune-epochs", type=int, default=6)
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="bf16: bf16 autocast + channels_last for every method (AMX CPUs, GPUs);\n"
        "a cell holds one precision, so fp32 and bf16 runs are never compared",
    )
    p.add_argument(
        "--budget-metric",
        choices=["flops", "latency"],
        default="flops",
        help="latency: the budgets are fractions of the dense model's latency on ONNX\n"
        "Runtime CPU, batch 64, 1 thread (search.target_latency), not of its FLOPs",
    )
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/compare_methods.json"))
    p.add_argument("--report", default=str(ROOT / "docs/comparison.md"))
    p.add_argument("--report-only", action="store_true")
    add_jst_variant_argument(p, "an extra JST variant to run (name it in --variants too)")
    args = p.parse_args()
    for name, overrides in args.jst_variant:
        VARIANTS[name] = ("jst", json.loads(overrides))
    unknown = sorted(set(args.variants) - set(VARIANTS) - set(DIAGNOSTICS))
    if unknown:
        p.error(f"unknown --variants {unknown}; define them with --jst-variant NAME JSON")
    return args


def config_for(args, method: str, budget: float, seed: int, jst_overrides: dict):
    return parse_config(
        {
            "seed": seed,
            "model": {"arch": args.arch},
            "train": {
                "device": args.device,
                **PRECISIONS[args.precision],
                "batch_size": 128,
                "augment": {"crop_padding": max(1, args.image_size // 8), "hflip": True},
            },
            "evaluate": {"threads": LATENCY_THREADS},
            "search": {
                "method": method,
                **(
                    {"target_latency": budget, "latency_batch": 64}
                    if args.budget_metric == "latency"
                    else {"target_flops": budget}
                ),
                "epochs": args.search_epochs,
                "lr": 0.1,
                "round_to": args.round_to,
                "jst": {**shipped_jst_knobs(), **jst_overrides},
            },
            "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr},
        }
    )


def latencies_ms(models: dict, input_shape, samples) -> dict[str, float]:
    """Median batch-64 latency of each model on ONNX Runtime CPU, timed interleaved."""
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(model.cpu().eval(), input_shape, path, sample_inputs=samples)
            sessions[name] = open_session(path, "cpu", intra_op_threads=LATENCY_THREADS)[0]
        timing = measure_latency(sessions, input_shape, batch_sizes=[64], warmup=5, repeats=30)
    return {name: t["median_ms"] for name, t in timing["batch_64"].items()}


def run_one(args, variant: str, budget: float, seed: int) -> dict:
    method, overrides = VARIANTS[DIAGNOSTICS.get(variant, variant)]
    cfg = config_for(args, method, budget, seed, overrides)
    data = benchmark_split(args.dataset, args.data, args.image_size, seed)
    device = resolve_device(cfg.train.device)
    provenance = run_provenance(device)  # the code as it was imported, before a long run
    seed_everything(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = get_method(method)(SearchContext(cfg, data, device))
    epochs = cfg.search.epochs + cfg.finetune.epochs
    if variant in DIAGNOSTICS:
        seed_everything(seed)
        ctx = SearchContext(cfg, data, device)
        result = train_from_scratch(ctx, result.spec.widths, name=variant.replace("-", "_"))
        epochs += cfg.search.epochs
    search_s = time.perf_counter() - start
    model = result.model.to(device)
    finetune(model, data, cfg, seed, device, f"{variant} finetune")
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    dense = build_model(result.dense_spec)
    dense_flops = count_flops(dense, data.input_shape)
    samples = normalize(data.test.images[:16], data.mean, data.std)
    # Untrained dense weights: latency does not depend on their values.
    latency = latencies_ms({"compact": model, "dense": dense}, data.input_shape, samples)
    return {
        "arch": args.arch,
        "variant": variant,
        "method": method,
        "budget": budget,
        "seed": seed,
        "val_top1": evaluate(model, data.val, data, device)["top1"],
        "test_top1": evaluate(model, data.test, data, device)["top1"],
        "flops_ratio": count_flops(model, data.input_shape) / dense_flops,
        "params": count_params(model),
        "latency_b64_ms": latency["compact"],
        "dense_latency_b64_ms": latency["dense"],
        "latency_ratio": latency["compact"] / latency["dense"],
        "budget_metric": args.budget_metric,
        **{k: v for k, v in result.summary.items() if k.startswith("predicted_latency")},
        "search_s": search_s,
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "train_gmacs": training_gmacs(variant, method, cfg, result, data, dense_flops),
        "arch_sha256": result.spec.sha256,
        "widths": dict(sorted(result.spec.widths.items())),
        "search_epochs": cfg.search.epochs,
        "finetune_epochs": cfg.finetune.epochs,
        "finetune_lr": cfg.finetune.lr,
        "total_epochs": epochs,
        "precision": args.precision,
        **provenance,
    }


def training_gmacs(variant, method, cfg, result, data, dense_flops: int) -> float:
    """Multiply-accumulates spent training, forward + backward (3x forward), to produce
    the compact model: epochs x training images x FLOPs of the network trained then.
    JST's candidate scoring and BN re-estimation (forward passes over a few batches)
    are left out; they are in its wall time."""
    compact = result.summary["flops"]
    if method == "jst":
        search = cfg.search.jst.warmup_epochs * dense_flops + sum(
            h["epochs"] * h["flops_ratio"] * dense_flops for h in result.history
        )
    elif method == "scratch":
        search = cfg.search.epochs * compact
    else:  # dense pre-training, then pruning
        search = cfg.search.epochs * dense_flops
    if variant in DIAGNOSTICS:
        search += cfg.search.epochs * compact
    epochs_macs = search + cfg.finetune.epochs * compact
    return 3 * len(data.train.labels) * epochs_macs / 1e9


def planned_runs(args):
    for budget in args.budgets:
        for variant in args.variants:
            ablation = variant in DIAGNOSTICS or (
                variant != "jst" and VARIANTS[variant][0] == "jst"
            )
            if ablation and budget not in args.ablation_budgets:
                continue
            for seed in args.seeds:
                yield variant, budget, seed


def main() -> None:
    args = parse_args()
    results_path = Path(args.results)
    store = load_store(results_path)
    if not args.report_only:
        for variant, budget, seed in planned_runs(args):
            key = (
                args.arch,
                variant,
                budget,
                seed,
                args.search_epochs,
                args.finetune_epochs,
                args.precision,
                args.budget_metric,
            )
            if key in {run_key(r) for r in load_store(results_path)["runs"]}:
                continue
            print(f"== {key}", flush=True)
            record = run_one(args, variant, budget, seed)
            store = add_record(results_path, record, args)
    write_report(store, Path(args.report))


def load_store(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runs": []}


def add_record(path: Path, record: dict, args) -> dict:
    """Append under a lock, re-reading the file: several benchmark processes (other
    models, schedules or seeds) may share one results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = load_store(path)
        store["runs"] = [r for r in store["runs"] if run_key(r) != run_key(record)] + [record]
        setup = {k: v for k, v in vars(args).items() if k not in ("report_only",)}
        store.setdefault("setups", {})[cell_name(cell_of(record))] = setup
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=2) + "\n")
        tmp.replace(path)
    return store


def write_report(store: dict, path: Path) -> None:
    """The full report (docs/comparison.md by default) and a Pareto plot per cell beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = {}
    for cell, rows in cells(store).items():
        plot = path.with_name(f"comparison_{cell_name(cell).replace(':', '_')}.png")
        plots[cell] = pareto_plot(rows, plot).name
    path.write_text(comparison_markdown(store, plots))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
