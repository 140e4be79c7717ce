"""The experiments at a glance: what ``jst experiments`` prints.

One row per DVC experiment (``dvc exp show --json``: the workspace, the commit it is based
on and the experiments run from it), with the few values a person compares: method, budget,
test top-1, kept FLOPs, latency speed-up and parameters. Everything else stays in ``dvc exp
show`` and in MLflow. DVC runs as a subprocess (this package imports neither DVC nor MLflow
outside ``pipeline.tracking``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

HEADERS = ("experiment", "method", "budget", "top-1", "FLOPs ratio", "speed-up", "params")
NAME_WIDTH = 28  # longer experiment names are shortened: the table fits 120 columns
MISSING = "-"


@dataclass(frozen=True)
class ExperimentRow:
    name: str
    method: str | None
    budget: str | None
    top1: float | None
    flops_ratio: float | None
    speedup: float | None
    params: int | None

    def cells(self) -> tuple[str, ...]:
        return (
            _shorten(self.name, NAME_WIDTH),
            self.method or MISSING,
            self.budget or MISSING,
            MISSING if self.top1 is None else f"{100 * self.top1:.2f} %",
            MISSING if self.flops_ratio is None else f"{self.flops_ratio:.3f}",
            MISSING if self.speedup is None else f"{self.speedup:.2f}x",
            MISSING if self.params is None else f"{self.params / 1e3:.1f} k",
        )


def read_experiments(repo_root: Path, all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of the repository at ``repo_root`` (``-A``: every commit)."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    if all_commits:
        command.append("--all-commits")
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise PipelineError(
            f"`dvc exp show --json` failed in {repo_root} ({detail[0]}); run jst experiments "
            "in the repository's folder, after `uv run dvc repro`"
        )
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as error:
        raise PipelineError(f"`dvc exp show --json` printed no JSON ({error})") from None


def experiment_rows(shown: Sequence[Mapping[str, Any]]) -> list[ExperimentRow]:
    """The rows of ``dvc exp show --json``: each commit, then its experiments."""
    return [_row(entry) for entry in _entries(shown)]


def _entries(shown: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for entry in shown:
        yield entry
        for group in entry.get("experiments") or []:
            yield from group.get("revs") or []


def _row(entry: Mapping[str, Any]) -> ExperimentRow:
    data = entry.get("data") or {}
    params = _file_data(data.get("params"), "params.yaml")
    evaluate = _file_data(data.get("metrics"), "metrics/evaluate.json")
    search = params.get("search") or {}
    rev = str(entry.get("rev") or "?")
    name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
    return ExperimentRow(
        name=str(name),
        method=search.get("method"),
        budget=budget_label(search),
        top1=_number(evaluate.get("top1")),
        flops_ratio=_number(evaluate.get("flops_ratio")),
        speedup=_number(evaluate.get("speedup")),
        params=None if _number(evaluate.get("params")) is None else int(evaluate["params"]),
    )


def _file_data(files: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    return ((files or {}).get(name) or {}).get("data") or {}


def budget_label(search: Mapping[str, Any]) -> str | None:
    if search.get("target_latency") is not None:
        return f"latency {search['target_latency']:g}"
    if search.get("target_flops") is not None:
        return f"FLOPs {search['target_flops']:g}"
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def experiments_table(rows: Sequence[ExperimentRow]) -> list[str]:
    """Aligned columns: text left, numbers right; at most 120 characters wide."""
    table = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    numeric_from = HEADERS.index("top-1")
    lines = []
    for line in table:
        cells = [
            cell.rjust(width) if i >= numeric_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
