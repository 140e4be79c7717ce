"""The measured tables of docs/jst_experiments.md, generated from the committed records
``benchmarks/results/*.json``: the JST tuning after the defect fixes (``jst_tuning.json``),
the ablations with Gumbel perturbation on, the search-cost history (``search_cost*.json``),
the step cost (``step_cost.json``) and JST v1 (``compare_methods_jst_v1.json``,
``jst_variants.json``).

``BLOCKS`` has the shape of ``published.BLOCKS``: (file, block name) -> a function that
returns the Markdown between the block's markers. ``uv run python benchmarks/published.py``
writes them; ``--check`` (and tests/benchmarks/test_published.py) compares them.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

import comparison_report as comparison
from records import SEARCH_COST_RECORDS, result, search_cost_timings, span
from significance import mean_std

DOC = "docs/jst_experiments.md"
# the cell every 12 + 6 tuning record was run in: ResNet-20, fp32, FLOPs budget
CELL = ("resnet20", 12, 6, "fp32", "flops")
TUNING_BUDGET = 0.3


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _compare_cell() -> dict:
    return comparison.cells(result("compare_methods"))[CELL]


def _by_overrides(runs: list[dict], overrides: dict) -> dict[int, dict]:
    """{seed: record} of the runs whose ``jst_overrides`` are exactly ``overrides``."""
    found: dict[int, dict] = {}
    for r in runs:
        if r.get("jst_overrides") == overrides:
            if r["seed"] in found:
                raise ValueError(f"two records with overrides {overrides} for seed {r['seed']}")
            found[r["seed"]] = r
    if not found:
        raise ValueError(f"no record with overrides {overrides}")
    return found


def _seed_cells(runs: dict[int, dict], seeds: list[int], bold: bool = False) -> list[str]:
    """val top-1 per seed, then the mean (``–`` where a seed or the mean is missing)."""
    vals = [_pct(runs[s]["val_top1"]) if s in runs else "–" for s in seeds]
    have = [runs[s]["val_top1"] for s in seeds if s in runs]
    mean = _pct(statistics.fmean(have)) if len(have) == len(seeds) else "–"
    cells = [*vals, mean]
    return [f"**{c}**" if bold and c != "–" else c for c in cells]


# --- JST v2 tuning, on validation (jst_tuning.json) -----------------------------------

# (label, search.jst overrides of the record, bold)
TUNING_ROWS = (
    ("the defect fixes alone (no frozen iterations)", {"freeze_fraction": 0.0}, False),
    (
        "+ the last half of the iterations frozen (`freeze_fraction: 0.5`, now the default)",
        {"freeze_fraction": 0.5},
        True,
    ),
    (
        "+ budget reached after 25 % of the iterations instead of 50 %",
        {"freeze_fraction": 0.5, "anneal_fraction": 0.25},
        False,
    ),
    (
        "+ that, and iterations of equal length (`epoch_decay: 1`)",
        {"freeze_fraction": 0.5, "anneal_fraction": 0.25, "epoch_decay": 1.0},
        False,
    ),
    (
        "+ sampler importance α + log(\\|γ\\| / mean \\|γ\\|) (a trial knob, removed)",
        {"freeze_fraction": 0.5, "magnitude_weight": 1.0},
        False,
    ),
    (
        "last third frozen, budget reached after two thirds",
        {"freeze_fraction": 0.33, "anneal_fraction": 0.67},
        False,
    ),
)


def tuning() -> str:
    runs = [r for r in result("jst_tuning")["runs"] if r["budget"] == TUNING_BUDGET]
    seeds = [0, 1]
    rows = _compare_cell()
    scale = ", ".join(
        f"`{name}` "
        + " / ".join(f"{100 * by_seed[s]['val_top1']:.1f}" for s in seeds if s in by_seed)
        + " %"
        for name in ("scratch", "l1", "slimming")
        for by_seed in [comparison.by_seed(rows, TUNING_BUDGET, name)]
    )
    lines = [
        f"For scale, the baselines on the same splits (validation top-1, seeds 0 / 1, "
        f"`benchmarks/results/compare_methods.json`, ResNet-20 12 + 6 fp32 at "
        f"{TUNING_BUDGET}): {scale}.",
        "",
        "| JST setting | val top-1 seed 0 | seed 1 | mean |",
        "|---|---|---|---|",
    ]
    for label, overrides, bold in TUNING_ROWS:
        cells = _seed_cells(_by_overrides(runs, overrides), seeds, bold)
        name = f"**{label}**" if bold else label
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the ablations with perturbation on (jst_tuning.json + compare_methods.json) -------


def perturbation_ablations() -> str:
    tuning_runs = [r for r in result("jst_tuning")["runs"] if r["budget"] == TUNING_BUDGET]
    rows = _compare_cell()
    seeds = [0, 1, 2]

    def tuned(variant: str) -> dict[int, dict]:
        return {r["seed"]: r for r in tuning_runs if r["variant"] == variant}

    table = (
        ("default of then", comparison.by_seed(rows, TUNING_BUDGET, "jst-perturbation"), False),
        ("no frozen iterations", tuned("jst-perturbation-no-freeze"), False),
        ("no gate learning (α stays 0)", tuned("jst-perturbation-no-gates"), False),
        ("no Gumbel perturbation", comparison.by_seed(rows, TUNING_BUDGET, "jst"), True),
    )
    lines = [
        "| variant (perturbation on) | seed 0 | seed 1 | seed 2 | mean |",
        "|---|---|---|---|---|",
    ]
    for label, runs, bold in table:
        name = f"**{label}**" if bold else label
        lines.append(f"| {name} | " + " | ".join(_seed_cells(runs, seeds, bold)) + " |")
    lines += [
        "",
        "Records: `jst-perturbation-no-freeze` and `jst-perturbation-no-gates` in "
        "`benchmarks/results/jst_tuning.json`; the default of then (`jst-perturbation`) and "
        "the row without perturbation (`jst`, today's default) in "
        f"`benchmarks/results/compare_methods.json` (ResNet-20, 12 + 6, fp32, {TUNING_BUDGET}).",
    ]
    return "\n".join(lines)


# --- what a search epoch costs (search_cost*.json) -------------------------------------

SEARCH_COST_TARGET = 0.8


def _machine(r: dict) -> str:
    m = r["machine"]
    if isinstance(m, str):
        return f"`{m}` (not named further)"
    amx = {True: ", AMX", False: ", no AMX"}.get(m.get("amx"), "")
    return f"{m.get('cpu') or m.get('device')}{amx}"


def _numerics(r: dict) -> str:
    n = r.get("numerics")
    if not n:
        return "fp32 (numerics not recorded; fp32 was the only mode then)"
    fmt = " + channels_last" if n["memory_format"] == "channels_last" else ""
    return n["precision"] + fmt


def _knobs(r: dict) -> str:
    jst = r.get("jst")
    if jst is None:
        return "shipped then (not recorded)"
    return "`alpha_lr: 0` (no gate learning)" if jst["alpha_lr"] == 0 else "shipped (gates learn)"


def _commit(r: dict) -> str:
    if "commit" in r:
        return f"run at {r['commit']}"
    if "committed_in" in r:
        return f"committed in {r['committed_in']}"
    return "commit not recorded"


def search_cost_history() -> str:
    lines = [
        "| numerics | JST knobs | JST epoch / dense epoch | machine | record |",
        "|---|---|---|---|---|",
    ]
    ratios = []
    for name in ("search_cost_fp32_b307a77", "search_cost_bf16_fc5a657", "search_cost_no_gates"):
        r = result(name)
        if "cpu_ratio" in r:
            cost = f"**{r['cpu_ratio']:.2f}** (CPU time; wall {r['ratio']:.2f})"
            ratios.append(r["cpu_ratio"])
        else:
            cost = f"{r['ratio']:.3f} (wall, one measurement)"
            ratios.append(r["ratio"])
        lines.append(
            f"| {_numerics(r)} | {_knobs(r)} | {cost} | {_machine(r)} "
            f"| `benchmarks/results/{name}.json` ({_commit(r)}) |"
        )
    for name in SEARCH_COST_RECORDS:
        r = result(name)
        for variant, overrides, cpu, wall in search_cost_timings(r):
            knobs = _knobs(r)
            if variant is not None:
                knobs = "`" + json.dumps(overrides) + "` (in the same rounds)"
            ratios.append(statistics.median(cpu))
            lines.append(
                f"| {_numerics(r)} | {knobs}, {r['search_epochs']:g} search epochs "
                f"| **{statistics.median(cpu):.2f}** (CPU time, median of {len(cpu)} "
                f"alternating rounds, {span(cpu)}); wall {statistics.median(wall):.2f} "
                f"({span(wall)}) | {_machine(r)} | `benchmarks/results/{name}.json` "
                f"({_commit(r)}) |"
            )
    met = [x for x in ratios if x <= SEARCH_COST_TARGET]
    verdict = (
        f"The {SEARCH_COST_TARGET}x target is met in none of these records."
        if not met
        else f"The {SEARCH_COST_TARGET}x target is met in {len(met)} of {len(ratios)} records."
    )
    return "\n".join([*lines, "", verdict])


# --- the step cost (step_cost.json) ----------------------------------------------------


def step_cost() -> str:
    r = result("step_cost")
    lines = [
        "| thinned ResNet-20 | round_to | plain step | with learnable gates |",
        "|---|---|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['flops_ratio']:.2f} of the FLOPs | {row['round_to']} "
            f"| {row['plain_over_dense']:.2f}x | {row['gated_over_dense']:.2f}x |"
        )
    extra = [row["gated_over_dense"] - row["plain_over_dense"] for row in r["rows"]]
    rounds = f"medians of {r['rounds']} rounds, each timing dense and every thinned network; "
    lines += [
        "",
        f"{r['precision']}, {r['threads']} thread(s); {rounds if 'rounds' in r else ''}a dense "
        f"step took {r['dense_step_cpu_s']:.3f} s of CPU time. The learnable gates change a "
        f"thinned step by {min(extra):+.2f} to {max(extra):+.2f} of a dense step (last column "
        "minus the plain one; a negative value is the rounds' noise). Record: "
        f"`benchmarks/results/step_cost.json` ({_commit(r)}).",
    ]
    return "\n".join(lines)


# --- JST v1 (compare_methods_jst_v1.json, compare_methods.json, jst_variants.json) -----

V1_SEEDS = (0, 1)
V1_JST = ("jst", "jst-no-perturbation", "jst-no-thresholding", "jst-neither")


def _v1_rows() -> dict[tuple[float, str], list[dict]]:
    """(budget, variant) -> runs: JST v1's own records, and the baselines of the same
    runs (seeds 0 and 1 of the fp32 12 + 6 cell of compare_methods.json)."""
    found: dict = {}
    for r in result("compare_methods_jst_v1")["runs"]:
        found.setdefault((r["budget"], r["variant"]), []).append(r)
    for (budget, variant), runs in _compare_cell().items():
        if variant in comparison.BASELINES:
            kept = [r for r in runs if r["seed"] in V1_SEEDS]
            if kept:
                found[(budget, variant)] = kept
    return found


def _v1_order(key: tuple[float, str]) -> tuple:
    budget, variant = key
    order = [*V1_JST[:1], *comparison.BASELINES, *V1_JST[1:], "jst-arch-from-scratch"]
    return (-budget, order.index(variant) if variant in order else len(order), variant)


def _test(runs: list[dict]) -> float:
    return statistics.fmean(100 * r["test_top1"] for r in runs)


def v1_methods() -> str:
    rows = _v1_rows()
    lines = [
        "| budget | method | test top-1 (mean ± std) | val top-1 | FLOPs ratio | params "
        "| latency b64 (ms) | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(rows, key=_v1_order):
        budget, variant = key
        runs = rows[key]
        top1, std = mean_std(100 * r["test_top1"] for r in runs)
        label = variant
        if variant == "jst-arch-from-scratch":
            label += f" (diagnostic, {runs[0]['total_epochs']} epochs)"
        lines.append(
            f"| {budget} | {label} | {top1:.2f} ± {std:.2f} "
            f"| {statistics.fmean(100 * r['val_top1'] for r in runs):.2f} "
            f"| {statistics.fmean(r['flops_ratio'] for r in runs):.3f} "
            f"| {statistics.fmean(r['params'] for r in runs) / 1e3:.1f} k "
            f"| {statistics.fmean(r['latency_b64_ms'] for r in runs):.2f} "
            f"| {statistics.fmean(r['wall_s'] for r in runs):.0f} | {len(runs)} |"
        )
    gaps = [
        _test(rows[(b, base)]) - _test(rows[(b, "jst")])
        for b in sorted({b for b, v in rows if v == "jst"}, reverse=True)
        for base in ("scratch", "l1")
    ]
    at = TUNING_BUDGET
    arch, jst = _test(rows[(at, "jst-arch-from-scratch")]), _test(rows[(at, "jst")])
    scratch, l1 = _test(rows[(at, "scratch")]), _test(rows[(at, "l1")])
    lines += [
        "",
        f"JST v1's mean test top-1 was {span(gaps, '.1f')} points below `scratch` and `l1` "
        f"at both budgets. At {at}, the architectures JST v1 found, trained afresh "
        f"(`jst-arch-from-scratch`), reach {arch:.2f} %, against {l1:.2f} % for `l1`, "
        f"{scratch:.2f} % for `scratch` and {jst:.2f} % for the same architectures with the "
        "weights JST trained.",
    ]
    return "\n".join(lines)


# (label, variant in jst_variants.json, or "v1" for JST v1's default record, or None)
V1_TUNING_ROWS = (
    ("first defaults (α lr 0.05, 10 gate steps, λ_pol 0.001)", None),
    ("budget reached after 25 % of the iterations, 1 warm-up epoch", None),
    ("+ σ_0 0.3", None),
    ("α lr 0.01, no polarisation", None),
    ("no gate learning at all (α stays 0)", None),
    ("8 candidates per iteration", None),
    ("**α lr 0.2, 20 gate steps, λ_pol 0.01 (now the default)**", "v1"),
    ("the same with σ_0 0.3, σ_min 0", None),
    ("default, but 5 gate steps per iteration", "jst-5-gate-steps"),
    (
        "8 iterations of equal length, budget reached after 30 % of them, σ_0 0.5, 5 gate steps",
        "jst-short-schedule",
    ),
    (
        "the same with 5 % of the training images held out for α instead of 10 %",
        "jst-short-schedule-small-holdout",
    ),
    (
        "default, but gate updates on batches of 32 images (`alpha_batch_size: 32`, 4× cheaper)",
        "jst-alpha-batch-32",
    ),
    ("default, but 8 search + 10 fine-tuning epochs instead of 12 + 6", "jst-8+10-epochs"),
    ("default, but 6 search + 12 fine-tuning epochs", "jst-6+12-epochs"),
)


def v1_tuning() -> str:
    variants: dict[str, dict[int, dict]] = {}
    for r in result("jst_variants")["runs"]:
        variants.setdefault(r["variant"], {})[r["seed"]] = r
    v1 = {
        r["seed"]: r
        for r in result("compare_methods_jst_v1")["runs"]
        if r["variant"] == "jst" and r["budget"] == TUNING_BUDGET
    }
    variants["v1"] = v1
    lines = [
        "| JST setting | val top-1 after fine-tuning, seed 0 | record |",
        "|---|---|---|",
    ]
    for label, variant in V1_TUNING_ROWS:
        if variant is None:
            lines.append(f"| {label} | not recorded | – |")
            continue
        value = _pct(variants[variant][0]["val_top1"])
        if label.startswith("**"):
            value = f"**{value}**"
        where = "compare_methods_jst_v1.json" if variant == "v1" else "jst_variants.json"
        name = "jst" if variant == "v1" else variant
        lines.append(f"| {label} | {value} | `{name}` in `{where}` |")
    seed1 = [
        f"{_pct(variants[v][1]['val_top1'])} ({v.removeprefix('jst-')})"
        for v in ("jst-8+10-epochs", "jst-6+12-epochs")
        if 1 in variants[v]
    ]
    lines += [
        "",
        "The two epoch splits also ran seed 1: " + " and ".join(seed1) + ", against "
        f"{_pct(v1[1]['val_top1'])} for the default.",
    ]
    return "\n".join(lines)


BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    (DOC, "jst-tuning"): tuning,
    (DOC, "perturbation-ablations"): perturbation_ablations,
    (DOC, "search-cost-history"): search_cost_history,
    (DOC, "step-cost"): step_cost,
    (DOC, "jst-v1-methods"): v1_methods,
    (DOC, "jst-v1-tuning"): v1_tuning,
}
