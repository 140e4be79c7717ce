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
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import benchmark_split, finetune
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
# name -> (method, overrides of search.jst); the jst-* are ablations, one mechanism
# switched from its params.yaml setting at a time
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
    p.add_argument("--data", default=str(ROOT.parent / "shared/datasets/cifar10-dev"))
    p.add_argument("--dataset", default="imagefolder")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--arch", default="resnet20")
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
    p.add_argument(
        "--jst-variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "JSON"),
        help="an extra JST variant to run: its name and search.jst overrides as JSON, e.g.\n"
        "--jst-variant few-gate-steps '{\"alpha_steps\": 5}' --variants few-gate-steps",
    )
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
    seed_everything(seed)
    start = time.perf_counter()
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
    wall_s = time.perf_counter() - start
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
        "train_gmacs": training_gmacs(variant, method, cfg, result, data, dense_flops),
        "arch_sha256": result.spec.sha256,
        "widths": dict(sorted(result.spec.widths.items())),
        "search_epochs": cfg.search.epochs,
        "finetune_epochs": cfg.finetune.epochs,
        "finetune_lr": cfg.finetune.lr,
        "total_epochs": epochs,
        "precision": args.precision,
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


def run_key(record: dict) -> tuple:
    return (
        record.get("arch", "resnet20"),
        record["variant"],
        record["budget"],
        record["seed"],
        record.get("search_epochs", 12),
        record.get("finetune_epochs", 6),
        record.get("precision", "fp32"),
        record.get("budget_metric", "flops"),
    )


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
        store["machine"] = machine()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=2) + "\n")
        tmp.replace(path)
    return store


def machine() -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return {
        "device": device or platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _mean_std(values):
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


BASELINES = ("scratch", "l1", "slimming", "random")


def cells(store: dict) -> dict:
    """Runs grouped by cell (model, search epochs, fine-tuning epochs, precision), then by
    (budget, variant)."""
    grouped: dict = {}
    for r in store["runs"]:
        grouped.setdefault(cell_of(r), {}).setdefault((r["budget"], r["variant"]), []).append(r)
    return grouped


def cell_of(record: dict) -> tuple:
    arch, _, _, _, search, finetune, precision, metric = run_key(record)
    return arch, search, finetune, precision, metric


def cell_name(cell: tuple) -> str:
    """``resnet20:12+6``, with ``:bf16`` for bf16 cells and ``:latency`` for latency
    budgets appended (the plain names predate them)."""
    arch, search, finetune, precision, metric = cell
    name = f"{arch}:{search}+{finetune}" + ("" if precision == "fp32" else f":{precision}")
    return name + ("" if metric == "flops" else f":{metric}")


def method_table(rows: dict) -> list[str]:
    order = list(VARIANTS)
    lines = [
        "| budget | method | test top-1 (mean ± std) | val top-1 | FLOPs ratio "
        "| latency ratio | params | training cost (GMACs) | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (budget, variant), runs in sorted(
        rows.items(), key=lambda kv: (-kv[0][0], _rank(order, kv[0][1]))
    ):
        top1, std = _mean_std(r["test_top1"] for r in runs)
        val, _ = _mean_std(r["val_top1"] for r in runs)
        costs = [r["train_gmacs"] for r in runs if "train_gmacs" in r]
        cost = f"{statistics.fmean(costs):.0f}" if costs else "–"
        ratios = [r["latency_ratio"] for r in runs if "latency_ratio" in r]
        latency = f"{statistics.fmean(ratios):.3f}" if ratios else "–"
        lines.append(
            f"| {budget} | {variant} | {100 * top1:.2f} ± {100 * std:.2f} | {100 * val:.2f} "
            f"| {statistics.fmean(r['flops_ratio'] for r in runs):.3f} | {latency} "
            f"| {statistics.fmean(r['params'] for r in runs) / 1e3:.1f} k | {cost} "
            f"| {statistics.fmean(r['wall_s'] for r in runs):.0f} | {len(runs)} |"
        )
    return lines


def paired_differences(rows: dict) -> list[str]:
    """JST minus the best baseline (highest mean test top-1 over the seeds both ran), per
    seed: the seed fixes the data split, so the pairs share their test images."""
    lines = [
        "| budget | best baseline | JST − best baseline, per seed (points) | mean ± std |",
        "|---|---|---|---|",
    ]
    for budget in sorted({b for b, _ in rows}, reverse=True):
        best = best_baseline(rows, budget)
        if best is None:
            continue
        name, runs, seeds = best
        jst = {r["seed"]: r["test_top1"] for r in rows[(budget, "jst")]}
        diffs = [100 * (jst[s] - runs[s]["test_top1"]) for s in seeds]
        per_seed = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(seeds, diffs, strict=True))
        mean, std = _mean_std(diffs)
        lines.append(f"| {budget} | {name} | {per_seed} | {mean:+.2f} ± {std:.2f} |")
    return lines


