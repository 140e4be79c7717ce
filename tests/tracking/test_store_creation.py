"""Tests of pipeline.tracking.store_creation: a new or old-schema SQLite store is created or
migrated exactly once, however many processes open it at the same instant."""

from __future__ import annotations

import fcntl
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import sqlalchemy
from alembic import command
from mlflow import MlflowClient
from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

from pipeline.tracking import sqlite_db_path
from pipeline.tracking.client import make_client

ROOT = Path(__file__).resolve().parents[2]
OPENERS = 4  # processes opening each store at the same instant
# One store per round, opened by the same processes: no file, an empty file (no schema), and
# a store an older MLflow made (its June 2025 schema, which this one migrates when opened).
ROUNDS = ("missing", "old schema", "empty", "missing")
OLD_REVISION = "bda7b8c39065"  # increase_model_version_tag_value_limit, 2025-06-23
EXPERIMENT = "jst-new-store"

# One opener: imports MLflow (slow) first, then per round waits for the go-file and opens
# that round's store as a stage does, logging one pipeline run.
OPENER = """
import sys, time, traceback
from pathlib import Path
import mlflow.store.model_registry.sqlalchemy_store, mlflow.store.tracking.sqlalchemy_store
import alembic.command
from pipeline.tracking import PipelineTracker

base, index, rounds, experiment = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
failed = False
for round_ in range(rounds):
    (base / f"ready-{round_}-{index}").touch()
    while not (base / f"go-{round_}").exists():
        time.sleep(0.001)
    uri = f"sqlite:///{base}/round-{round_}/mlflow.db"
    try:
        key = f"opener-{index}"
        PipelineTracker(uri, experiment, key, {"round": round_}, key).finish_pipeline({})
    except Exception:
        failed = True
        print(f"round {round_}:", file=sys.stderr)
        traceback.print_exc()
sys.exit(1 if failed else 0)
"""


def _start_opener(base: Path, index: int) -> subprocess.Popen:
    with (base / f"stderr-{index}.txt").open("w") as stderr:  # a file: no pipe to fill up
        return subprocess.Popen(
            [sys.executable, "-c", OPENER, str(base), str(index), str(len(ROUNDS)), EXPERIMENT],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _prepare_store(db_path: Path, kind: str) -> None:
    db_path.parent.mkdir()
    if kind == "empty":
        db_path.touch()
    elif kind == "old schema":  # what that MLflow left: its tables, at its revision
        uri = f"sqlite:///{db_path}"
        engine = sqlalchemy.create_engine(uri)
        InitialBase.metadata.create_all(engine)
        config = _get_alembic_config(uri)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, OLD_REVISION)
        engine.dispose()
        assert _schema_revision(db_path) == OLD_REVISION


def _schema_revision(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as connection:
        [(revision,)] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    return revision


def _release_when_all_ready(base: Path, round_: int, openers: list[subprocess.Popen]) -> None:
    """The barrier: the go-file appears once every opener waits for it."""
    deadline = time.monotonic() + 120
    while not all((base / f"ready-{round_}-{index}").exists() for index in range(OPENERS)):
        assert all(opener.poll() is None for opener in openers), "an opener exited early"
        assert time.monotonic() < deadline, f"openers not ready for round {round_}"
        time.sleep(0.01)
    (base / f"go-{round_}").touch()


def _assert_every_run_landed(db_path: Path) -> None:
    assert _schema_revision(db_path) == _get_latest_schema_revision()
    client = MlflowClient(f"sqlite:///{db_path}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted(run.info.run_name for run in runs) == [
        f"opener-{index}" for index in range(OPENERS)
    ]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert not db_path.with_name("mlflow.db.lock").exists()  # nothing left beside the store


def test_processes_opening_a_new_store_at_once_create_it_once(tmp_path):
    """Like `dvc queue start -j N` on a fresh clone: every stage opens the store at the same
    instant. Without the creation lock MLflow's migration runs in several of them at once and
    all but one fail (`duplicate column name: step`, `table experiments already exists`)."""
    openers = [_start_opener(tmp_path, index) for index in range(OPENERS)]
    stores = [tmp_path / f"round-{round_}" / "mlflow.db" for round_ in range(len(ROUNDS))]
    try:
        for db_path, kind in zip(stores, ROUNDS, strict=True):  # while the openers import
            _prepare_store(db_path, kind)
        for round_ in range(len(ROUNDS)):
            _release_when_all_ready(tmp_path, round_, openers)
        codes = [opener.wait(timeout=120) for opener in openers]
    finally:
        for opener in openers:
            opener.kill()
    errors = "".join(path.read_text() for path in sorted(tmp_path.glob("stderr-*.txt")))
    assert codes == [0] * OPENERS, errors
    for db_path in stores:
        _assert_every_run_landed(db_path)


def _open_in_thread(uri: str) -> threading.Thread:
    opening = threading.Thread(target=make_client, args=(uri,), daemon=True)
    opening.start()
    return opening


@contextmanager
def _lock_held_by_another_opener(db_path: Path) -> Iterator[None]:
    """What a process creating the store holds, deleted before release as it does."""
    lock = db_path.with_name(db_path.name + ".lock")
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink()


def test_the_lock_is_taken_only_while_a_store_needs_creating(store_uri, tmp_path):
    """A current store opens at once while another process holds its lock; a new one waits
    for the lock, then is created, and leaves no lock file."""
    current_db, new_db = sqlite_db_path(store_uri), tmp_path / "mlflow.db"
    with _lock_held_by_another_opener(current_db), _lock_held_by_another_opener(new_db):
        current, new = _open_in_thread(store_uri), _open_in_thread(f"sqlite:///{new_db}")
        current.join(timeout=30)
        assert not current.is_alive(), "a current store waited for the creation lock"
        new.join(timeout=1)  # long enough for MLflow to make the file, had it not waited
        assert new.is_alive() and not new_db.exists(), "a new store was opened without the lock"
    new.join(timeout=60)
    assert _schema_revision(new_db) == _get_latest_schema_revision()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db"]
