"""Tracking calls that could not reach the store, kept on disk and replayed later.

When the MLflow server goes away (or a SQLite store stays locked) in the middle of a stage,
the stage must still finish and write its DVC outputs. From the first failed call on, the
stage's remaining tracking calls are appended as JSON lines to a spool file
``.mlflow-spool/<time>-<pid>-<stage>.jsonl`` in the repository (files to upload are copied
beside it, as the originals may be temporary). The next stage that starts, or
``jst tracking replay``, replays the spool once the store answers, and deletes it only after
every call succeeded (``pipeline.tracking.replay``).

Plain files and ``flock`` only, no MLflow: the calls are the records of
``pipeline.tracking.calls``, run by whatever ``execute`` the replay is given.

A spool file is locked (``flock``) by the process writing it, and by the process replaying
it, so a running stage's spool is never replayed and two replays never run at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

SPOOL_DIR_NAME = ".mlflow-spool"
SPOOL_SUFFIX = ".jsonl"
FORMAT_VERSION = 1

# What a client error says when the store cannot be reached: requests/urllib3 errors are
# wrapped by MLflow into an MlflowException whose message keeps their text.
_UNAVAILABLE_TEXT = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "Failed to establish a new connection",
    "Read timed out",
    "RemoteDisconnected",
    "database is locked",
)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) means the store did not answer."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if any(text in str(current) for text in _UNAVAILABLE_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


class Spool:
    """The tracking calls of one stage process, once the store stopped answering.

    Nothing is written until ``activate``; from then on ``append`` records each call.
    """

    def __init__(self, directory: Path, tracking_uri: str, label: str) -> None:
        self.directory = directory
        self.tracking_uri = tracking_uri
        self.label = label
        self.path: Path | None = None
        self.count = 0
        self._stream: TextIO | None = None

    @property
    def active(self) -> bool:
        return self._stream is not None

    def activate(self, error: BaseException) -> None:
        """Open the spool file (locked while this process lives) and say so, once."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{self.label}"
        # Written and locked under a name replays ignore, then renamed: a replay never sees
        # the file before its lock is held.
        partial = self.directory / f"{name}.partial"
        stream = partial.open("x", encoding="utf-8")
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        header = {"spool": FORMAT_VERSION, "tracking_uri": self.tracking_uri, "stage": self.label}
        stream.write(json.dumps(header) + "\n")
        stream.flush()
        self.path = self.directory / f"{name}{SPOOL_SUFFIX}"
        partial.rename(self.path)
        self._stream = stream
        logger.warning(
            "warning: MLflow tracking store %s is unavailable (%s); the %s stage goes on and "
            "saves its tracking calls to %s. They are replayed when the next stage starts, "
            "or by `jst tracking replay`, once the store is back.",
            self.tracking_uri,
            _first_line(error),
            self.label,
            self.path,
        )

    def append(self, op: dict[str, Any]) -> None:
        """Record one call; a file to upload is copied, as the original may be temporary."""
        assert self._stream is not None and self.path is not None, "activate() first"
        if "path" in op:
            op = {**op, "path": str(self._keep_copy(Path(op["path"])))}
        self._stream.write(json.dumps(op) + "\n")
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self.count += 1

    def _keep_copy(self, source: Path) -> Path:
        assert self.path is not None
        target = files_dir(self.path) / str(self.count) / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target.resolve()

    def close(self) -> None:
        """Release the file (and its lock): from now on it can be replayed."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
            logger.warning(
                "warning: %d MLflow tracking call(s) of the %s stage are saved in %s, waiting "
                "for the store %s (replay: `jst tracking replay`).",
                self.count,
                self.label,
                self.path,
                self.tracking_uri,
            )


def files_dir(spool_path: Path) -> Path:
    return spool_path.with_suffix(".files")


def pending(directory: Path) -> list[Path]:
    """The spool files in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{SPOOL_SUFFIX}"))


def replay_all(
    directory: Path, tracking_uri: str, execute: Callable[[dict[str, Any]], Any]
) -> tuple[int, int]:
    """Replay the spools of ``tracking_uri`` with ``execute``, oldest first.

    Returns (calls replayed, spool files left). A spool that a running stage still writes
    (or another process replays) is left alone; one whose call fails keeps the calls not yet
    replayed, for the next attempt.
    """
    replayed = 0
    for path in pending(directory):
        try:
            replayed += _replay_one(path, tracking_uri, execute)
        except _StoreUnavailable as stop:  # the later spools would wait for it too
            replayed += stop.replayed
            break
        except (OSError, ValueError) as error:  # unreadable: kept for a person to look at
            logger.warning("warning: cannot replay %s: %s", path, _first_line(error))
    return replayed, len(pending(directory))


class _StoreUnavailable(Exception):
    def __init__(self, replayed: int) -> None:
        super().__init__(f"store unavailable after {replayed} replayed calls")
        self.replayed = replayed


def _replay_one(path: Path, tracking_uri: str, execute: Callable[[dict[str, Any]], Any]) -> int:
    """The number of calls replayed from ``path``; it is deleted once all succeeded."""
    with _locked(path) as stream:
        if stream is None:
            return 0
        header, ops = _read(stream, path)
        if header.get("tracking_uri") != tracking_uri:
            return 0  # logged for another store
        for index, op in enumerate(ops):
            try:
                execute(op)
            except Exception as error:  # kept from this call on, for the next attempt
                _rewrite(path, header, ops[index:])
                logger.warning(
                    "warning: could not replay %s yet (%d of %d calls done): %s",
                    path,
                    index,
                    len(ops),
                    _first_line(error),
                )
                if is_unavailable(error):
                    raise _StoreUnavailable(index) from error
                return index
        shutil.rmtree(files_dir(path), ignore_errors=True)
        path.unlink()
        return len(ops)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[TextIO | None]:
    """The spool opened and locked, or None when another process holds it (or it is gone)."""
    try:
        stream = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        yield None
        return
    with stream:
        try:
            fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            same_file = os.stat(path).st_ino == os.fstat(stream.fileno()).st_ino
        except FileNotFoundError:
            same_file = False  # replayed and deleted while this process waited
        yield stream if same_file else None


def _read(stream: TextIO, path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = stream.read().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            logger.warning("warning: %s line %d is not valid JSON; skipped", path, number)
    if not records or records[0].get("spool") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a tracking spool (format {FORMAT_VERSION})")
    return records[0], records[1:]


def _rewrite(path: Path, header: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Keep only ``ops`` in the spool, atomically."""
    partial = path.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in [header, *ops]), encoding="utf-8")
    os.replace(partial, path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