def best_baseline(rows: dict, budget: float):
    """(name, {seed: record}, seeds shared with JST) of the baseline with the highest mean
    test top-1 over the seeds JST also ran, or None."""
    jst = {r["seed"] for r in rows.get((budget, "jst"), [])}
    candidates = []
    for name in BASELINES:
        runs = {r["seed"]: r for r in rows.get((budget, name), [])}
        seeds = sorted(set(runs) & jst)
        if seeds:
            mean = statistics.fmean(runs[s]["test_top1"] for s in seeds)
            candidates.append((mean, name, runs, seeds))
    return max(candidates, key=lambda c: c[0])[1:] if candidates else None


def headline_table(store: dict) -> list[str]:
    """One row per FLOPs-budget cell and budget: JST against its best baseline, paired by
    seed, and what each costs to train (the README's summary)."""
    lines = [
        "| model, epochs (search + fine-tune), precision | budget | JST test top-1 "
        "| best baseline | its test top-1 | JST − baseline, paired | seeds "
        "| training GMACs, JST / baseline |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell, rows in sorted(cells(store).items()):
        arch, search, finetune, precision, metric = cell
        if metric != "flops":
            continue
        for budget in sorted({b for b, v in rows if v == "jst"}, reverse=True):
            best = best_baseline(rows, budget)
            if best is None:
                continue
            name, runs, seeds = best
            jst = {r["seed"]: r for r in rows[(budget, "jst")]}
            jst_top1 = _mean_std(100 * jst[s]["test_top1"] for s in seeds)
            base_top1 = _mean_std(100 * runs[s]["test_top1"] for s in seeds)
            diff = _mean_std(100 * (jst[s]["test_top1"] - runs[s]["test_top1"]) for s in seeds)
            cost = statistics.fmean(jst[s]["train_gmacs"] for s in seeds) / statistics.fmean(
                runs[s]["train_gmacs"] for s in seeds
            )
            lines.append(
                f"| {arch}, {search} + {finetune}, {precision} | {budget} "
                f"| {jst_top1[0]:.2f} ± {jst_top1[1]:.2f} | {name} "
                f"| {base_top1[0]:.2f} ± {base_top1[1]:.2f} | {diff[0]:+.2f} ± {diff[1]:.2f} "
                f"| {len(seeds)} | {cost:.2f} |"
            )
    return lines


def write_report(store: dict, path: Path) -> None:
    sections = [
        "## Summary: JST against the best baseline of each cell\n\n"
        + "\n".join(headline_table(store))
        + "\n"
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    for cell, rows in sorted(cells(store).items()):
        arch, search, finetune, precision, metric = cell
        plot = pareto_plot(
            rows, path.with_name(f"comparison_{cell_name(cell).replace(':', '_')}.png")
        )
        numerics = "" if precision == "fp32" else ", bf16 autocast + channels_last"
        numerics += "" if metric == "flops" else ", budget = fraction of dense latency"
        sections.append(
            f"## {arch}, {search} search + {finetune} fine-tuning epochs{numerics}\n\n"
            + "\n".join(method_table(rows))
            + "\n\nPaired by seed:\n\n"
            + "\n".join(paired_differences(rows))
            + f"\n\n{diagnostic_notes(rows)}![Pareto]({plot.name})\n"
        )
    text = "\n".join(sections)
    path.write_text(
        "# JST vs baselines\n\n"
        "Every method gets the same total epochs in a cell (search or pre-training, then "
        "fine-tuning). Data: `../shared/datasets/cifar10-dev` (32 px), split 70/10/20 by "
        "seed; decisions on validation only, test reported. Training cost: "
        "multiply-accumulates of the training steps (forward + backward) that produce the "
        f"compact model. Machine: {describe(store)}.\n\n"
        "Command: `uv run python benchmarks/compare_methods.py` (add `--arch`, "
        "`--search-epochs`, `--finetune-epochs`, `--precision` for the other cells; results: "
        "`benchmarks/results/compare_methods.json`).\n\n" + text
    )
    print(text)


def diagnostic_notes(rows: dict) -> str:
    if not any(variant in DIAGNOSTICS for _, variant in rows):
        return ""
    return (
        "`jst-arch-from-scratch` is a diagnostic, not a fair entry: JST's architecture "
        "(same seed) freshly initialised and trained as `scratch` trains its widths, "
        "after the search's epochs (`total_epochs` in the JSON records).\n\n"
    )


def _rank(order: list[str], variant: str) -> tuple[int, str]:
    """Known variants in their declared order, then any others by name."""
    return (order.index(variant), "") if variant in order else (len(order), variant)


def describe(store: dict) -> str:
    m = store.get("machine", {})
    return f"{m.get('device')}, {m.get('cpus')} CPU threads, torch {m.get('torch')}"


def pareto_plot(rows: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in VARIANTS:
        points = sorted((b, runs) for (b, v), runs in rows.items() if v == variant)
        if not points:
            continue
        xs = [statistics.fmean(r["flops_ratio"] for r in runs) for _, runs in points]
        ys = [100 * statistics.fmean(r["test_top1"] for r in runs) for _, runs in points]
        errs = [100 * _mean_std([r["test_top1"] for r in runs])[1] for _, runs in points]
        ax.errorbar(
            xs,
            ys,
            yerr=errs,
            marker="o",
            capsize=3,
            label=variant,
            linestyle="-" if not variant.startswith("jst-") else ":",
        )
    ax.set_xlabel("kept FLOPs ratio")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
