"""Rebuild a registered model version from what its run recorded (``pipeline.provenance``):
a fresh ``git clone`` of the repository checked out at the recorded commit, the recorded
``params.yaml``, ``dvc repro``, then the architecture hash, the metrics and DVC's input hashes
compared with the records.

The rebuild runs in its own folder and logs to its own MLflow store (``<folder>/mlflow.db``),
so the registry it is checked against gets no new runs or versions. Latency metrics are
timings and are not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError
from pipeline.provenance import device_info, git_output, package_versions
from pipeline.tracking import RecordedModelVersion

TIMING_MARKERS = ("latency", "speedup")  # never equal twice

# Variables that would point the rebuild at the original repository or tracking store.
_LEAKY_ENV_PREFIXES = ("GIT_", "DVC_", "MLFLOW_TRACKING_", "MLFLOW_REGISTRY_")


@dataclass(frozen=True)
class Check:
    name: str
    recorded: Any
    rebuilt: Any

    @property
    def same(self) -> bool:
        return self.recorded == self.rebuilt


@dataclass
class Outcome:
    """``checks`` decide (architecture and metrics); ``inputs`` are DVC's hashes of the
    evaluate stage's deps, equal only when the rebuild is bit for bit the same."""

    workdir: Path
    checks: list[Check] = field(default_factory=list)
    inputs: list[Check] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return bool(self.checks) and all(check.same for check in self.checks)


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


# --------------------------------------------------------------------------- rebuild


def rebuild(
    recorded: RecordedModelVersion,
    source: Path,
    workdir: Path,
    echo: Callable[[str], None] = print,
) -> Outcome:
    """Clone ``source`` at the recorded commit into ``workdir``, run ``dvc repro`` there with
    the recorded parameters and compare the results with the records."""
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
    return compare(recorded, workdir)


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


def compare(recorded: RecordedModelVersion, workdir: Path) -> Outcome:
    """The rebuilt ``metrics/evaluate.json`` and ``dvc.lock`` against the records."""
    evaluate_json = workdir / "metrics" / "evaluate.json"
    if not evaluate_json.is_file():
        raise PipelineError(f"{evaluate_json} is missing: the rebuild did not finish.")
    rebuilt = json.loads(evaluate_json.read_text(encoding="utf-8"))
    # Runs recorded before the tags lost their "jst." prefix carry jst.arch_sha256.
    run_tags = recorded.run_tags
    arch = (
        recorded.tags.get("arch_sha256")
        or run_tags.get("arch_sha256")
        or run_tags.get("jst.arch_sha256")
    )
    outcome = Outcome(workdir, [Check("arch_sha256", arch, rebuilt.get("arch_sha256"))])
    for name in sorted(recorded.metrics):
        if not is_timing(name):
            value = rebuilt.get(name)
            number = float(value) if isinstance(value, int | float) else value
            outcome.checks.append(Check(name, recorded.metrics[name], number))
    stage = (recorded.record.get("dvc") or {}).get("stage")
    locked = locked_deps(workdir / "dvc.lock", stage) if stage else {}
    for path, md5 in sorted((recorded.record.get("dvc") or {}).get("deps", {}).items()):
        outcome.inputs.append(Check(path, md5, locked.get(path)))
    return outcome


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
    """One line per check, then the verdict."""
    lines = []
    for title, checks in (("recorded vs rebuilt", outcome.checks), ("DVC inputs", outcome.inputs)):
        if checks:
            lines.append(f"{title}:")
        for check in checks:
            mark = "same" if check.same else "DIFFERENT"
            lines.append(f"  {mark:<9} {check.name}: {check.recorded} | {check.rebuilt}")
    verdict = "reproduced" if outcome.reproduced else "NOT reproduced"
    lines.append(f"{verdict}: architecture and non-timing metrics (rebuild in {outcome.workdir})")
    return lines
