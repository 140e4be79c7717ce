"""Reading the committed records (``benchmarks/results/*.json``, the default pipeline run's
``metrics/*.json``) and the words every generated table uses for their numbers and for
the machine and code they came from."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ROOT / "metrics"


# search_cost.py's current records: the pipeline's default 12 search epochs, the long schedule
SEARCH_COST_RECORDS = ("search_cost", "search_cost_60")


def search_cost_timings(r: dict) -> list[tuple[str | None, dict, list[float], list[float]]]:
    """A search_cost.py record's timed settings, each as (variant name, its search.jst
    overrides, CPU-time ratios, wall-time ratios) over the rounds: the shipped knobs
    first (name None), then every variant timed in the same rounds."""
    settings = [(None, {}, "")] + [
        (name, v["overrides"], f"{name}_") for name, v in r.get("variants", {}).items()
    ]
    rounds = r["rounds"]
    return [
        (
            name,
            overrides,
            [x[f"{prefix}cpu_ratio"] for x in rounds],
            [x[f"{prefix}ratio"] for x in rounds],
        )
        for name, overrides, prefix in settings
    ]


def result(name: str):
    return json.loads((RESULTS / f"{name}.json").read_text())


def metrics(name: str) -> dict:
    """What stage ``name`` recorded: ``metrics/<name>.json`` (the values compared across runs)
    with ``metrics/details/<name>.json`` (everything else), where the stage writes one."""
    record = json.loads((METRICS / f"{name}.json").read_text())
    details = METRICS / "details" / f"{name}.json"
    return json.loads(details.read_text()) | record if details.is_file() else record


def span(values, fmt: str = ".2f", sep: str = "–") -> str:
    """``lo–hi`` of the values, or the one value when they agree at this precision."""
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}{sep}{hi}"


def signed(x: float, fmt: str = ".2f") -> str:
    """``+1.00`` / ``−1.00`` (a typographic minus, as the tables write it); 0 unsigned."""
    text = format(x, fmt)
    if float(text) == 0:
        return format(0.0, fmt)
    return ("+" + text) if x > 0 else text.replace("-", "−")


def machine_text(m) -> str:
    """One line naming a record's machine, whichever fields its script wrote."""
    if isinstance(m, str):
        return f"machine recorded as `{m}` only"
    parts = [m.get("cpu") or m.get("device") or "machine not named"]
    cpus = m.get("cores") or m.get("logical_cpus")
    if cpus:
        parts.append(f"{cpus} CPU(s)")
    # compare_methods.py wrote torch's thread count as "cpus" before it wrote "threads"
    threads = m.get("torch_threads") or m.get("threads") or m.get("cpus")
    if threads:
        parts.append(f"{threads} torch thread(s)")
    if "amx" in m:
        parts.append("AMX" if m["amx"] else "no AMX")
    if "gpu" in m:
        parts.append(f"GPU {m['gpu']}" if m["gpu"] else "no GPU")
    for lib in ("torch", "torchvision", "onnxruntime"):
        if m.get(lib):
            parts.append(f"{lib} {m[lib]}")
    return ", ".join(parts)


def machines_text(records) -> str:
    """The distinct machines of several records, ``; ``-separated."""
    seen = []
    for r in records:
        text = machine_text(r)
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def commits_text(runs) -> str:
    found = sorted({r.get("committed_in") or r.get("commit") or "not recorded" for r in runs})
    return ", ".join(found)
