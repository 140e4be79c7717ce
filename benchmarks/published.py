"""Every measured figure of the README and docs/, regenerated from the committed records
in ``benchmarks/results/*.json``.

A generated block sits between two markers in a Markdown file::

    <!-- generated:NAME: uv run python benchmarks/published.py -->
    ...
    <!-- end generated:NAME -->

Some documents are generated whole (``WHOLE_FILES``). ``uv run python benchmarks/published.py``
rewrites every block and file from the records; ``--check`` writes nothing and exits 1
naming each one whose committed text differs (the test suite runs the same check).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import comparison_report as comparison
import data_report
import experiments_report
import performance_report
from records import (
    SEARCH_COST_RECORDS,
    machine_text,
    metrics,
    result,
    search_cost_timings,
    signed,
)
from significance import paired_difference

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "uv run python benchmarks/published.py"
# the ResNet-20 fp32 cells: (arch, search epochs, fine-tune epochs, precision, budget metric)
SHORT_FP32, LONG_FP32 = ("resnet20", 12, 6, "fp32", "flops"), ("resnet20", 60, 30, "fp32", "flops")


def readme_comparison() -> str:
    store = result("compare_methods")
    return "\n".join(
        [
            *comparison.headline_table(store),
            "",
            comparison.verdict_sentence(store),
        ]
    )


def comparison_doc() -> str:
    store = result("compare_methods")
    plots = {
        cell: f"comparison_{comparison.cell_name(cell).replace(':', '_')}.png"
        for cell in comparison.cells(store)
    }
    return comparison.comparison_markdown(store, plots)


def quickstart() -> str:
    """The committed metrics of the default pipeline (the last `dvc repro` of the repository)."""
    search, evaluate = metrics("search"), metrics("evaluate")
    return (
        f"Committed `metrics/` of the last `uv run dvc repro` with the default `params.yaml` "
        f"(`{search['method']}` at `target_flops: {search['target_flops']}`, training in "
        f"{search['precision']}, {search['memory_format']}): test top-1 "
        f"**{100 * evaluate['top1']:.2f} %** on {evaluate['test_size']} images, FLOPs "
        f"{evaluate['flops'] / 1e6:.2f} M / {evaluate['dense_flops'] / 1e6:.2f} M dense, params "
        f"{evaluate['params'] / 1e3:.0f} k / {evaluate['dense_params'] / 1e3:.0f} k, ONNX Runtime "
        f"CPU batch {evaluate['latency_batch']} {evaluate['latency_ms']:.2f} ms / "
        f"{evaluate['dense_latency_ms']:.2f} ms dense ({evaluate['speedup']:.2f}×; latency on a "
        "2-core machine is noisy from run to run)."
    )


def experiments_example() -> str:
    """What `jst experiments` prints for the committed run: the workspace and main rows."""
    import yaml

    from pipeline.experiments import ExperimentRow, budget_label, experiments_table

    search = yaml.safe_load((ROOT / "params.yaml").read_text())["search"]
    evaluate = metrics("evaluate")
    rows = [
        ExperimentRow(
            name,
            search["method"],
            budget_label(search),
            evaluate["top1"],
            evaluate["flops_ratio"],
            evaluate["speedup"],
            int(evaluate["params"]),
        )
        for name in ("workspace", "main")
    ]
    return "\n".join(["```", *experiments_table(rows), "```"])


def cell_rows(arch: str, search: int, finetune: int, precision: str) -> dict:
    return comparison.cells(result("compare_methods"))[(arch, search, finetune, precision, "flops")]


def long_schedule_seeds(precision: str) -> Callable[[], str]:
    def render() -> str:
        rows = cell_rows("resnet20", 60, 30, precision)
        return "Test / validation top-1 (%):\n\n" + "\n".join(comparison.seed_table(rows))

    return render


def long_schedule_fp32() -> str:
    """The fp32 long cell: JST against its best baseline, its time, the ablations."""
    store = result("compare_methods")
    rows = comparison.cells(store)[LONG_FP32]
    return "\n".join(comparison.cell_section(LONG_FP32, rows, store))


def short_rerun(name: str) -> Callable[[], str]:
    """A 12 + 6 fp32 rerun in its own record file, JST beside the variants it is paired
    with at one commit (the cell's records in compare_methods.json ran on older code)."""

    def render() -> str:
        store = result(name)
        return "\n".join(
            comparison.cell_section(SHORT_FP32, comparison.cells(store)[SHORT_FP32], store)
        )

    return render


def ablations(precision: str) -> Callable[[], str]:
    def render() -> str:
        rows = cell_rows("resnet20", 12, 6, precision)
        return "\n".join(comparison.ablation_table(rows))

    return render


# The rule written down before the long cell's ablations ran (docs/jst_experiments.md,
# fourth session): a mechanism whose removal is not worse on validation, pooled over the
# ResNet-20 fp32 cells at budget 0.3, goes. variant -> (record file, cell) per cell; the
# combined removal pairs with the 12 + 6 JST rerun at its own commit.
MECHANISM_PAIRS = {
    "jst-no-gates": (("compare_methods", SHORT_FP32), ("compare_methods", LONG_FP32)),
    "jst-no-thresholding": (("compare_methods", SHORT_FP32), ("compare_methods", LONG_FP32)),
    "jst-no-freeze": (("compare_methods", SHORT_FP32), ("compare_methods", LONG_FP32)),
    "jst-no-gates-no-thresholding": (
        ("compare_combined_short", SHORT_FP32),
        ("compare_methods", LONG_FP32),
    ),
}
RULE_BUDGET = 0.3


def mechanism_rule() -> str:
    """Each removal's validation differences to JST, pooled over both fp32 cells."""
    lines = [
        "| variant | variant − jst, validation (points): 12 + 6 seeds 0–2; 60 + 30 seeds 0–2 "
        "| pooled mean ± std | 95 % interval | p | pairs | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {name for sources in MECHANISM_PAIRS.values() for name, _ in sources}
    cells = {name: comparison.cells(result(name)) for name in names}
    for variant, sources in MECHANISM_PAIRS.items():
        diffs, parts = [], []
        for name, cell in sources:
            rows = cells[name][cell]
            jst = comparison.by_seed(rows, RULE_BUDGET, "jst")
            other = comparison.by_seed(rows, RULE_BUDGET, variant)
            seeds = sorted(set(jst) & set(other))
            cell_diffs = comparison.paired(other, jst, seeds, "val_top1").diffs if seeds else ()
            diffs += cell_diffs
            parts.append(", ".join(f"{d:+.2f}" for d in cell_diffs) or "–")
        pooled = paired_difference(diffs, [0.0] * len(diffs))
        rule = "qualifies for removal (mean ≥ 0)" if pooled.mean >= 0 else "stays (mean < 0)"
        lines.append(
            f"| {variant} | {'; '.join(parts)} | {pooled.mean:+.2f} ± {pooled.std:.2f} "
            f"| {pooled.interval()} | {pooled.p_text()} | {len(diffs)} | {rule} |"
        )
    return "\n".join(lines)


def search_cost() -> str:
    """A JST search epoch against a dense epoch, timed side by side (search_cost.py): the
    shipped knobs, and every variant timed in the same rounds, for each record."""
    lines = [
        "| search epochs | JST knobs | JST search epoch / dense epoch | median "
        "| range over rounds | rounds |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for name in SEARCH_COST_RECORDS:
        r = result(name)
        rows, note = _search_cost_rows(r), _search_cost_setup(r, name)
        lines += [f"| {r['search_epochs']:g} {row}" for row in rows]
        notes.append(f"{r['search_epochs']:g} search epochs: {note}")
    return "\n".join([*lines, "", *[f"- {n}" for n in notes]])


def _search_cost_rows(r: dict) -> list[str]:
    rows = []
    for name, overrides, cpu, wall in search_cost_timings(r):
        knobs = "shipped"
        if name is not None:
            knobs = f"`{name}`: " + ", ".join(f"`{k}: {v}`" for k, v in overrides.items())
        for label, values, bold in (("CPU time of the process", cpu, True),
                                    ("wall time", wall, False)):  # fmt: skip
            median = f"{statistics.median(values):.2f}"
            rows.append(
                f"| {knobs} | {label} | {f'**{median}**' if bold else median} "
                f"| {min(values):.2f}–{max(values):.2f} | {len(values)} |"
            )
    return rows


def _search_cost_setup(r: dict, name: str) -> str:
    command = r.get(
        "command",
        f"uv run python benchmarks/search_cost.py --repeats {len(r['rounds'])} "
        f"--dense-epochs {r['dense_epochs']}",
    )
    numerics = f"{r['numerics']['precision']}, {r['numerics']['memory_format']}"
    return (
        f"{comparison.ARCH_NAMES.get(r['arch'], r['arch'])}, {r['dataset']} at "
        f"{r['image_size']} px ({r['train_images']} training images), target FLOPs "
        f"{r['target_flops']}, against {r['dense_epochs']} dense epochs per round, the order "
        f"alternating; {numerics}; {machine_text(r['machine'])}; commit {r['commit']}. "
        f"Command: `{command}`; record: `benchmarks/results/{name}.json`."
    )


def teacher_probe() -> str:
    """JST's full-width target beside the sub-network it trains, on validation
    (teacher_probe.py): could the target teach in-place?"""
    store = result("teacher_probe")
    lines = [
        "| seed | iterations at the final budget | sub-network val top-1 (mean) "
        "| full-width target val top-1 (mean) | target − sub-network (points) "
        "| last iteration: sub-network / target |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(store["runs"], key=lambda r: r["seed"]):
        at_budget = [i for i in r["iterations"] if i["val_top1"] is not None]
        sub = statistics.mean(i["val_top1"] for i in at_budget)
        target = statistics.mean(i["target_val_top1"] for i in at_budget)
        last = r["iterations"][-1]
        lines.append(
            f"| {r['seed']} | {len(at_budget)} | {100 * sub:.1f} % | {100 * target:.1f} % "
            f"| {signed(100 * (target - sub), '.1f')} "
            f"| {100 * last['val_top1']:.1f} % / {100 * last['target_val_top1']:.1f} % |"
        )
    r = store["runs"][0]
    setup = (
        f"{comparison.ARCH_NAMES.get(r['arch'], r['arch'])}, {r['search_epochs']} search "
        f"epochs, budget {r['budget']}, {r['precision']}; {machine_text(r['machine'])}; "
        f"commit {r['commit']}. Command: `{r['command']}`; record: "
        "`benchmarks/results/teacher_probe.json`."
    )
    return "\n".join([*lines, "", setup])


def pretrained_start_doc() -> str:
    import pretrained_start

    return pretrained_start.report_text(result("pretrained_start"))


# (file, block name) -> the text between the block's markers
BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("README.md", "experiments-example"): experiments_example,
    ("README.md", "quickstart"): quickstart,
    ("README.md", "comparison"): readme_comparison,
    ("docs/jst_vs_baselines.md", "comparison"): readme_comparison,
    ("docs/jst_vs_baselines.md", "long-schedule"): long_schedule_seeds("bf16"),
    ("docs/jst_vs_baselines.md", "long-schedule-fp32"): long_schedule_fp32,
    ("docs/jst_experiments.md", "schedule-ablation-short"): short_rerun("compare_anneal_short"),
    ("docs/jst_experiments.md", "combined-removal-short"): short_rerun("compare_combined_short"),
    ("docs/jst_experiments.md", "teacher-probe"): teacher_probe,
    ("docs/jst_experiments.md", "mechanism-rule"): mechanism_rule,
    ("docs/jst_vs_baselines.md", "search-cost"): search_cost,
    ("docs/jst_experiments.md", "ablations-fp32"): ablations("fp32"),
    ("docs/jst_experiments.md", "ablations-bf16"): ablations("bf16"),
}
BLOCKS.update(performance_report.BLOCKS)
BLOCKS.update(experiments_report.BLOCKS)
BLOCKS.update(data_report.BLOCKS)
# file -> its whole text
WHOLE_FILES: dict[str, Callable[[], str]] = {
    "docs/comparison.md": comparison_doc,
    "docs/pretrained_start.md": pretrained_start_doc,
}


def begin_marker(name: str) -> str:
    return f"<!-- generated:{name}: {COMMAND} -->"


def end_marker(name: str) -> str:
    return f"<!-- end generated:{name} -->"


def replace_block(text: str, name: str, body: str, where: str = "the text") -> str:
    """``text`` with the block ``name``'s body replaced; the markers must be there once."""
    pattern = re.compile(
        re.escape(begin_marker(name)) + r"\n.*?" + re.escape(end_marker(name)), re.DOTALL
    )
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(
            f"{where}: expected the block '{name}' once, found it {found} times; "
            f"put '{begin_marker(name)}' and '{end_marker(name)}' on lines of their own "
            "where the generated text belongs"
        )
    replacement = f"{begin_marker(name)}\n{body.rstrip()}\n{end_marker(name)}"
    return pattern.sub(lambda _: replacement, text)


def generated(root: Path = ROOT) -> dict[str, str]:
    """The text every published file should have: path -> text."""
    texts = {path: render().rstrip() + "\n" for path, render in WHOLE_FILES.items()}
    for (path, name), render in BLOCKS.items():
        current = texts.get(path) or (root / path).read_text()
        texts[path] = replace_block(current, name, render(), where=path)
    return texts


def stale(root: Path = ROOT) -> list[str]:
    """The published files whose committed text differs from what the records generate."""
    return [path for path, text in generated(root).items() if (root / path).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any differs")
    args = p.parse_args(argv)
    if args.check:
        differing = stale()
        for path in differing:
            print(f"{path}: differs from what the records generate; run `{COMMAND}`")
        return 1 if differing else 0
    for path, text in generated().items():
        target = ROOT / path
        if target.read_text() != text:
            target.write_text(text)
            print(f"rewrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
