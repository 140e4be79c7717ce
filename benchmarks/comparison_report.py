"""Tables and words of the method comparison, generated from the records of
``benchmarks/results/compare_methods.json`` (written by ``compare_methods.py``).

The protocol: the best baseline of a cell is the one with the highest mean *validation*
top-1 over the seeds it shares with JST; test top-1 is reported, never used for a choice.
JST minus that baseline is paired by seed (a seed fixes the data split) and called a win or a
loss only where a two-sided paired t-test says so (``significance.py``). Ablations (``jst-*``) are
decided the same way, on validation, against JST.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from records import machine_text
from significance import ALPHA, MIN_SEEDS, PairedDifference, mean_std, paired_difference

BASELINES = ("scratch", "l1", "slimming", "random")
# the order of the method tables: methods, then JST with mechanisms changed
VARIANT_ORDER = (
    "jst",
    *BASELINES,
    "jst-no-freeze",
    "jst-no-gates",
    "jst-perturbation",
    "jst-no-thresholding",
    "jst-no-gates-no-thresholding",
    "jst-early-budget",
)
RESULTS = "benchmarks/results/compare_methods.json"
COMMAND = "uv run python benchmarks/compare_methods.py"


def run_key(record: dict) -> tuple:
    """What makes a run unique; records from before a field existed read its old default."""
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


def cell_of(record: dict) -> tuple:
    arch, _, _, _, search, finetune, precision, metric = run_key(record)
    return arch, search, finetune, precision, metric


def cell_name(cell: tuple) -> str:
    """``resnet20:12+6``, with ``:bf16`` for bf16 cells and ``:latency`` for latency
    budgets appended (the plain names predate them)."""
    arch, search, finetune, precision, metric = cell
    name = f"{arch}:{search}+{finetune}" + ("" if precision == "fp32" else f":{precision}")
    return name + ("" if metric == "flops" else f":{metric}")


def cell_title(cell: tuple) -> str:
    arch, search, finetune, precision, metric = cell
    budget = "" if metric == "flops" else ", latency budget"
    return f"{ARCH_NAMES.get(arch, arch)}, {search} + {finetune}, {precision}{budget}"


ARCH_NAMES = {"resnet20": "ResNet-20", "resnet56": "ResNet-56", "vgg16": "VGG-16"}


def cells(store: dict) -> dict:
    """Runs grouped by cell (model, search epochs, fine-tuning epochs, precision, budget
    metric), then by (budget, variant)."""
    grouped: dict = {}
    for r in store["runs"]:
        grouped.setdefault(cell_of(r), {}).setdefault((r["budget"], r["variant"]), []).append(r)
    return grouped


def by_seed(rows: dict, budget: float, variant: str) -> dict[int, dict]:
    return {r["seed"]: r for r in rows.get((budget, variant), [])}


def paired(a: dict[int, dict], b: dict[int, dict], seeds: list[int], key: str):
    """``key`` of a minus that of b, in points, seed by seed."""
    return paired_difference([100 * a[s][key] for s in seeds], [100 * b[s][key] for s in seeds])


def best_baseline(rows: dict, budget: float):
    """(name, {seed: record}, seeds shared with JST) of the baseline with the highest mean
    validation top-1 over the seeds JST also ran, or None. Baselines that share more seeds
    with JST come first: a mean over fewer seeds is not comparable, and a single lucky seed
    must not pick the baseline of a cell."""
    jst = set(by_seed(rows, budget, "jst"))
    candidates = []
    for name in BASELINES:
        runs = by_seed(rows, budget, name)
        seeds = sorted(set(runs) & jst)
        if seeds:
            val = statistics.fmean(runs[s]["val_top1"] for s in seeds)
            candidates.append((len(seeds), val, name))
    if not candidates:
        return None
    name = max(candidates)[2]
    runs = by_seed(rows, budget, name)
    return name, runs, sorted(set(runs) & jst)


def comparisons(store: dict) -> list[dict]:
    """JST against the best baseline, for every FLOPs-budget cell and budget."""
    return [
        c
        for cell, rows in sorted(cells(store).items())
        if cell[4] == "flops"
        for c in cell_comparisons(cell, rows)
    ]


def cell_comparisons(cell: tuple, rows: dict) -> list[dict]:
    """JST against the best baseline of each budget of one cell, paired by seed."""
    found = []
    for budget in sorted({b for b, v in rows if v == "jst"}, reverse=True):
        best = best_baseline(rows, budget)
        if best is None:
            continue
        name, base, seeds = best
        jst = by_seed(rows, budget, "jst")
        found.append(
            {
                "cell": cell,
                "budget": budget,
                "baseline": name,
                "baselines_run": [b for b in BASELINES if (budget, b) in rows],
                "seeds": seeds,
                "jst": jst,
                "base": base,
                "test": paired(jst, base, seeds, "test_top1"),
                "val": paired(jst, base, seeds, "val_top1"),
            }
        )
    return found


def _pct(runs: dict[int, dict], seeds: list[int], key: str) -> str:
    mean, std = mean_std(100 * runs[s][key] for s in seeds)
    return f"{mean:.2f} ± {std:.2f}"


def _ratio(c: dict, key: str) -> str:
    seeds = c["seeds"]
    if not all(key in c["jst"][s] and key in c["base"][s] for s in seeds):
        return "–"
    jst = statistics.fmean(c["jst"][s][key] for s in seeds)
    return f"{jst / statistics.fmean(c['base'][s][key] for s in seeds):.2f}"


def _diff(d: PairedDifference) -> str:
    text = f"{d.mean:+.2f} ± {d.std:.2f}"
    return f"**{text}**" if d.verdict in ("win", "loss") else text


def headline_table(store: dict) -> list[str]:
    """The README's summary: one row per FLOPs-budget cell and budget."""
    lines = [
        "| model, epochs (search + fine-tune), precision | budget | JST test top-1 "
        "| best baseline (on val) | its test top-1 | JST − baseline (points) | 95 % interval "
        "| p | verdict | seeds | training GMACs, JST / baseline | wall time, JST / baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons(store):
        lines.append(
            f"| {cell_title(c['cell'])} | {c['budget']} "
            f"| {_pct(c['jst'], c['seeds'], 'test_top1')} "
            f"| {c['baseline']} (of {', '.join(c['baselines_run'])}) "
            f"| {_pct(c['base'], c['seeds'], 'test_top1')} | {_diff(c['test'])} "
            f"| {c['test'].interval()} | {c['test'].p_text()} | {c['test'].verdict} "
            f"| {len(c['seeds'])} | {_ratio(c, 'train_gmacs')} | {_ratio(c, 'wall_s')} |"
        )
    return lines


def verdict_sentence(store: dict) -> str:
    """What the headline table says, in words that follow its tests."""
    groups: dict[str, list[str]] = {}
    for c in comparisons(store):
        groups.setdefault(c["test"].verdict, []).append(
            f"{cell_title(c['cell'])} at {c['budget']} ({c['test'].mean:+.2f})"
        )
    order = ["win", "loss", "within noise", f"n < {MIN_SEEDS}: not tested"]
    words = {
        "win": "JST wins (significant)",
        "loss": "JST loses (significant)",
        "within noise": "Within noise",
        f"n < {MIN_SEEDS}: not tested": f"Fewer than {MIN_SEEDS} seeds, not tested",
    }
    parts = [f"{words[v]}: {'; '.join(groups[v])}" for v in order if v in groups]
    return (
        f"Paired two-sided t-test on test top-1 at p < {ALPHA} over the seeds: "
        + ". ".join(parts)
        + "."
    )


def paired_table(cell: tuple, rows: dict) -> list[str]:
    """JST minus the best baseline of each budget, per seed, on test and validation."""
    lines = [
        "| budget | best baseline (on val) | JST − baseline, test, per seed (points) "
        "| mean ± std | 95 % interval | p | verdict | validation: mean ± std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cell_comparisons(cell, rows):
        test, val = c["test"], c["val"]
        pairs = zip(c["seeds"], test.diffs, strict=True)
        per_seed = ", ".join(f"seed {s}: {d:+.2f}" for s, d in pairs)
        lines.append(
            f"| {c['budget']} | {c['baseline']} | {per_seed} | {_diff(test)} "
            f"| {test.interval()} | {test.p_text()} | {test.verdict} "
            f"| {val.mean:+.2f} ± {val.std:.2f} |"
        )
    return lines


def time_table(cell: tuple, rows: dict) -> list[str]:
    """JST's measured time against its best baseline's, seed by seed: the search (JST's
    search, the baseline's pre-training or training) and the whole run (search +
    fine-tuning). Runs of one seed ran one after another on the same machine, not
    interleaved."""
    lines = [
        "| budget | best baseline (on val) | seed | JST search (s) | baseline search (s) "
        "| search ratio | JST run (s) | baseline run (s) | run ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cell_comparisons(cell, rows):
        jst, base = c["jst"], c["base"]
        seeds = [s for s in c["seeds"] if "search_s" in jst[s] and "search_s" in base[s]]
        search = [jst[s]["search_s"] / base[s]["search_s"] for s in seeds]
        run = [jst[s]["wall_s"] / base[s]["wall_s"] for s in seeds]
        for s, search_ratio, run_ratio in zip(seeds, search, run, strict=True):
            lines.append(
                f"| {c['budget']} | {c['baseline']} | {s} | {jst[s]['search_s']:.0f} "
                f"| {base[s]['search_s']:.0f} | {search_ratio:.2f} | {jst[s]['wall_s']:.0f} "
                f"| {base[s]['wall_s']:.0f} | {run_ratio:.2f} |"
            )
        if len(seeds) > 1:
            lines.append(
                f"| {c['budget']} | {c['baseline']} | median | | | "
                f"**{statistics.median(search):.2f}** | | | **{statistics.median(run):.2f}** |"
            )
    return lines


# an ablation's verdict is about the mechanism: a variant that loses means the default wins
ABLATION_VERDICTS = {"win": "variant better", "loss": "default better"}


def ablation_table(rows: dict) -> list[str]:
    """Each JST variant minus JST, paired by seed, decided on validation."""
    lines = [
        "| budget | variant | variant − jst, validation, per seed (points) | mean ± std "
        "| 95 % interval | p | verdict (val) | test: mean ± std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for budget, variant in sorted(rows, key=lambda bv: (-bv[0], _rank(bv[1]))):
        if not variant.startswith("jst-"):
            continue
        jst, other = by_seed(rows, budget, "jst"), by_seed(rows, budget, variant)
        seeds = sorted(set(jst) & set(other))
        if not seeds:
            continue
        val, test = paired(other, jst, seeds, "val_top1"), paired(other, jst, seeds, "test_top1")
        per_seed = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(seeds, val.diffs, strict=True))
        lines.append(
            f"| {budget} | {variant} | {per_seed} | {val.mean:+.2f} ± {val.std:.2f} "
            f"| {val.interval()} | {val.p_text()} "
            f"| {ABLATION_VERDICTS.get(val.verdict, val.verdict)} "
            f"| {test.mean:+.2f} ± {test.std:.2f} |"
        )
    return lines if len(lines) > 2 else []


def seed_table(rows: dict) -> list[str]:
    """Test / validation top-1 of every method, seed by seed."""
    variants = sorted({v for _, v in rows}, key=_rank)
    lines = [
        "| budget | seed | " + " | ".join(variants) + " |",
        "|---|---|" + "---|" * len(variants),
    ]
    for budget in sorted({b for b, _ in rows}, reverse=True):
        seeds = sorted({r["seed"] for (b, _), runs in rows.items() if b == budget for r in runs})
        for seed in seeds:
            cells_ = []
            for variant in variants:
                r = by_seed(rows, budget, variant).get(seed)
                cells_.append(
                    f"{100 * r['test_top1']:.2f} / {100 * r['val_top1']:.2f}" if r else "–"
                )
            lines.append(f"| {budget} | {seed} | " + " | ".join(cells_) + " |")
    return lines


def method_table(rows: dict) -> list[str]:
    lines = [
        "| budget | method | test top-1 (mean ± std) | val top-1 | FLOPs ratio "
        "| latency ratio | params | training cost (GMACs) | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (budget, variant), runs in sorted(
        rows.items(), key=lambda kv: (-kv[0][0], _rank(kv[0][1]))
    ):
        top1, std = mean_std(100 * r["test_top1"] for r in runs)
        val, _ = mean_std(100 * r["val_top1"] for r in runs)
        costs = [r["train_gmacs"] for r in runs if "train_gmacs" in r]
        cost = f"{statistics.fmean(costs):.0f}" if costs else "–"
        ratios = [r["latency_ratio"] for r in runs if "latency_ratio" in r]
        latency = f"{statistics.fmean(ratios):.3f}" if ratios else "–"
        lines.append(
            f"| {budget} | {variant} | {top1:.2f} ± {std:.2f} | {val:.2f} "
            f"| {statistics.fmean(r['flops_ratio'] for r in runs):.3f} | {latency} "
            f"| {statistics.fmean(r['params'] for r in runs) / 1e3:.1f} k | {cost} "
            f"| {statistics.fmean(r['wall_s'] for r in runs):.0f} | {len(runs)} |"
        )
    return lines


def provenance(rows: dict, store: dict) -> str:
    """Which code and machine a cell's records came from."""
    records = [r for runs in rows.values() for r in runs]
    commits = sorted({r["commit"] for r in records if "commit" in r})
    committed_in = sorted({r["committed_in"] for r in records if "committed_in" in r})
    parts = []
    if commits:
        parts.append(f"run at commit {', '.join(commits)}")
    if committed_in:
        parts.append(
            "code version not recorded; committed in "
            + ", ".join(committed_in)
            + " (the code that ran is that commit's parent or older)"
        )
    machines = sorted({machine_text(r["machine"]) for r in records})
    if len(commits) > 1:
        parts.append("**this cell mixes code versions**")
    elif len(committed_in) > 1 or (commits and committed_in):
        parts.append("**the code may differ between these commits**")
    return f"Records: {len(records)}; {'; '.join(parts)}. Machine: {'; '.join(machines)}."


def cell_section(cell: tuple, rows: dict, store: dict) -> list[str]:
    """One cell: where its records came from, its methods, JST against the best baseline
    with the measured time, and the ablations; each table only where the cell has rows."""
    lines = [provenance(rows, store), "", *method_table(rows)]
    if cell_comparisons(cell, rows):
        lines += ["", "JST against the best baseline, paired by seed:", ""]
        lines += paired_table(cell, rows)
    times = time_table(cell, rows)
    if len(times) > 2:
        lines += [
            "",
            "Measured time against the best baseline (each seed's runs one after another "
            "on one machine, not interleaved):",
            "",
            *times,
        ]
    ablations = ablation_table(rows)
    if ablations:
        lines += ["", "Ablations, paired by seed with JST, decided on validation:", ""]
        lines += ablations
    return lines


def comparison_markdown(store: dict, plots: dict[tuple, str]) -> str:
    """docs/comparison.md: every cell, its method table, JST against its best baseline and
    the ablations, with the provenance of its records."""
    sections = [
        "# JST vs baselines: every cell\n\n"
        "<!-- Written by `uv run python benchmarks/published.py` from "
        f"`{RESULTS}`; edit the records or the generator, not this file. -->\n\n"
        "Every method gets the same total epochs in a cell (search or pre-training, then "
        "fine-tuning). Data: `../shared/datasets/cifar10-dev` (32 px), split 70/10/20 by seed. "
        "The best baseline is chosen on validation top-1; test top-1 is reported. Differences "
        f"are paired by seed and tested with a two-sided paired t-test (p < {ALPHA}; 95 % "
        "interval of the mean difference); bold = significant. Ablations (`jst-*`, "
        "mechanisms of JST switched off or changed) are decided on validation. Training "
        "cost: multiply-accumulates of the training steps (forward + backward) that "
        "produce the compact model; wall times are per run, not measured side by side "
        "(see performance.md for the interleaved measurement).\n\n"
        f"Command: `{COMMAND}` (add `--arch`, `--search-epochs`, `--finetune-epochs`, "
        f"`--precision` for the other cells; records: `{RESULTS}`).\n\n"
        "## Summary: JST against the best baseline of each cell\n\n"
        + "\n".join(headline_table(store))
        + "\n\n"
        + verdict_sentence(store)
        + "\n"
    ]
    for cell, rows in sorted(cells(store).items()):
        section = f"## {cell_title(cell)}\n\n" + "\n".join(cell_section(cell, rows, store))
        if cell in plots:
            section += f"\n\n![Pareto]({plots[cell]})"
        sections.append(section + "\n")
    return "\n".join(sections)


def _rank(variant: str) -> tuple[int, str]:
    """Known variants in their declared order, then any others by name."""
    order = list(VARIANT_ORDER)
    return (order.index(variant), "") if variant in order else (len(order), variant)


def pareto_plot(rows: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = sorted({v for _, v in rows}, key=_rank)
    for variant in variants:
        points = sorted((b, runs) for (b, v), runs in rows.items() if v == variant)
        xs = [statistics.fmean(r["flops_ratio"] for r in runs) for _, runs in points]
        ys = [100 * statistics.fmean(r["test_top1"] for r in runs) for _, runs in points]
        errs = [mean_std(100 * r["test_top1"] for r in runs)[1] for _, runs in points]
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
