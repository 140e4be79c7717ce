"""The steps of the retraining workflow (.github/workflows/retrain.yml), runnable locally.

Run from the repository root with the project's environment, in this order:

    uv run python scripts/ci/retrain.py pull     # inputs and last outputs from the DVC remote
    uv run python scripts/ci/retrain.py repro    # dvc repro, logging to $MLFLOW_TRACKING_URI
    uv run python scripts/ci/retrain.py push     # outputs to the DVC remote (not for pull requests)
    uv run python scripts/ci/retrain.py report --out report.md --plots-dir plots-html

Each reads GitHub's variables where it runs in Actions (GITHUB_EVENT_NAME, GITHUB_BASE_REF,
...) and works without them. Exit status 1 with one ``error:`` line on a user error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Events whose results may be pushed to the remote: never code from a pull request.
PUSH_EVENTS = frozenset({"push", "workflow_dispatch", "schedule"})
# Tracking settings taken from repository variables/secrets; empty ones are dropped.
TRACKING_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
REPORT_MARKER = "<!-- jst-retrain-report -->"  # finds the PR comment to update
MAX_REPORT_CHARS = 60_000  # GitHub refuses comments over 65,536 characters
MAX_POINTS = 50  # per chart line: enough to see a curve, small enough for a comment
BASE_COLOR, RUN_COLOR = "#9e9e9e", "#d1495b"  # base revision, this run


class CIError(Exception):
    """A problem the user fixes (remote, revision); printed as one line, exit status 1."""


# --------------------------------------------------------------------------- helpers


def dvc(*args: str, capture: bool = False) -> str:
    """Run ``dvc args`` with this interpreter's DVC; output goes to the console unless captured."""
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise CIError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}); see above.")
    return result.stdout or ""


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], text=True, capture_output=True)


def say(message: str, level: str = "notice") -> None:
    """Print ``message``; in GitHub Actions also as an annotation on the run."""
    prefix = f"::{level}::" if os.environ.get("GITHUB_ACTIONS") == "true" else ""
    print(f"{prefix}{message}", flush=True)


def without_credentials(uri: str) -> str:
    """``uri`` without a user:password part, for logs and reports."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


# --------------------------------------------------------------------------- remote


@dataclass(frozen=True)
class Remote:
    name: str
    url: str


def default_remote() -> Remote | None:
    """The default DVC remote (``dvc remote add -d``), or None when none is configured."""
    from dvc.repo import Repo

    with Repo() as repo:
        name = repo.config["core"].get("remote")
        if not name:
            return None
        if name not in repo.config["remote"]:
            raise CIError(f"default DVC remote {name!r} is not defined; see `dvc remote list`.")
        return Remote(name, repo.config["remote"][name]["url"])


def check_reachable(remote: Remote) -> None:
    """Fail before any transfer when the remote cannot be read or holds nothing."""
    from dvc.repo import Repo

    hint = (
        "check the URL (`dvc remote list`) and, in CI, the credentials secrets "
        "(docs/sharing.md#ci-variables-and-secrets)"
    )
    try:
        with Repo() as repo:
            location = repo.cloud.get_remote(remote.name)
            found = location.fs.exists(location.path)
    except Exception as error:  # any backend's connection or auth error
        raise CIError(
            f"DVC remote {remote.name!r} ({remote.url}) is unreachable: {error}; {hint}."
        ) from None
    if not found:
        raise CIError(
            f"DVC remote {remote.name!r} ({remote.url}) holds nothing: push to it once "
            f"(`dvc push` on your machine) or {hint}."
        )


def tracked_inputs() -> list[str]:
    """The ``dvc add``-ed data (``*.dvc`` files in git), e.g. data/raw.dvc."""
    listed = git("ls-files", "--", "*.dvc")
    return [line for line in listed.stdout.splitlines() if line.strip()]


def pull() -> None:
    remote = default_remote()
    if remote is None:
        say(
            "No default DVC remote configured: nothing pulled, every stage runs from scratch. "
            "Set one with `dvc remote add -d <name> <url>` (docs/sharing.md).",
            "warning",
        )
        return
    check_reachable(remote)
    inputs = tracked_inputs()
    if inputs:  # data cannot be rebuilt: every file must be on the remote
        say(f"Pulling the tracked data {', '.join(inputs)} from {remote.name!r}.")
        dvc("pull", *inputs)
    # Outputs missing on the remote (new parameters) are rebuilt by dvc repro.
    say(f"Pulling the pipeline's last outputs from {remote.name!r} ({remote.url}).")
    dvc("pull", "--allow-missing")


def push(event: str) -> None:
    if event and event not in PUSH_EVENTS:
        say(f"Event {event!r}: outputs are not pushed (only for {', '.join(sorted(PUSH_EVENTS))}).")
        return
    remote = default_remote()
    if remote is None:
        say("No default DVC remote configured: the outputs stay on this machine.", "warning")
        return
    say(f"Pushing the outputs to {remote.name!r} ({remote.url}).")
    dvc("push")


# --------------------------------------------------------------------------- repro


def tracking_environment(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without empty MLflow settings (unset repository variables arrive empty)."""
    return {k: v for k, v in environ.items() if k not in TRACKING_ENV or v.strip()}


