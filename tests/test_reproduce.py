"""`jst reproduce`'s comparison (pipeline.reproduce): architecture and counts exact, accuracy
metrics within a tolerance, every difference shown.

Each test writes a real rebuilt ``metrics/evaluate.json`` and ``dvc.lock`` in a temporary
folder and compares them with a registered version's records; the full rebuild (git clone,
``dvc repro``) is in tests/e2e/test_reproduce.py.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.reproduce import DEFAULT_TOLERANCE, compare, dry_run_steps, rebuild, report
from pipeline.tracking import RecordedModelVersion

ARCH = "2e52ff84a08818ea7d0b161ac12f355f6b3b83e4e16ca13eb2fc679ba99cf637"
# A registered version's evaluate run: what MLflow holds as its metrics.
RECORDED = {
    "top1": 0.9972,
    "top5": 1.0,
    "fp32_top1": 0.9972,
    "flops": 5056832.0,
    "params": 93194.0,
    "flops_ratio": 0.4991913167637508,
    "test_size": 359.0,
    "latency_ms": 7.45,  # a timing: never compared
    "speedup": 1.35,
}
RECORD = {
    "git": {"commit": "f" * 40, "dirty": False},
    "params_yaml": "seed: 0\n",
    "dvc": {"stage": "evaluate", "deps": {"models/model.onnx": "m1", "data/prepared": "d1.dir"}},
}


def recorded_version(metrics: dict = RECORDED, arch: str = ARCH) -> RecordedModelVersion:
    return RecordedModelVersion(
        "compact-cnn", "3", "run3", {"arch_sha256": arch}, {}, metrics, RECORD
    )


def rebuilt_folder(root: Path, changes: dict | None = None, *, onnx_md5: str = "m1") -> Path:
    """A rebuild's results as `dvc repro` leaves them: evaluate.json (ints as ints) and dvc.lock."""
    metrics = {name: int(v) if v.is_integer() else v for name, v in RECORDED.items()}
    metrics |= {"arch_sha256": ARCH, "latency_ms": 9.9, "speedup": 1.1, "provider": "CPU"}
    metrics |= changes or {}
    (root / "metrics").mkdir(parents=True)
    (root / "metrics" / "evaluate.json").write_text(json.dumps(metrics))
    deps = [
        {"path": "models/model.onnx", "md5": onnx_md5},
        {"path": "data/prepared", "md5": "d1.dir"},
    ]
    (root / "dvc.lock").write_text(yaml.safe_dump({"stages": {"evaluate": {"deps": deps}}}))
    return root


def test_equal_metrics_are_reproduced_bit_for_bit(tmp_path: Path) -> None:
    outcome = compare(recorded_version(), rebuilt_folder(tmp_path))
    assert outcome.reproduced and outcome.bit_for_bit
    lines = report(outcome)
    metrics = ["flops", "flops_ratio", "fp32_top1", "params", "test_size", "top1", "top5"]
    compared = ["arch_sha256", *metrics]
    assert [check.name for check in outcome.checks] == compared  # timings left out
    for name in compared:  # every metric is shown: recorded | rebuilt | difference
        assert any(
            line.split()[:2] == ["same", f"{name}:"] and line.endswith("| -") for line in lines
        )
    assert "  same      top1: 0.9972 | 0.9972 | -" in lines
    assert "  same      models/model.onnx: m1 | m1" in lines
    assert lines[-1].startswith("reproduced bit for bit: architecture and every non-timing")
    assert str(tmp_path) in lines[-1]


def test_the_issues_rebuild_on_another_cpu_is_reproduced_within_the_default(tmp_path: Path) -> None:
    """Same architecture, test top-1 99.16 % instead of the recorded 99.72 %."""
    folder = rebuilt_folder(tmp_path, {"top1": 0.9916, "fp32_top1": 0.9944}, onnx_md5="m2")
    outcome = compare(recorded_version(), folder)
    assert outcome.reproduced and not outcome.bit_for_bit
    lines = report(outcome)
    assert "  within    top1: 0.9972 | 0.9916 | -0.0056" in lines
    assert "  within    fp32_top1: 0.9972 | 0.9944 | -0.0028" in lines
    assert "  same      flops: 5056832.0 | 5056832.0 | -" in lines
    assert "  DIFFERENT models/model.onnx: m1 | m2" in lines  # weights differ: shown, not decisive
    assert lines[-1].startswith(
        f"reproduced within tolerance {DEFAULT_TOLERANCE:g}: architecture and counts equal, "
        "largest accuracy difference top1 -0.0056"
    )


def test_accuracy_beyond_the_tolerance_is_not_reproduced(tmp_path: Path) -> None:
    folder = rebuilt_folder(tmp_path, {"top1": 0.9916})
    outcome = compare(recorded_version(), folder, tolerance=0.005)
    assert not outcome.reproduced
    assert [check.name for check in outcome.failed] == ["top1"]
    lines = report(outcome)
    assert "  DIFFERENT top1: 0.9972 | 0.9916 | -0.0056" in lines
    assert lines[-1].startswith("NOT reproduced: top1 differ (accuracies beyond 0.005")
    exact = compare(recorded_version(), folder, tolerance=0)
    assert not exact.reproduced and report(exact)[-1].startswith("NOT reproduced: top1")


