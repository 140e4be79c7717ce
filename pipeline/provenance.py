"""What a run needs to be rebuilt: the code (git), the inputs (DVC hashes), the parameters, the
packages and the device, gathered in one JSON-able record per MLflow run.

Input hashes are computed at stage start, the way DVC 3 computes the ``md5`` it writes into
``dvc.lock`` for the stage's deps (``dvc.lock`` itself is written only after the stage): a
file's MD5, and for a directory the MD5 of DVC's sorted JSON listing of its files (skipping
what the repository's ``.dvcignore`` ignores) plus ``.dir``. So a recorded hash can be compared
with the ``dvc.lock`` of a rebuild. This module reads ``dvc.yaml`` as YAML and never imports
DVC; outside a DVC project the record simply has no deps.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import urllib.parse
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ArtifactError

RECORD_FILE = "provenance.json"
RECORD_SCHEMA = 1

# MLflow's source type of a run made by the code of a (git) project: the UI's Source column
# shows "<repository name>:<entry point>" and links the commit of a GitHub/GitLab remote.
SOURCE_TYPE = "PROJECT"

# Uncommitted changes under these paths make a run "dirty": its commit does not hold the code
# that ran. DVC's outputs, dvc.lock and params.yaml (set by `dvc exp run -S`) change in every
# run and are recorded in full instead.
CODE_PATHS = ("pipeline", "stages", "dvc.yaml", "pyproject.toml", "uv.lock")

# Distribution names; the first one installed of each alternative is reported.
PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "dvc": ("dvc",),
    "numpy": ("numpy",),
}


# --------------------------------------------------------------------------- the record


def collect(
    repo_root: Path | str,
    params: Mapping[str, Any],
    stage: str | None = None,
) -> dict[str, Any]:
    """The provenance record of a run of ``stage`` (None: the pipeline's parent run).

    ``params`` are the resolved parameters; ``params.yaml`` is also kept verbatim, as a
    rebuild writes it back over the committed one (``dvc exp run -S`` changes it in place).
    """
    root = Path(repo_root)
    params_file = root / "params.yaml"
    return {
        "schema": RECORD_SCHEMA,
        "stage": stage,
        "git": git_state(root),
        "params": dict(params),
        "params_yaml": params_file.read_text(encoding="utf-8") if params_file.is_file() else None,
        "dvc": {"stage": stage, "deps": dvc_stage_deps(root, stage) if stage else {}},
        "packages": package_versions(),
        "device": device_info(),
        "dvc_experiment": {
            key: os.environ[variable]
            for key, variable in (("name", "DVC_EXP_NAME"), ("baseline", "DVC_EXP_BASELINE_REV"))
            if os.environ.get(variable)
        },
    }


def record_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """The searchable part of a record, as MLflow tags (the record itself is an artifact)."""
    device = record["device"]
    tags = (
        git_tags(record["git"])
        | source_tags(record["git"], record.get("stage"))
        | {
            "host.name": device["host"],
            "device": device["torch"],
            "torch.threads": str(device["torch_threads"]),
        }
    )
    tags |= {f"version.{name}": version for name, version in record["packages"].items()}
    experiment = record.get("dvc_experiment") or {}
    if "name" in experiment:
        tags["dvc.experiment"] = experiment["name"]
    if "baseline" in experiment:
        tags["dvc.baseline_rev"] = experiment["baseline"]
    return tags


# --------------------------------------------------------------------------- git


def git_state(repo_root: Path | str) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool, "repository": remote URL or path, "branch": name}``;
    each None outside a git repository (and the branch None on a detached HEAD)."""
    commit = git_output(repo_root, "rev-parse", "HEAD")
    status = git_output(repo_root, "status", "--porcelain", "--", *CODE_PATHS)
    return {
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "repository": git_repository(repo_root) if commit else None,
        "branch": git_output(repo_root, "symbolic-ref", "--quiet", "--short", "HEAD") or None,
    }


def git_repository(repo_root: Path | str) -> str | None:
    """Where the code lives: the ``origin`` remote's URL (else the first remote's), without
    credentials; the repository's folder when it has no remote (the original repository's,
    in a DVC experiment's temporary copy)."""
    from pipeline.tracking.store import original_repo_root  # plain paths, no MLflow

    root = original_repo_root(Path(repo_root).resolve())
    remotes = (git_output(root, "remote") or "").split()
    if remotes:
        remote = "origin" if "origin" in remotes else remotes[0]
        url = git_output(root, "remote", "get-url", remote)
        if url:
            return without_credentials(url)
    return git_output(root, "rev-parse", "--show-toplevel")


def without_credentials(url: str) -> str:
    """``url`` without a password (and, for http(s), without the user, often a token)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc or not parts.scheme:  # a path, or scp-like git@host:repo
        return url
    user, _, host = parts.netloc.rpartition("@")
    keep_user = parts.scheme not in ("http", "https") and ":" not in user
    netloc = f"{user}@{host}" if keep_user else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def source_tags(git: Mapping[str, Any], stage: str | None) -> dict[str, str]:
    """MLflow's own source tags, which fill the UI's Source and Version columns: the
    repository, its commit and branch, and (stage runs) the stage as the entry point."""
    tags = {"mlflow.source.git.commit": git["commit"] or "unknown"}
    if git.get("repository"):
        tags |= {
            "mlflow.source.name": git["repository"],
            "mlflow.source.type": SOURCE_TYPE,
            "mlflow.source.git.repoURL": git["repository"],
        }
    if git.get("branch"):
        tags["mlflow.source.git.branch"] = git["branch"]
    if git.get("dirty") is not None:
        tags["mlflow.source.git.dirty"] = str(git["dirty"]).lower()
    if stage:
        tags["mlflow.project.entryPoint"] = stage
    return tags


def git_tags(git: Mapping[str, Any]) -> dict[str, str]:
    """``git.commit`` and ``git.dirty`` ("true", "false" or "unknown") of a ``git_state``."""
    dirty = git["dirty"]
    return {
        "git.commit": git["commit"] or "unknown",
        "git.dirty": "unknown" if dirty is None else str(dirty).lower(),
    }


def git_output(repo_root: Path | str, *args: str) -> str | None:
    """The stripped output of a git command, or None outside a git repository."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


# --------------------------------------------------------------------------- environment


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name, distributions in PACKAGES.items():
        versions[name] = next(
            (v for v in map(_installed_version, distributions) if v is not None), "unknown"
        )
    return versions


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def device_info() -> dict[str, Any]:
    """The device torch sees and its thread count (CPU results can depend on it)."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
    }


# --------------------------------------------------------------------------- DVC hashes


def dvc_stage_deps(repo_root: Path | str, stage: str) -> dict[str, str]:
    """``{dep path: DVC md5}`` for the deps ``dvc.yaml`` declares for ``stage``, as they are
    now; missing deps (DVC would refuse to run) are left out. {} without dvc.yaml or stage."""
    root = Path(repo_root)
    deps = declared_deps(root / "dvc.yaml", stage)
    ignored = dvcignore(root)
    return {dep: dvc_md5(root / dep, root, ignored) for dep in deps if (root / dep).exists()}


def declared_deps(dvc_yaml: Path, stage: str) -> list[str]:
    if not dvc_yaml.is_file():
        return []
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return [dep for dep in (stages.get(stage) or {}).get("deps") or [] if isinstance(dep, str)]


def dvcignore(repo_root: Path | str) -> Any:
    """The ``.dvcignore`` patterns of the repository root (a pathspec), or None."""
    path = Path(repo_root) / ".dvcignore"
    if not path.is_file():
        return None
    import pathspec  # a dependency of DVC

    return pathspec.PathSpec.from_lines("gitignore", path.read_text(encoding="utf-8").splitlines())


def dvc_md5(path: Path | str, repo_root: Path | str | None = None, ignored: Any = None) -> str:
    """The md5 DVC 3 records for ``path``: a file's MD5, or ``<listing md5>.dir`` for a
    directory, whose files matched by ``ignored`` (paths relative to ``repo_root``) are
    skipped."""
    path = Path(path)
    if path.is_dir():
        return _directory_md5(path, Path(repo_root) if repo_root else path, ignored)
    if not path.is_file():
        raise ArtifactError(f"Cannot hash {path}: it does not exist.")
    return _md5_of_file(path)


def _md5_of_file(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _directory_md5(directory: Path, repo_root: Path, ignored: Any) -> str:
    listing = [
        {"md5": _md5_of_file(file), "relpath": file.relative_to(directory).as_posix()}
        for file in _files(directory, repo_root, ignored)
    ]
    listing.sort(key=lambda entry: entry["relpath"])
    # Byte for byte what dvc_data's Tree.as_bytes() hashes.
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def _files(directory: Path, repo_root: Path, ignored: Any) -> Iterable[Path]:
    for file in directory.rglob("*"):
        if not file.is_file():
            continue
        if ignored is not None and ignored.match_file(_relative(file, repo_root)):
            continue
        yield file


def _relative(path: Path, root: Path) -> str:
    absolute, root = path.absolute(), root.absolute()
    return absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else path.name
