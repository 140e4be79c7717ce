"""Atomic writes: a reader (or a later stage) never sees half a file or half a folder.

Everything is written beside its target under a temporary name and renamed into place,
so a crash, even SIGKILL, leaves either the old version or the new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import torch


def _write_via_temp(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _write_via_temp(path, lambda tmp: Path(tmp).write_text(text))


def torch_save_atomic(obj, path: Path) -> None:
    """``torch.save`` through a temporary file: never half a checkpoint."""
    _write_via_temp(path, lambda tmp: torch.save(obj, tmp))


def replace_dir(new: Path, target: Path) -> None:
    """Replace folder ``target`` by the complete folder ``new``.

    POSIX cannot rename a folder over a non-empty one, so the old folder is first moved
    aside. A crash between the two renames leaves no folder at all (which later stages
    report as missing) rather than a half-written one.
    """
    if not target.exists():
        new.rename(target)
        return
    retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(retired)
    new.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