def test_a_difference_of_exactly_the_tolerance_passes(tmp_path: Path) -> None:
    folder = rebuilt_folder(tmp_path, {"top1": 0.9972 - 0.01})  # not exactly 0.01 in floats
    assert compare(recorded_version(), folder, tolerance=0.01).reproduced
    assert not compare(recorded_version(), folder, tolerance=0.0099).reproduced


@pytest.mark.parametrize(
    ("changes", "arch", "failed"),
    [
        ({"flops": 5056833}, ARCH, ["flops"]),
        ({"params": 93000, "flops_ratio": 0.5}, ARCH, ["flops_ratio", "params"]),
        ({}, "0" * 64, ["arch_sha256"]),
        ({"top5": None}, ARCH, ["top5"]),  # a metric the rebuild did not write
        ({"top1": math.nan}, ARCH, ["top1"]),
    ],
)
def test_architecture_and_counts_must_be_equal_whatever_the_tolerance(
    tmp_path: Path, changes: dict, arch: str, failed: list[str]
) -> None:
    outcome = compare(recorded_version(arch=arch), rebuilt_folder(tmp_path, changes), tolerance=0.5)
    assert not outcome.reproduced
    assert [check.name for check in outcome.failed] == failed
    lines = report(outcome)
    assert lines[-1].startswith(f"NOT reproduced: {', '.join(failed)} differ")
    for name in failed:
        assert any(line.startswith(f"  DIFFERENT {name}: ") for line in lines), lines


def test_counts_show_their_difference(tmp_path: Path) -> None:
    outcome = compare(recorded_version(), rebuilt_folder(tmp_path, {"flops": 5056833}))
    assert "  DIFFERENT flops: 5056832.0 | 5056833.0 | +1" in report(outcome)
    arch = compare(recorded_version(arch="abc"), rebuilt_folder(tmp_path / "b"))
    assert f"  DIFFERENT arch_sha256: abc | {ARCH} | -" in report(arch)


@pytest.mark.parametrize("tolerance", [-0.01, 1.5, math.nan, "0.01"])
def test_a_bad_tolerance_is_refused_before_any_work(tmp_path: Path, tolerance: object) -> None:
    with pytest.raises(PipelineError, match=r"give a fraction in \[0, 1\]"):
        compare(recorded_version(), tmp_path / "nothing here", tolerance=tolerance)
    with pytest.raises(PipelineError, match=r"give a fraction in \[0, 1\]"):
        rebuild(recorded_version(), tmp_path, tmp_path / "new", echo=print, tolerance=tolerance)
    assert not (tmp_path / "new").exists()


def test_cli_tolerance_defaults_to_the_library_constant_and_checks_its_range() -> None:
    command = typer.main.get_command(app).commands["reproduce"]
    option = next(param for param in command.params if param.name == "tolerance")
    assert option.default == DEFAULT_TOLERANCE
    runner = CliRunner()
    help_text = runner.invoke(app, ["reproduce", "--help"], terminal_width=200).output
    assert "--tolerance" in help_text and "top1" in help_text
    bad = runner.invoke(app, ["reproduce", "--tolerance", "1.5", "--dry-run"])
    assert bad.exit_code == 2 and "--tolerance" in bad.output


def test_counts_a_rebuild_writes_to_the_details_file_are_compared_too(tmp_path: Path) -> None:
    """A rebuild of this code writes the compared values to metrics/evaluate.json and the
    rest (test_size, the hash, ...) to metrics/details/evaluate.json: both are checked."""
    folder = rebuilt_folder(tmp_path)
    everything = json.loads((folder / "metrics" / "evaluate.json").read_text())
    headline = {key: everything[key] for key in ("top1", "top5", "flops_ratio", "params")}
    (folder / "metrics" / "evaluate.json").write_text(json.dumps(headline))
    (folder / "metrics" / "details").mkdir()
    details = folder / "metrics" / "details" / "evaluate.json"
    details.write_text(json.dumps(everything))
    assert compare(recorded_version(), folder).bit_for_bit
    details.write_text(json.dumps(everything | {"test_size": 358}))
    outcome = compare(recorded_version(), folder)
    assert [check.name for check in outcome.failed] == ["test_size"]


def test_dry_run_names_the_rebuild_folder_and_every_step(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "params.yaml").write_text("seed: 1\n")
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "params"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    workdir = tmp_path / "rebuild"
    steps = dry_run_steps(recorded_version(), source, workdir, commit)  # records "seed: 0"
    assert steps[0] == f"$ git clone --quiet --no-checkout {source} {workdir}"
    assert steps[1] == f"$ git -C {workdir} checkout --quiet --detach {commit}"
    assert steps[2] == (
        f"write the params.yaml the run recorded to {workdir / 'params.yaml'} "
        "(differs from the commit's: the run was a `dvc exp run -S ...`)"
    )
    assert steps[3].startswith(f"$ dvc repro   # in {workdir}")
    assert steps[4].startswith(f"compare {workdir / 'metrics'} and {workdir / 'dvc.lock'}")
    (source / "params.yaml").write_text("seed: 0\n")
    subprocess.run([*git, "commit", "-qam", "the recorded params"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    same = dry_run_steps(recorded_version(), source, workdir, head)[2]
    assert same.endswith("(the same as the commit's)")
