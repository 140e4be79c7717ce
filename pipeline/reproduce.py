"""Rebuild a registered model version from what its run recorded (``pipeline.provenance``):
a fresh ``git clone`` of the repository checked out at the recorded commit, the recorded
``params.yaml``, ``dvc repro``, then the architecture hash, the metrics and DVC's input hashes
compared with the records.

The architecture hash and every count (FLOPs, parameters, sizes) must be equal. Accuracy
metrics (``top1``, ``top5``, ``fp32_top1``: fractions in [0, 1]) may differ by an absolute
``tolerance`` (``DEFAULT_TOLERANCE``): the same commit rebuilt on another CPU can train to the
same architecture with a few test images classified differently. The report says whether the
rebuild is bit for bit the same or within the tolerance, and shows every difference.

The rebuild runs in its own folder and logs to its own MLflow store (``<folder>/mlflow.db``),
so the registry it is checked against gets no new runs or versions. Latency metrics are
timings and are not compared.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import PipelineError
from pipeline.provenance import device_info, git_output, package_versions

if TYPE_CHECKING:  # the CLI imports DEFAULT_TOLERANCE at start: no tracking import for it
    from pipeline.tracking import RecordedModelVersion

TIMING_MARKERS = ("latency", "speedup")  # never equal twice

# Accuracy metrics may differ by up to this much (absolute, as a fraction: 0.01 = 1 percentage
# point; 3 images of the digits test split) for a rebuild to count as reproduced. The one default:
# `jst reproduce --tolerance` uses it.
DEFAULT_TOLERANCE = 0.01
_ACCURACY = re.compile(r"(^|_)top\d+$")  # top1, top5, fp32_top1

# Variables that would point the rebuild at the original repository or tracking store.
_LEAKY_ENV_PREFIXES = ("GIT_", "DVC_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_")


@dataclass(frozen=True)
class Check:
    """One recorded value against the rebuilt one; ``tolerance`` is the absolute difference
    accepted (0 for everything but accuracy metrics)."""

    name: str
    recorded: Any
    rebuilt: Any
    tolerance: float = 0.0

    @property
    def same(self) -> bool:
        return self.recorded == self.rebuilt

    @property
    def difference(self) -> float | None:
        """rebuilt - recorded, for two numbers; None otherwise."""
        if _is_number(self.recorded) and _is_number(self.rebuilt):
            return self.rebuilt - self.recorded
        return None

    @property
    def passed(self) -> bool:
        if self.same:
            return True
        difference = self.difference
        if difference is None or math.isnan(difference):
            return False
        # isclose: a difference of exactly the tolerance, computed in floats, may exceed it.
        return abs(difference) <= self.tolerance or math.isclose(abs(difference), self.tolerance)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Outcome:
    """``checks`` decide (architecture and metrics); ``inputs`` are DVC's hashes of the
    evaluate stage's deps, equal only when the rebuild is bit for bit the same."""

    workdir: Path
    checks: list[Check] = field(default_factory=list)
    inputs: list[Check] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def reproduced(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def bit_for_bit(self) -> bool:
        return bool(self.checks) and all(check.same for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def largest_difference(self) -> Check | None:
        """The passed check whose value moved most (None when all are equal)."""
        moved = [c for c in self.checks if not c.same and c.passed and c.difference is not None]
        return max(moved, key=lambda c: abs(c.difference), default=None)


def is_accuracy(metric: str) -> bool:
    return _ACCURACY.search(metric) is not None


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` if it is a usable accuracy difference; a clear error otherwise."""
    if not (_is_number(tolerance) and 0 <= tolerance <= 1):
        raise PipelineError(
            f"tolerance {tolerance!r} is not an accuracy difference: give a fraction in [0, 1] "
            f"(0.01 = 1 percentage point; 0 = bit for bit; default {DEFAULT_TOLERANCE})."
        )
    return float(tolerance)


# --------------------------------------------------------------------------- before


def commit_to_rebuild(recorded: RecordedModelVersion) -> str:
    """The recorded commit; a clear error when the run cannot be rebuilt from it."""
    git = recorded.record.get("git") or {}
    commit = git.get("commit")
    where = f"{recorded.name} version {recorded.version} (run {recorded.run_id})"
    if not commit:
        raise PipelineError(f"{where} was not run in a git repository: no commit to check out.")
    if git.get("dirty") is not False:
        raise PipelineError(
            f"{where} ran with uncommitted code changes (git.dirty={git.get('dirty')}): commit "
            f"{commit[:12]} does not hold the code that ran, so it cannot be rebuilt from it."
        )
    if recorded.record.get("params_yaml") is None:
        raise PipelineError(f"{where} recorded no params.yaml: nothing to rebuild with.")
    return commit


def environment_warnings(recorded: RecordedModelVersion) -> list[str]:
    """Differences of packages and device that may change the rebuilt metrics."""
    warnings = []
    now = package_versions()
    for name, version in (recorded.record.get("packages") or {}).items():
        if now.get(name) != version:
            warnings.append(f"{name} {now.get(name)} here, {version} when recorded")
    device, then = device_info(), recorded.record.get("device") or {}
    for key in ("torch", "torch_threads"):
        if key in then and then[key] != device[key]:
            warnings.append(f"device {key} {device[key]} here, {then[key]} when recorded")
    return warnings


def rebuild_commands(source: Path, workdir: Path, commit: str) -> list[list[str]]:
    """The shell commands of a rebuild (``params.yaml`` is written between 2 and 3)."""
    return [
        ["git", "clone", "--quiet", "--no-checkout", str(source), str(workdir)],
        ["git", "-C", str(workdir), "checkout", "--quiet", "--detach", commit],
        ["dvc", "repro"],
    ]


def dry_run_steps(
    recorded: RecordedModelVersion, source: Path, workdir: Path, commit: str
) -> list[str]:
    """Every step of a rebuild, as ``jst reproduce --dry-run`` prints them: the commands, the
    recorded ``params.yaml`` written between checkout and ``dvc repro``, the comparison."""
    clone, checkout, repro = rebuild_commands(source, workdir, commit)
    committed = git_output(source, "show", f"{commit}:params.yaml")
    if committed is None:
        whose = "compared with the commit's once it is checked out"
    elif committed == recorded.record["params_yaml"].strip():
        whose = "the same as the commit's"
    else:
        whose = "differs from the commit's: the run was a `dvc exp run -S ...`"
    return [
        "$ " + " ".join(clone),
        "$ " + " ".join(checkout),
        f"write the params.yaml the run recorded to {workdir / 'params.yaml'} ({whose})",
        f"$ {' '.join(repro)}   # in {workdir}, logging to {workdir / 'mlflow.db'}",
        f"compare {workdir / 'metrics'} and {workdir / 'dvc.lock'} with the records "
        "(architecture, counts, accuracies, DVC input hashes)",
    ]


def default_workdir_name(version: str) -> str:
    """The prefix of the temporary folder a rebuild without --workdir gets."""
    return f"jst-rebuild-v{version}-"


# --------------------------------------------------------------------------- rebuild


def rebuild(
    recorded: RecordedModelVersion,
    source: Path,
    workdir: Path,
    echo: Callable[[str], None] = print,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Outcome:
    """Clone ``source`` at the recorded commit into ``workdir``, run ``dvc repro`` there with
    the recorded parameters and compare the results with the records (accuracy metrics
    within ``tolerance``)."""
    check_tolerance(tolerance)
    commit = commit_to_rebuild(recorded)
    if workdir.exists() and any(workdir.iterdir()):
        raise PipelineError(f"{workdir} exists and is not empty; choose another --workdir.")
    if git_output(source, "cat-file", "-e", f"{commit}^{{commit}}") is None:
        raise PipelineError(
            f"Commit {commit} is not in the repository {source}; fetch it (git fetch) first."
        )
    clone, checkout, repro = rebuild_commands(source, workdir, commit)
    _run(clone, source, echo)
    _run(checkout, source, echo)
    if _write_recorded_params(recorded, workdir):
        echo("params.yaml: the recorded one differs from the commit's (dvc exp run -S); using it")
    _run([sys.executable, "-m", "dvc", *repro[1:]], workdir, echo)
    return compare(recorded, workdir, tolerance=tolerance)


def _write_recorded_params(recorded: RecordedModelVersion, workdir: Path) -> bool:
    params = workdir / "params.yaml"
    text = recorded.record["params_yaml"]
    differs = not params.is_file() or params.read_text(encoding="utf-8") != text
    if differs:
        params.write_text(text, encoding="utf-8")
    return differs


def _run(args: list[str], cwd: Path, echo: Callable[[str], None]) -> None:
    echo("$ " + " ".join(args))
    result = subprocess.run(args, cwd=cwd, env=_rebuild_env(), check=False)
    if result.returncode != 0:
        raise PipelineError(f"`{' '.join(args)}` failed (exit {result.returncode}) in {cwd}.")


def _rebuild_env() -> dict[str, str]:
    """This environment, minus what points at the original repository or store, with this
    interpreter first on PATH (the stages run ``python -m stages.<name>``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_ENV_PREFIXES)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# --------------------------------------------------------------------------- compare


def compare(
    recorded: RecordedModelVersion, workdir: Path, *, tolerance: float = DEFAULT_TOLERANCE
) -> Outcome:
    """The rebuilt ``metrics/evaluate.json`` and ``dvc.lock`` against the records; accuracy
    metrics may differ by ``tolerance``, everything else must be equal."""
    tolerance = check_tolerance(tolerance)
    rebuilt = rebuilt_evaluation(workdir)
    # Runs recorded before the tags lost their "jst." prefix carry jst.arch_sha256.
    run_tags = recorded.run_tags
    arch = (
        recorded.tags.get("arch_sha256")
        or run_tags.get("arch_sha256")
        or run_tags.get("jst.arch_sha256")
    )
    arch_check = Check("arch_sha256", arch, rebuilt.get("arch_sha256"))
    outcome = Outcome(workdir, [arch_check], tolerance=tolerance)
    for name in sorted(recorded.metrics):
        if not is_timing(name):
            value = rebuilt.get(name)
            number = float(value) if _is_number(value) else value
            allowed = tolerance if is_accuracy(name) else 0.0
            outcome.checks.append(Check(name, recorded.metrics[name], number, allowed))
    stage = (recorded.record.get("dvc") or {}).get("stage")
    locked = locked_deps(workdir / "dvc.lock", stage) if stage else {}
    for path, md5 in sorted((recorded.record.get("dvc") or {}).get("deps", {}).items()):
        outcome.inputs.append(Check(path, md5, locked.get(path)))
    return outcome


def rebuilt_evaluation(workdir: Path) -> dict[str, Any]:
    """What the rebuild's evaluate stage wrote: ``metrics/evaluate.json`` (the values compared
    across runs) with ``metrics/details/evaluate.json`` (counts, timings, the hash), where the
    rebuilt commit writes one."""
    evaluate_json = workdir / "metrics" / "evaluate.json"
    if not evaluate_json.is_file():
        raise PipelineError(f"{evaluate_json} is missing: the rebuild did not finish.")
    rebuilt = json.loads(evaluate_json.read_text(encoding="utf-8"))
    details = workdir / "metrics" / "details" / "evaluate.json"
    if details.is_file():
        rebuilt = json.loads(details.read_text(encoding="utf-8")) | rebuilt
    return rebuilt


def is_timing(metric: str) -> bool:
    return any(marker in metric for marker in TIMING_MARKERS)


def locked_deps(dvc_lock: Path, stage: str) -> dict[str, str]:
    """``{path: md5}`` of ``stage``'s deps in a ``dvc.lock``."""
    if not dvc_lock.is_file():
        return {}
    stages: Mapping[str, Any] = (yaml.safe_load(dvc_lock.read_text()) or {}).get("stages") or {}
    deps = (stages.get(stage) or {}).get("deps") or []
    return {dep["path"]: dep.get("md5") for dep in deps if isinstance(dep, dict) and "path" in dep}


def report(outcome: Outcome) -> list[str]:
    """Every check (recorded | rebuilt | difference), DVC's input hashes, then the verdict."""
    lines = []
    if outcome.checks:
        lines.append(
            f"recorded | rebuilt | difference (accuracies may differ by {outcome.tolerance:g}, "
            "everything else must be equal):"
        )
    for check in outcome.checks:
        mark = "same" if check.same else "within" if check.passed else "DIFFERENT"
        difference = "" if check.same or check.difference is None else f"{check.difference:+.6g}"
        lines.append(
            f"  {mark:<9} {check.name}: {check.recorded} | {check.rebuilt} | {difference or '-'}"
        )
    if outcome.inputs:
        lines.append("DVC inputs (equal only when the rebuild is bit for bit the same):")
    for check in outcome.inputs:
        mark = "same" if check.same else "DIFFERENT"
        lines.append(f"  {mark:<9} {check.name}: {check.recorded} | {check.rebuilt}")
    lines.append(f"{verdict(outcome)} (rebuild in {outcome.workdir})")
    return lines


def verdict(outcome: Outcome) -> str:
    if outcome.bit_for_bit:
        return "reproduced bit for bit: architecture and every non-timing metric equal"
    if outcome.reproduced:
        largest = outcome.largest_difference()
        moved = f"{largest.name} {largest.difference:+.6g}" if largest else "none"
        return (
            f"reproduced within tolerance {outcome.tolerance:g}: architecture and counts equal, "
            f"largest accuracy difference {moved}"
        )
    if not outcome.checks:
        return "NOT reproduced: nothing was compared"
    failed = ", ".join(check.name for check in outcome.failed)
    return (
        f"NOT reproduced: {failed} differ (accuracies beyond {outcome.tolerance:g}, anything "
        "else at all)"
    )