def tracking_target(environ: dict[str, str]) -> str:
    uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return without_credentials(uri)
    return "mlflow.db in the repository (no MLFLOW_TRACKING_URI set)"


def repro() -> None:
    environment = tracking_environment(dict(os.environ))
    say(f"MLflow tracking: {tracking_target(environment)}.")
    command = [sys.executable, "-m", "dvc", "repro"]
    result = subprocess.run(command, env=environment)
    if result.returncode != 0:
        raise CIError(f"`dvc repro` failed (exit {result.returncode}); see above.")


# --------------------------------------------------------------------------- base revision


def base_candidates(event: str, base_ref: str, before: str) -> list[str]:
    """Where to compare from: the target branch of a pull request, the previous tip of a
    pushed branch, otherwise the last commit (what this run changed); then fallbacks."""
    first = {"pull_request": f"origin/{base_ref}" if base_ref else "", "push": before}
    return [rev for rev in (first.get(event, ""), "HEAD~1", "HEAD") if rev]


def resolve_base(candidates: Sequence[str]) -> str:
    for rev in candidates:
        if git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").returncode == 0:
            return rev
    raise CIError(f"none of the revisions {', '.join(candidates)} exists; is this a git clone?")


# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Series:
    """One plotted line or bar set of one revision: x labels and numeric values."""

    revision: str
    labels: tuple[str, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class Chart:
    plot: str
    field: str
    x_title: str
    categorical: bool  # bars per category (e.g. kept width per group), else lines over x
    base: Series | None
    run: Series | None


def find_encoding(node: Any, axis: str) -> dict[str, Any] | None:
    """The first ``encoding.<axis>`` with a field anywhere in a Vega-Lite spec."""
    if isinstance(node, dict):
        spec = (node.get("encoding") or {}).get(axis)
        if isinstance(spec, dict) and "field" in spec:
            return spec
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = find_encoding(child, axis)
        if found:
            return found
    return None


def number(text: Any) -> float | None:
    """``text`` as a finite float, else None (blank CSV cells, NaN: not charted)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def rows_by_revision(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        rest = {k: v for k, v in row.items() if k != "rev"}
        grouped.setdefault(str(row.get("rev")), []).append(rest)
    return grouped


def plot_charts(plot: str, content: dict[str, Any], base: str, run: str) -> list[Chart]:
    """The charts of one plot whose data differ between ``base`` and ``run`` (none if equal)."""
    grouped = rows_by_revision(content.get("data", {}).get("values") or [])
    if grouped.get(base, []) == grouped.get(run, []):
        return []
    x_enc, y_enc = find_encoding(content, "x") or {}, find_encoding(content, "y") or {}
    categorical = y_enc.get("type") in ("nominal", "ordinal")
    label_field, value_field = (
        (y_enc.get("field"), x_enc.get("field"))
        if categorical
        else (x_enc.get("field"), y_enc.get("field"))
    )
    fields = sorted({str(r.get("field", value_field)) for rows in grouped.values() for r in rows})
    charts = []
    for field in fields:
        series = {
            rev: to_series(
                rev,
                [r for r in grouped.get(rev, []) if r.get("field", field) == field],
                label_field,
                value_field,
            )
            for rev in (base, run)
        }
        if series[base] != series[run] and (series[base] or series[run]):
            title = str(label_field if categorical else x_enc.get("title") or label_field)
            charts.append(Chart(plot, field, title, categorical, series[base], series[run]))
    return charts


def to_series(revision: str, rows: list[dict], label_field: Any, value_field: Any) -> Series | None:
    points = [(str(r.get(label_field)), number(r.get(value_field))) for r in rows]
    points = [(label, value) for label, value in points if value is not None]
    if not points:
        return None
    if len(points) > MAX_POINTS:  # evenly spaced, the last point kept
        step = (len(points) - 1) / (MAX_POINTS - 1)
        points = [points[round(i * step)] for i in range(MAX_POINTS)]
    labels, values = zip(*points, strict=True)
    return Series(revision, labels, values)


def plain(value: float) -> str:
    """``value`` as Mermaid reads numbers: decimal notation, no exponent."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def quoted(text: str) -> str:
    return '"' + text.replace('"', "'") + '"'


def mermaid(chart: Chart, series: Sequence[tuple[Series, str]]) -> str:
    """A Mermaid ``xychart-beta`` (GitHub renders it) of ``series``, sharing x labels."""
    labels = series[0][0].labels
    palette = ", ".join(color for _, color in series)
    init = {"themeVariables": {"xyChart": {"plotColorPalette": palette}}}
    kind = "xychart-beta horizontal" if chart.categorical else "xychart-beta"
    lines = [
        "```mermaid",
        f"%%{{init: {json.dumps(init)}}}%%",
        kind,
        f"    title {quoted(f'{chart.plot}: {chart.field}')}",
        f"    x-axis {quoted(chart.x_title)} [{', '.join(quoted(x) for x in labels)}]",
        f"    y-axis {quoted(chart.field)}",
    ]
    for index, (one, _) in enumerate(series):
        mark = "bar" if chart.categorical and index == len(series) - 1 else "line"
        lines.append(f"    {mark} [{', '.join(plain(v) for v in one.values)}]")
    lines.append("```")
    return "\n".join(lines)


def render_chart(chart: Chart, base_desc: str) -> str:
    """One chart of both revisions when they share x labels, else one chart for each."""
    base, run = chart.base, chart.run
    if base and run and base.labels == run.labels:
        legend = f"grey: base {base_desc}, red: this run"
        return f"{mermaid(chart, [(base, BASE_COLOR), (run, RUN_COLOR)])}\n\n{legend}"
    parts = []
    for one, color, name in ((base, BASE_COLOR, f"base {base_desc}"), (run, RUN_COLOR, "this run")):
        if one is None:
            parts.append(f"{name}: no data")
        else:
            parts.append(f"{name}:\n\n{mermaid(chart, [(one, color)])}")
    return "\n\n".join(parts)


def changed_plots(base: str) -> tuple[list[Chart], list[str]]:
    """The charts of every plot whose data changed since ``base``; the unchanged plots' names."""
    output = dvc("plots", "diff", "--json", base, capture=True)
    plots = json.loads(output).get("data") or {}
    charts, unchanged = [], []
    for name, renders in plots.items():
        found = [
            chart
            for render in renders
            if render.get("type") == "vega"
            for chart in plot_charts(name, render.get("content") or {}, base, "workspace")
        ]
        charts.extend(found)
        if not found:
            unchanged.append(name)
    return charts, unchanged


# --------------------------------------------------------------------------- report


def run_url() -> str:
    keys = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    server, repository, run_id = (os.environ.get(k, "") for k in keys)
    return f"{server}/{repository}/actions/runs/{run_id}" if run_id else ""


def report_markdown(base: str, plots_dir: Path) -> str:
    short = git("rev-parse", "--short", base).stdout.strip()
    base_desc = f"`{base}` ({short})" if short and short != base else f"`{base}`"
    metrics = dvc("metrics", "diff", "--md", base, capture=True).strip()
    params = dvc("params", "diff", "--md", base, capture=True).strip()
    charts, unchanged = changed_plots(base)
    dvc("plots", "diff", base, "--out", str(plots_dir), capture=True)

    head = [
        REPORT_MARKER,
        f"## Retraining: metrics vs {base_desc}",
        "",
        metrics or "No metric changed.",
        "",
        "### Parameters changed",
        "",
        params or "No parameter changed.",
        "",
        f"MLflow tracking: {tracking_target(tracking_environment(dict(os.environ)))}.",
    ]
    if git("diff", "--quiet", "--", "dvc.lock").returncode != 0:
        head += ["", "This run changed `dvc.lock`: commit it (run artifact) to share its outputs."]
    head += ["", "### Plots that changed", ""]
    link = run_url()
    tail = [
        "",
        f"Unchanged plots: {', '.join(unchanged)}." if unchanged else "",
        f"Every plot, interactive: `dvc plots diff` HTML in the artifacts of {link or 'the run'}.",
    ]
    return assemble(head, [render_section(c, base_desc) for c in charts], tail)


def render_section(chart: Chart, base_desc: str) -> str:
    return f"#### {chart.plot}: {chart.field}\n\n{render_chart(chart, base_desc)}\n"


def assemble(head: list[str], sections: list[str], tail: list[str]) -> str:
    """``head``, as many chart sections as fit in a PR comment, ``tail``."""
    text = "\n".join(head) + "\n"
    budget = MAX_REPORT_CHARS - len(text) - len("\n".join(tail)) - 200
    if not sections:
        text += "No plot changed.\n"
    for index, section in enumerate(sections):
        if len(section) + 1 > budget:
            text += f"\n{len(sections) - index} more changed charts in the HTML artifact.\n"
            break
        text += section + "\n"
        budget -= len(section) + 1
    return text + "\n".join(line for line in tail if line) + "\n"


def report(out: Path, plots_dir: Path, base: str | None) -> None:
    event, base_ref, before = (
        os.environ.get(k, "") for k in ("GITHUB_EVENT_NAME", "GITHUB_BASE_REF", "BEFORE_SHA")
    )
    resolved = resolve_base([base] if base else base_candidates(event, base_ref, before))
    out.write_text(report_markdown(resolved, plots_dir))
    say(f"Report vs {resolved} written to {out}; plots to {plots_dir}/.")


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("pull", help="pull tracked data and last outputs from the default remote")
    steps.add_parser("repro", help="dvc repro, with MLflow settings from the environment")
    steps.add_parser("push", help="push the outputs (not for pull requests)")
    report_parser = steps.add_parser("report", help="Markdown metrics/params/plots diff")
    report_parser.add_argument("--out", type=Path, required=True, help="the Markdown file")
    report_parser.add_argument("--plots-dir", type=Path, required=True, help="HTML plots dir")
    report_parser.add_argument("--base", help="revision to compare with (default: by event)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.step == "pull":
            pull()
        elif args.step == "repro":
            repro()
        elif args.step == "push":
            push(os.environ.get("GITHUB_EVENT_NAME", ""))
        else:
            report(args.out, args.plots_dir, args.base)
    except CIError as error:
        say(f"error: {error}", "error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
