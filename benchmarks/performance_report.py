"""The measured tables of docs/performance.md and docs/discovery.md, generated from the
committed records: ``benchmarks/results/*.json`` and the default pipeline run's
``metrics/*.json`` (written by ``uv run dvc repro``).

``BLOCKS`` has the shape of ``published.BLOCKS``: (file, block name) -> a function that
returns the Markdown between the block's markers. ``uv run python benchmarks/published.py``
writes them; ``--check`` (and tests/benchmarks/test_published.py) compares them.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Callable

import comparison_report as comparison
from records import (
    RESULTS,
    commits_text,
    machine_text,
    machines_text,
    metrics,
    result,
    signed,
    span,
)
from significance import mean_std

# --- the default pipeline run (metrics/*.json) ---------------------------------------


def default_run() -> str:
    ev, search, finetune = metrics("evaluate"), metrics("search"), metrics("finetune")
    batch = ev["latency_batch"]
    return "\n".join(
        [
            "| test top-1 | top-5 | FLOPs (compact / dense) | params (compact / dense) "
            f"| ONNX Runtime CPU latency, batch {batch}, median (compact / dense) | speedup |",
            "|---|---|---|---|---|---|",
            f"| {100 * ev['top1']:.2f} % | {100 * ev['top5']:.2f} % "
            f"| {ev['flops'] / 1e6:.2f} M / {ev['dense_flops'] / 1e6:.2f} M "
            f"(ratio {ev['flops_ratio']:.3f}) "
            f"| {ev['params'] / 1e3:.0f} k / {ev['dense_params'] / 1e3:.0f} k "
            f"| {ev['latency_ms']:.2f} ms / {ev['dense_latency_ms']:.2f} ms "
            f"| {ev['speedup']:.2f}× |",
            "",
            f"Batch 1, median: {ev['latency_b1_median_ms']:.3f} ms compact, "
            f"{ev['dense_latency_b1_median_ms']:.3f} ms dense. Test split: {ev['test_size']} "
            f"images. Method `{search['method']}` at `target_flops` {search['target_flops']}, "
            f"`round_to` {search['round_to']}, {search['iterations']} search iterations + "
            f"{finetune['epochs']} fine-tuning epochs, {finetune['precision']} + "
            f"{finetune['memory_format']}; ONNX Runtime `{ev['provider']}`. Command: "
            "`uv run dvc repro`; records: `metrics/evaluate.json`, `metrics/search.json`, "
            "`metrics/finetune.json` (committed with the run's `dvc.lock`). The metrics do not "
            "name the machine or the run's wall time.",
        ]
    )


# --- training throughput (train_throughput.py) ---------------------------------------


def amx_speed() -> str:
    r = result("train_throughput_cpu_auto")
    v = r["versus_fp32"]
    numerics = f"{v['numerics']['precision']} autocast, {v['numerics']['memory_format']}"
    return "\n".join(
        [
            "| numerics | images/s | speed-up |",
            "|---|---:|---:|",
            f"| fp32, contiguous | {v['fp32_images_per_s']:.0f} | 1.00 |",
            f"| `auto` here: {numerics} | {v['images_per_s']:.0f} | **{v['speedup']:.2f}** |",
            "",
            f"Medians of {v['rounds']} alternating rounds; {r['arch']}, batch {r['batch_size']}; "
            f"{machine_text(r['machine'])}. Record: "
            "`benchmarks/results/train_throughput_cpu_auto.json`.",
        ]
    )


def train_throughput() -> str:
    r = result("train_throughput")
    steps, dense, jst = r["dense_steps"], r["dense_epoch"], r["jst"]
    images = round(dense["epoch_s"] * dense["images_per_s"] / dense["epochs"])
    arch = comparison.ARCH_NAMES.get(r["arch"], r["arch"])
    precision = str(r["autocast_dtype"]).removeprefix("torch.").replace("float32", "fp32")
    return "\n".join(
        [
            f"| {arch}, 32x32, batch {r['batch_size']}, {r['device'].upper()} | images/s "
            f"| epoch ({images} images) |",
            "|---|---:|---:|",
            f"| dense `train_steps` ({steps['steps']} steps after {steps['warmup_steps']} "
            f"warm-up) | {steps['images_per_s']:.1f} | |",
            f"| dense `train()` epoch (incl. validation) | {dense['images_per_s']:.1f} "
            f"| {dense['epoch_s'] / dense['epochs']:.0f} s |",
            f"| JST search, {jst['iterations']} iteration at `target_flops` "
            f"{jst['target_flops']} | {jst['images_per_s']:.1f} "
            f"| {jst['epoch_s'] / jst['epochs']:.0f} s "
            f"({r['jst_over_dense_epoch_time']:.1f}x dense) |",
            "",
            f"{precision}, channels_last {'on' if r['channels_last'] else 'off'}, compile "
            f"{'on' if r['compile'] else 'off'}; {machine_text(r['machine'])}. Command: "
            "`uv run --frozen python benchmarks/train_throughput.py --device cpu`; record: "
            "`benchmarks/results/train_throughput.json`.",
        ]
    )


def train_vs_plain() -> str:
    """The project's loop against the plain reference (plain_loop.py), one table per
    device with a committed record."""
    parts = []
    for device in ("cpu", "cuda"):
        if not (RESULTS / f"train_vs_plain_{device}.json").is_file():
            continue
        r = result(f"train_vs_plain_{device}")
        arch = comparison.ARCH_NAMES.get(r["arch"], r["arch"])
        rows = [
            ("plain PyTorch loop (reference)", "plain", None),
            ("project step loop (`train_steps`)", "project_step", "step_over_plain"),
            ("project `train()` epoch (incl. validation)", "project_epoch", "epoch_over_plain"),
        ]
        lines = [
            f"| {arch}, batch {r['batch_size']}, {r['device'].upper()} | images/s | "
            "x reference | range over rounds | target |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, path, ratio in rows:
            rate = f"{r[f'{path}_images_per_s']:.0f}"
            if ratio is None:
                lines.append(f"| {label} | {rate} | 1.00 | | |")
                continue
            met = "met" if r["meets_targets"][ratio] else "**missed**"
            lines.append(
                f"| {label} | {rate} | **{r[ratio]:.2f}** | {span(r[f'{ratio}_range'])} "
                f"| >= {r['targets'][ratio]:.2f} ({met}) |"
            )
        n = r["numerics"]
        lines += [
            "",
            f"Medians of {r['rounds_count']} rounds of one epoch each ({r['train_images']} "
            f"training images, {r['val_images']} validation), order alternating; "
            f"{n['precision']}, {n['memory_format']}; {machine_text(r['machine'])}; commit "
            f"{r['commit']}. Command: `{r['command']}`; record: "
            f"`benchmarks/results/train_vs_plain_{device}.json`.",
        ]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --- accuracy of bf16 against fp32 (compare_methods.py) -------------------------------


def _cell(precision: str, metric: str = "flops") -> dict:
    cells = comparison.cells(result("compare_methods"))
    return cells[("resnet20", 12, 6, precision, metric)]


def bf16_accuracy() -> str:
    fp32, bf16 = _cell("fp32"), _cell("bf16")
    lines = [
        "| budget | method | fp32 | bf16 + channels_last | bf16 − fp32 per seed |",
        "|---|---|---|---|---|",
    ]
    means: dict = {}
    runs: list[dict] = []
    all_seeds: set[int] = set()
    for budget in sorted({b for b, _ in bf16}, reverse=True):
        for method in ("jst", "scratch"):
            a = comparison.by_seed(fp32, budget, method)
            b = comparison.by_seed(bf16, budget, method)
            seeds = sorted(set(a) & set(b))
            if not seeds:
                continue
            runs += [a[s] for s in seeds] + [b[s] for s in seeds]
            all_seeds.update(seeds)
            ma, sa = mean_std(100 * a[s]["test_top1"] for s in seeds)
            mb, sb = mean_std(100 * b[s]["test_top1"] for s in seeds)
            means[(budget, method)] = (ma, mb)
            diffs = ", ".join(signed(100 * (b[s]["test_top1"] - a[s]["test_top1"])) for s in seeds)
            lines.append(
                f"| {budget} | {method} | {ma:.2f} ± {sa:.2f} | {mb:.2f} ± {sb:.2f} | {diffs} |"
            )
    gaps = [
        f"at {budget} {signed(j[0] - s[0], '.1f')} in fp32, {signed(j[1] - s[1], '.1f')} in bf16"
        for budget in sorted({b for b, _ in means}, reverse=True)
        if (j := means.get((budget, "jst"))) and (s := means.get((budget, "scratch")))
    ]
    return "\n".join(
        [
            *lines,
            "",
            f"JST minus scratch, mean test top-1 in points: {'; '.join(gaps)}. Seeds "
            f"{', '.join(str(s) for s in sorted(all_seeds))}; "
            f"{machines_text(r['machine'] for r in runs)}; "
            f"commits {commits_text(runs)}. Record: `{comparison.RESULTS}`.",
        ]
    )


# --- latency (latency.py) -------------------------------------------------------------


def latency() -> str:
    records = result("latency")
    lines = [
        "| backend | threads | batch | keep | round_to | dense ms | compact ms | FLOPs speed-up "
        "| latency speed-up | latency / FLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['backend']} | {r['threads']} | {r['batch']} | {r['keep']} | {r['round_to']} "
            f"| {r['dense_median_ms']:.1f} | {r['compact_median_ms']:.1f} "
            f"| {r['flops_speedup']:.2f} | {r['latency_speedup']:.2f} "
            f"| {r['latency_over_flops_speedup']:.2f} |"
        )
    first = records[0]
    machine = _latency_machine(records)
    return "\n".join(
        [
            *lines,
            "",
            f"{first['arch']}, input {'x'.join(str(d) for d in first['input_shape'])}, "
            f"{first['warmup']} warm-up rounds, {span([r['repeats'] for r in records], 'd')} "
            f"timed rounds; ONNX Runtime graph optimisation {first['ort_graph_optimization']}. "
            f"Machine: {machine} ({first['platform']}). Command: `uv run --frozen python "
            "benchmarks/latency.py`; record: `benchmarks/results/latency.json`.",
        ]
    )


def _latency_machine(records) -> str:
    keys = ("cpu", "logical_cpus", "gpu", "onnxruntime", "torch")
    return machines_text({k: r.get(k) for k in keys} for r in records)


def _latency_cell(records, backend: str, threads: int, batch: int, keep: float, round_to: int):
    for r in records:
        if (r["backend"], r["threads"], r["batch"], r["keep"], r["round_to"]) == (
            backend,
            threads,
            batch,
            keep,
            round_to,
        ):
            return r
    return None


def latency_target() -> str:
    """The batch-64 ``latency / FLOPs`` ratios the target section argues from."""
    records = result("latency")
    rows = [
        "| backend | keep | round_to | latency speed-up, 1 thread | latency / FLOPs, 1 thread "
        "| latency speed-up, 2 threads | latency / FLOPs, 2 threads |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in sorted({r["backend"] for r in records}):
        for keep, round_to in sorted(
            {(r["keep"], r["round_to"]) for r in records if r["backend"] == backend},
            key=lambda kr: (-kr[0], -kr[1]),
        ):
            cells = []
            for threads in (1, 2):
                r = _latency_cell(records, backend, threads, 64, keep, round_to)
                cells += (
                    [f"{r['latency_speedup']:.2f}x", f"{r['latency_over_flops_speedup']:.2f}"]
                    if r
                    else ["–", "–"]
                )
            rows.append(f"| {backend} | {keep} | {round_to} | {' | '.join(cells)} |")
    return "\n".join(
        [
            *rows,
            "",
            "Batch 64; the target is latency / FLOPs ≥ 0.85 on ort-cpu. Machine: "
            + _latency_machine(records)
            + ". Command: `uv run --frozen python benchmarks/latency.py`; record: "
            "`benchmarks/results/latency.json` (the latency table above).",
        ]
    )


def latency_model() -> str:
    r = result("latency_model")
    nets = r["networks"]
    flops = [n["flops_ratio"] for n in nets]
    off = sorted((n for n in nets if abs(n["ratio_error"]) > 0.2), key=lambda n: n["flops_ratio"])
    off_text = ", ".join(
        f"measured {n['measured_ratio']:.2f} against predicted {n['predicted_ratio']:.2f} at "
        f"{n['flops_ratio']:.2f} of the FLOPs"
        for n in off
    )
    rt = r["runtime"]
    return "\n".join(
        [
            "| quantity | median abs. error | max abs. error |",
            "|---|---:|---:|",
            "| latency ratio to dense (what a budget constrains), measured side by side "
            f"| **{100 * r['median_abs_ratio_error']:.1f} %** "
            f"| {100 * r['max_abs_ratio_error']:.0f} % |",
            f"| latency in ms | {100 * r['median_abs_error']:.1f} % "
            f"| {100 * r['max_abs_error']:.0f} % |",
            "",
            f"{len(nets)} random compact {comparison.ARCH_NAMES.get(r['arch'], r['arch'])}s "
            f"(`round_to` {r['round_to']}, FLOPs {span(flops)} of dense), batch {rt['batch']}, "
            f"{rt['threads']} thread(s), ONNX Runtime `{rt['provider']}`, each network "
            f"alternated {r['rounds']} times with the dense one; the model: "
            f"{r['layer_points']} layer shapes, built in {r['build_s']:.0f} s. "
            f"{len(off)} network(s) off by more than 20 % in the ratio"
            + (f" ({off_text})" if off else "")
            + ". The record does not name the machine. Command: `uv run --frozen python "
            "benchmarks/latency_model.py`; record: `benchmarks/results/latency_model.json`.",
        ]
    )


def _mean(values) -> float:
    return statistics.fmean(list(values))


def latency_budgets() -> str:
    """FLOPs budget 0.5 against latency budgets 0.8 and 0.5 (bf16 cells of compare_methods);
    measured latency ratios of FLOPs-0.5 models from the records that timed them."""
    flops_cell, lat_cell = _cell("bf16"), _cell("bf16", "latency")
    int8 = result("int8")
    rows = [
        "| budget | method | test top-1 | val top-1 | FLOPs ratio | predicted latency ratio "
        "| measured latency ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = []
    stats: dict = {}

    def row(label: str, method: str, rs: list[dict], predicted: str, measured: str) -> None:
        runs.extend(rs)
        test, std = mean_std(100 * r["test_top1"] for r in rs)
        stats[(label, method)] = {
            "test": test,
            "flops": _mean(r["flops_ratio"] for r in rs),
            "runs": rs,
        }
        rows.append(
            f"| {label} | {method} | {test:.2f} ± {std:.2f} "
            f"| {_mean(100 * r['val_top1'] for r in rs):.2f} "
            f"| {_mean(r['flops_ratio'] for r in rs):.3f} | {predicted} | {measured} |"
        )

    def by_seed(rows_: dict, budget: float, variant: str) -> list[dict]:
        return [r for _, r in sorted(comparison.by_seed(rows_, budget, variant).items())]

    def latency_rows(budget: float, method: str) -> None:
        rs = by_seed(lat_cell, budget, method)
        if rs:
            row(
                f"latency {budget}",
                method,
                rs,
                span([r["predicted_latency_ratio"] for r in rs], sep="-"),
                ", ".join(f"{r['latency_ratio']:.2f}" for r in rs),
            )

    int8_fp32 = [1 / x["fp32_speedup_over_dense"] for x in int8["runs"]]
    gates = by_seed(flops_cell, 0.5, "jst-no-gates")
    flops_measured = {
        "scratch": f"{span(int8_fp32, sep='-')} (`int8.py`'s fp32 models)",
        "jst": f"{span([r['latency_ratio'] for r in gates], sep='-')} (the gate ablation's models)"
        if gates
        else "–",
    }
    for method in ("scratch", "jst"):
        row("FLOPs 0.5", method, by_seed(flops_cell, 0.5, method), "–", flops_measured[method])
        latency_rows(0.8, method)
    for method in ("scratch", "jst"):
        latency_rows(0.5, method)

    measured = [r for r in runs if "latency_ratio" in r and "predicted_latency_ratio" in r]
    miss = max(abs(r["latency_ratio"] / r["predicted_latency_ratio"] - 1) for r in measured)
    at_half = [r for r in measured if r["budget"] == 0.5]
    findings = []
    for method in ("scratch", "jst"):
        lat, base = stats.get(("latency 0.8", method)), stats.get(("FLOPs 0.5", method))
        if lat and base:
            low = min(lat["runs"], key=lambda r: r["test_top1"])
            findings.append(
                f"{method} keeps {lat['flops']:.2f} of the FLOPs at latency 0.8 and scores "
                f"{signed(lat['test'] - base['test'], '.1f')} points of test top-1 against "
                f"FLOPs 0.5 (lowest seed: {100 * low['test_top1']:.1f} %, seed {low['seed']})"
            )
    return "\n".join(
        [
            *rows,
            "",
            f"From these records: {'; '.join(findings)}. Measured latency ratios differ from "
            f"the predicted ones by up to {100 * miss:.0f} %; at latency 0.5 the measured "
            f"ratios are {span([r['latency_ratio'] for r in at_half], sep='-')} and the "
            f"networks keep {span([r['flops_ratio'] for r in at_half], sep='-')} of the FLOPs. "
            f"{machines_text([*(r['machine'] for r in runs), int8['machine']])}; commits "
            f"{commits_text(runs)}. Records: `{comparison.RESULTS}`, "
            "`benchmarks/results/int8.json`.",
        ]
    )


# --- int8 (int8.py) -------------------------------------------------------------------


def _int8_summary(r: dict) -> dict:
    runs = r["runs"]
    drops = [100 * (x["test_top1_int8"] - x["test_top1_fp32"]) for x in runs]
    return {
        "drops": drops,
        "drop": _mean(drops),
        "over_fp32": _mean(x["int8_speedup_over_fp32"] for x in runs),
        "over_dense": _mean(x["int8_speedup_over_dense"] for x in runs),
        "fp32_over_dense": [x["fp32_speedup_over_dense"] for x in runs],
    }


def _int8_setup(r: dict, out: str) -> str:
    command = "uv run --frozen python benchmarks/int8.py" + (
        f" --round-to {r['round_to']} --out benchmarks/results/{out}.json"
        if "round_to" in r
        else ""
    )
    return (
        f"{comparison.ARCH_NAMES.get(r['arch'], r['arch'])} at {r['target_flops']} of the FLOPs, "
        f"{r['epochs']} epochs, `round_to` {r.get('round_to', 8)}, {r['threads']} thread(s); "
        f"{machine_text(r['machine'])}. Command: `{command}`; record: "
        f"`benchmarks/results/{out}.json`."
    )


def int8_table() -> str:
    r = result("int8")
    s = _int8_summary(r)
    lines = [
        "| seed | test top-1 fp32 | test top-1 int8 | dense ms | fp32 compact ms | int8 ms "
        "| int8 / fp32 speed-up | int8 / dense speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for x in r["runs"]:
        ms = x["latency_b64_ms"]
        lines.append(
            f"| {x['seed']} | {100 * x['test_top1_fp32']:.2f} | {100 * x['test_top1_int8']:.2f} "
            f"| {ms['dense']:.1f} | {ms['fp32']:.1f} | {ms['int8']:.1f} "
            f"| {x['int8_speedup_over_fp32']:.2f} | {x['int8_speedup_over_dense']:.2f} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"int8 minus fp32 test top-1: {signed(s['drop'])} points on average "
            f"({', '.join(signed(d) for d in s['drops'])}); int8 runs **{s['over_fp32']:.2f}x** "
            f"faster than the fp32 compact model and {s['over_dense']:.2f}x faster than the "
            f"dense fp32 model (means over seeds). {_int8_setup(r, 'int8')}",
        ]
    )


def int8_round16() -> str:
    r, base = result("int8_round16"), result("int8")
    s, b = _int8_summary(r), _int8_summary(base)
    lines = [
        "| seed | test top-1 fp32 | test top-1 int8 | int8 / fp32 speed-up | int8 / dense "
        "speed-up | fp32 / dense speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for x in r["runs"]:
        lines.append(
            f"| {x['seed']} | {100 * x['test_top1_fp32']:.2f} | {100 * x['test_top1_int8']:.2f} "
            f"| {x['int8_speedup_over_fp32']:.2f} | {x['int8_speedup_over_dense']:.2f} "
            f"| {x['fp32_speedup_over_dense']:.2f} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"The fp32 compact model runs {span(s['fp32_over_dense'])}x the dense one's speed "
            f"(`round_to` {base.get('round_to', 8)}: {span(b['fp32_over_dense'])}x); int8 "
            f"adds {s['over_fp32']:.2f}x on top of it, {s['over_dense']:.2f}x the dense model "
            f"on average, for {signed(s['drop'])} points of test top-1. "
            f"{_int8_setup(r, 'int8_round16')}",
        ]
    )


# --- channel discovery on torchvision models (discovery_structure.py) -----------------


def whole_reasons(whole: list[dict]) -> str:
    """The reasons channel classes were left whole, layer names dropped, with counts."""
    counts: Counter = Counter()
    for w in whole:
        reason = re.sub(r"^layer '[^']*' is an? ", "", w["reason"])
        reason = re.sub(r"^'([^']*)' \(node '[^']*'\) ", r"`\1` ", reason)
        reason = re.sub(r" \(groups=\d+\)", "", reason)
        counts[reason] += 1
    return "; ".join(f"{reason} ({n})" for reason, n in counts.items())


def discovery_structure() -> str:
    r = result("discovery")
    lines = [
        "| model | prunable groups | coupled | depthwise convs pruned | classes left whole "
        "| why whole (classes) |",
        "|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        lines.append(
            f"| {m['model']} | {m['groups']} | {m['coupled']} | {m['depthwise_pruned']} "
            f"| {len(m['whole'])} | {whole_reasons(m['whole'])} |"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"Input {'x'.join(str(d) for d in r['input_shape'])}, 10 classes, discovered on "
            f"the meta device; {machine_text(r['machine'])}; commit {r['commit']}. Command: "
            "`uv run --frozen python benchmarks/discovery_structure.py`; record: "
            "`benchmarks/results/discovery.json`.",
        ]
    )


def coverage() -> str:
    """Prunable share of conv channels per model, now and in an earlier tree."""
    r = result("coverage")
    now, before = r["now"], r.get("before", {"models": {}, "commit": "none"})
    lines = [
        "| model | before | now | hidden linear features that prune now |",
        "|---|---|---|---|",
    ]
    for name, row in now["models"].items():
        earlier = before["models"].get(name)
        was = f"{earlier['conv_share']:.2f}" if earlier else "–"
        extra = f"{row['linear_features']:,}" if row["linear_features"] else ""
        lines.append(f"| {name} | {was} | {row['conv_share']:.2f} | {extra} |")
    shape = "x".join(map(str, now["input_shape"]))
    return "\n".join(
        [
            *lines,
            "",
            f"Share of conv output channels in channel groups at {shape}: now, commit "
            f"{now['commit']}; before, commit {before['commit']} (the same measure run on that "
            "tree). Command: `uv run python benchmarks/coverage.py`; record: "
            "`benchmarks/results/coverage.json`.",
        ]
    )


def any_cnn_latency() -> str:
    """Params and ONNX Runtime CPU latency at a 0.5 FLOPs budget, dense vs pruned."""
    r = result("any_cnn_latency")
    lines = [
        "| model | FLOPs kept | params, pruned / dense "
        "| latency, pruned / dense (medians of rounds) | speed-up (median, range) |",
        "|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        speedups = [d / c for d, c in zip(m["dense_ms"], m["compact_ms"], strict=True)]
        lines.append(
            f"| {name} | {m['flops_ratio']:.3f} | {m['params'] / 1e6:.2f} M / "
            f"{m['dense_params'] / 1e6:.2f} M ({m['params'] / m['dense_params']:.3f}) | "
            f"{statistics.median(m['compact_ms']):.0f} ms / "
            f"{statistics.median(m['dense_ms']):.0f} ms | "
            f"{m['speedup_median']:.2f}× ({span(speedups)}) |"
        )
    return "\n".join(
        [
            *lines,
            "",
            f"Uniform widths at the default budget (`target_flops` 0.5, `round_to` 8), untrained "
            f"weights, 3x{r['side']}x{r['side']}, batch {r['batch']}, ONNX Runtime CPU, "
            f"{r['rounds']} interleaved rounds of {r['repeats']} runs; {machine_text(r['machine'])}"
            f"; commit {r['commit']}. Command: `uv run python benchmarks/any_cnn_latency.py`; "
            "record: `benchmarks/results/any_cnn_latency.json`.",
        ]
    )


BLOCKS: dict[tuple[str, str], Callable[[], str]] = {
    ("docs/performance.md", "default-run"): default_run,
    ("docs/performance.md", "amx-speed"): amx_speed,
    ("docs/performance.md", "bf16-accuracy"): bf16_accuracy,
    ("docs/performance.md", "train-throughput"): train_throughput,
    ("docs/performance.md", "train-vs-plain"): train_vs_plain,
    ("docs/performance.md", "latency"): latency,
    ("docs/performance.md", "latency-model"): latency_model,
    ("docs/performance.md", "latency-budgets"): latency_budgets,
    ("docs/performance.md", "int8"): int8_table,
    ("docs/performance.md", "int8-round16"): int8_round16,
    ("docs/performance.md", "latency-target"): latency_target,
    ("docs/discovery.md", "torchvision-structure"): discovery_structure,
    ("docs/discovery.md", "coverage"): coverage,
    ("docs/discovery.md", "any-cnn-latency"): any_cnn_latency,
}
