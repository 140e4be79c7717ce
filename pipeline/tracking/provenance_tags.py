"""What a run records of its code and inputs: wrappers over ``pipeline.provenance``.

The records are gathered by pipeline.provenance (no MLflow there); the runs log them as tags,
and ``pipeline.tracking.readback`` reads them back for `jst reproduce`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def reproducibility_tags(repo_root: Path | str) -> dict[str, str]:
    """Tags that say which code and environment produced a run."""
    from pipeline import provenance

    return provenance.record_tags(provenance.collect(repo_root, {}))


def git_commit(repo_root: Path | str) -> str | None:
    """HEAD's sha, or None outside a git repository."""
    from pipeline.provenance import git_output

    return git_output(repo_root, "rev-parse", "HEAD")


def file_md5(path: Path | str, repo_root: Path | str | None = None) -> str:
    """The md5 DVC records for a file or directory (see ``pipeline.provenance.dvc_md5``);
    with ``repo_root``, files its ``.dvcignore`` ignores are skipped, as DVC does."""
    from pipeline.provenance import dvc_md5, dvcignore

    ignored = dvcignore(repo_root) if repo_root is not None else None
    return dvc_md5(path, repo_root, ignored)


def input_hash_tags(
    paths: Iterable[Path | str], repo_root: Path | str | None = None
) -> dict[str, str]:
    """``{"input.data/prepared": md5}`` for each input file or directory."""
    return {f"input.{Path(path).as_posix()}": file_md5(path, repo_root) for path in paths}
