"""A throw-away copy of the project as a real git + DVC repository, for the end-to-end tests.

Nothing is mocked: commands run as subprocesses (``python -m dvc ...``, ``git ...``) in the
copy, whose stages write their own MLflow SQLite store ``<copy>/mlflow.db``. The project
checkout itself is only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# What a user's repository holds besides data and results.
COPIED = ("pipeline", "stages", "dvc.yaml", "params.yaml", ".dvcignore", ".gitignore")

# The smallest configuration that still runs every stage for real (about a minute on 2 cores).
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "data": {"dataset": "digits", "image_size": 8},
    "model": {"arch": "resnet20"},
    # JST (the default method): 1 warm-up epoch, then 2 iterations of half an epoch each
    "search": {"epochs": 2, "jst": {"warmup_epochs": 1, "iterations": 2}},
    "finetune": {"epochs": 1},
    "train": {"batch_size": 128},
    "evaluate": {"repeats": 5, "warmup": 1, "batch_sizes": [1, 8]},
}

STAGES = ("prepare", "search", "finetune", "export", "evaluate")

# Environment variables that would point a subprocess at another repository or store.
_LEAKY_ENV_PREFIXES = ("GIT_", "DVC_", "MLFLOW_")


@dataclass
class Result:
    args: list[str]
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float

    def describe(self, tail: int = 6000) -> str:
        return (
            f"$ {' '.join(self.args)}\n(exit {self.returncode} after {self.seconds:.1f} s)\n"
            f"{self.output[-tail:]}"
        )


class CommandTimeout(AssertionError):
    pass


class E2ERepo:
    """A temporary repository built from the project's pipeline code."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = subprocess_env()
        self.log: list[Result] = []
        self._reproduced: Result | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, root: Path) -> E2ERepo:
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            source = PROJECT_ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            elif source.is_file():
                shutil.copy2(source, root / name)
        repo = cls(root)
        params = repo.read_params()
        for section, values in TINY_PARAMS.items():
            _merge(params.setdefault(section, {}), values)
        repo.write_params(params)

        repo.git("init", "-q")
        repo.git("config", "user.name", "e2e test")
        repo.git("config", "user.email", "e2e@example.invalid")
        repo.git("config", "commit.gpgsign", "false")
        repo.dvc("init", "-q")
        repo.dvc("config", "core.analytics", "false")
        repo.commit("pipeline code and tiny parameters")
        return repo

    # ------------------------------------------------------------------ commands

    def run(
        self,
        args: Sequence[str],
        *,
        timeout: float = 300,
        check: bool = True,
        merge_stderr: bool = True,
    ) -> Result:
        """Run ``args`` in the repository; ``output`` is stdout and stderr together, or
        stdout alone with ``merge_stderr=False`` (for commands whose stdout is JSON)."""
        start = time.monotonic()
        try:
            completed = subprocess.run(
                list(args),
                cwd=self.root,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            output = error.output or ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            raise CommandTimeout(
                f"$ {' '.join(args)} ran longer than {timeout} s:\n{output[-6000:]}"
            ) from None
        output = completed.stdout
        if not merge_stderr and completed.returncode != 0:
            output += completed.stderr
        result = Result(list(args), completed.returncode, output, time.monotonic() - start)
        self.log.append(result)
        if check and result.returncode != 0:
            raise AssertionError("command failed:\n" + result.describe())
        return result

    def dvc(self, *args: str, timeout: float = 300, check: bool = True) -> Result:
        return self.run([sys.executable, "-m", "dvc", *args], timeout=timeout, check=check)

    def dvc_json(self, *args: str, timeout: float = 300) -> Any:
        """The parsed JSON that ``dvc <args>`` prints on stdout (warnings go to stderr)."""
        result = self.run([sys.executable, "-m", "dvc", *args], timeout=timeout, merge_stderr=False)
        return json.loads(result.output)

    def git(self, *args: str, check: bool = True) -> Result:
        return self.run(["git", *args], timeout=60, check=check)

    def python(self, *args: str, check: bool = True) -> Result:
        """The interpreter the stages get: ``python`` as found on the subprocess PATH."""
        return self.run(["python", *args], timeout=120, check=check)

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        if self.git("status", "--porcelain").output.strip():
            self.git("commit", "-q", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").output.strip()

    def reproduce_once(self) -> Result:
        """``dvc repro`` of the tiny pipeline, run the first time it is asked for."""
        if self._reproduced is None:
            self._reproduced = self.dvc("repro", timeout=420, check=False)
        return self._reproduced

    # ------------------------------------------------------------------ files

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def read_params(self) -> dict[str, Any]:
        return yaml.safe_load(self.params_path.read_text())

    def write_params(self, params: Mapping[str, Any]) -> None:
        self.params_path.write_text(yaml.safe_dump(dict(params), sort_keys=False))

    def metrics(self, stage: str) -> dict[str, Any]:
        """Everything ``stage`` recorded: metrics/<stage>.json (the DVC metric) and, where
        the stage writes one, metrics/details/<stage>.json."""
        record = json.loads((self.root / "metrics" / f"{stage}.json").read_text())
        details = self.root / "metrics" / "details" / f"{stage}.json"
        return json.loads(details.read_text()) | record if details.is_file() else record

    def prepared_meta(self) -> dict[str, Any]:
        """What the prepare stage says of its splits (data/prepared/meta.json): classes,
        input shape, mean/std, sizes."""
        return json.loads((self.root / "data" / "prepared" / "meta.json").read_text())

    def sha256(self, relative: str) -> str:
        return hashlib.sha256((self.root / relative).read_bytes()).hexdigest()

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').as_posix()}"


def subprocess_env() -> dict[str, str]:
    """The caller's environment with this interpreter's bin first and no foreign repo/store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_ENV_PREFIXES)}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def normalized(text: str) -> str:
    """``text`` with runs of whitespace collapsed (rich wraps long messages at 80 columns)."""
    return " ".join(text.split())


def walk_experiments(node: Any) -> Iterator[dict[str, Any]]:
    """Every entry of ``dvc exp show --json`` that has a name and data, at any depth."""
    if isinstance(node, list):
        for item in node:
            yield from walk_experiments(item)
    elif isinstance(node, dict):
        if node.get("name") and isinstance(node.get("data"), dict):
            yield node
        for key in ("experiments", "revs"):
            if node.get(key):
                yield from walk_experiments(node[key])


def experiment_metric(entry: Mapping[str, Any], path: str, key: str) -> Any:
    metrics = entry["data"].get("metrics") or {}
    return (metrics.get(path) or {}).get("data", {}).get(key)


def _merge(params: dict, overrides: dict) -> None:
    """Override ``params`` in place, one level of nesting deep (search.jst.*)."""
    for key, value in overrides.items():
        if isinstance(value, dict):
            params.setdefault(key, {}).update(value)
        else:
            params[key] = value
