"""`jst experiments`: the compact table of DVC experiments, from `dvc exp show --json`."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.experiments import HEADERS, experiment_rows, experiments_table

runner = CliRunner()


def entry(rev: str, name: str | None, search: dict, evaluate: dict | None, experiments=None):
    """One revision as `dvc exp show --json` gives it."""
    metrics = {} if evaluate is None else {"metrics/evaluate.json": {"data": evaluate}}
    return {
        "rev": rev,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"search": search, "seed": 0}}},
            "metrics": metrics,
        },
        "experiments": experiments,
    }


EVALUATE = {"top1": 0.9916, "flops_ratio": 0.4985, "speedup": 1.6705, "params": 99770}
SHOWN = [
    entry("workspace", None, {"method": "jst", "target_flops": 0.5}, EVALUATE),
    entry(
        "52c389b" + "0" * 33,
        "main",
        {"method": "jst", "target_flops": 0.5},
        EVALUATE,
        experiments=[
            {
                "revs": [
                    entry(
                        "a" * 40,
                        "a-rather-long-experiment-name-from-dvc-exp-run",
                        {"method": "l1", "target_flops": 0.3, "target_latency": 0.4},
                        {"top1": 0.985, "flops_ratio": 0.29, "speedup": 2.5, "params": 51234},
                    )
                ]
            },
            {"revs": [entry("b" * 40, "failed-run", {"method": "random"}, None)]},
        ],
    ),
]


def test_rows_name_method_budget_and_the_compared_metrics():
    rows = experiment_rows(SHOWN)
    assert [row.cells() for row in rows] == [
        ("workspace", "jst", "FLOPs 0.5", "99.16 %", "0.498", "1.67x", "99.8 k"),
        ("main", "jst", "FLOPs 0.5", "99.16 %", "0.498", "1.67x", "99.8 k"),
        (
            "a-rather-long-experiment-na…",
            "l1",
            "latency 0.4",
            "98.50 %",
            "0.290",
            "2.50x",
            "51.2 k",
        ),
        ("failed-run", "random", "-", "-", "-", "-", "-"),
    ]


def test_the_table_is_aligned_and_fits_120_columns():
    lines = experiments_table(experiment_rows(SHOWN))
    assert lines[0].split() == [word for header in HEADERS for word in header.split()]
    assert max(len(line) for line in lines) <= 120
    top1_ends = {line.index("%") for line in lines[1:] if "%" in line}
    assert len(top1_ends) == 1  # numbers right-aligned in their column


def test_jst_experiments_reads_a_real_dvc_repository(tmp_path, monkeypatch):
    def run(*command: str) -> None:
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"search": {"method": "jst", "target_flops": 0.5}})
    )
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(EVALUATE))
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump({"params": ["params.yaml"], "metrics": ["metrics/evaluate.json"]})
    )
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a run")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["experiment", "workspace", lines[2].split()[0]]
    expected = ["jst", "FLOPs 0.5", "99.16 %", "0.498", "1.67x", "99.8 k"]
    assert [cell.strip() for cell in lines[1].split("  ") if cell.strip()][1:] == expected


def test_outside_a_dvc_repository_the_error_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert message.startswith("error: `dvc exp show --json` failed in")
    assert "run jst experiments in the repository's folder" in message
