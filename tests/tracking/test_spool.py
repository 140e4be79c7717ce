"""Tests of pipeline.tracking.spool: the on-disk spool of tracking calls and its replay.

The store side is exercised for real in tests/tracking/test_server.py (a server killed
mid-stage) and tests/e2e/test_concurrency.py; here the replay target is a plain function, to
pin down the file handling: locking, order, partial failure, copies of temporary files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.tracking.spool import Spool, is_unavailable, pending, replay_all
from tests.mlflow_server import free_port

URI = "http://127.0.0.1:5999"


def spooled(tmp_path, ops, uri=URI) -> Spool:
    spool = Spool(tmp_path / "spool", uri, "search")
    spool.activate(ConnectionRefusedError("refused"))
    for op in ops:
        spool.append(op)
    return spool


def test_a_spool_is_replayed_in_order_only_after_its_writer_closed_it(tmp_path):
    ops = [{"op": "log_batch", "run_id": "r", "metrics": [["loss", i, 0, i]]} for i in range(3)]
    spool = spooled(tmp_path, ops)
    executed = []
    # The writing stage still holds the file: a concurrent replay leaves it alone.
    assert replay_all(tmp_path / "spool", URI, executed.append) == (0, 1)
    spool.close()
    assert replay_all(tmp_path / "spool", URI, executed.append) == (3, 0)
    assert executed == ops
    assert not list((tmp_path / "spool").iterdir())


def test_a_failed_call_keeps_itself_and_the_rest_for_the_next_replay(tmp_path):
    ops = [{"op": "set_terminated", "run_id": str(i), "status": "FINISHED"} for i in range(4)]
    spooled(tmp_path, ops).close()
    executed = []

    def fails_on_third(op):
        if op["run_id"] == "2":
            raise RuntimeError("RESOURCE_DOES_NOT_EXIST")
        executed.append(op["run_id"])

    assert replay_all(tmp_path / "spool", URI, fails_on_third) == (2, 1)
    assert replay_all(tmp_path / "spool", URI, lambda op: executed.append(op["run_id"])) == (2, 0)
    assert executed == ["0", "1", "2", "3"]  # nothing replayed twice


def test_an_unavailable_store_stops_the_replay_of_later_spools(tmp_path):
    spooled(tmp_path, [{"op": "set_terminated", "run_id": "a", "status": "FINISHED"}]).close()
    spooled(tmp_path, [{"op": "set_terminated", "run_id": "b", "status": "FINISHED"}]).close()
    attempts = []

    def refused(op):
        attempts.append(op["run_id"])
        raise ConnectionRefusedError("Connection refused")

    assert replay_all(tmp_path / "spool", URI, refused) == (0, 2)
    assert attempts == ["a"]  # the second spool did not wait for the dead store again


def test_spools_of_another_store_are_left(tmp_path):
    spooled(tmp_path, [{"op": "log_text", "run_id": "r", "text": "x", "file_name": "x"}]).close()
    assert replay_all(tmp_path / "spool", "http://elsewhere:5000", pytest.fail) == (0, 1)


def test_files_to_upload_are_copied_into_the_spool(tmp_path):
    chart = tmp_path / "tmp" / "chart.png"
    chart.parent.mkdir()
    chart.write_bytes(b"png")
    spool = spooled(tmp_path, [{"op": "log_artifact", "run_id": "r", "path": str(chart)}])
    spool.close()
    chart.unlink()  # the stage's temporary directory is gone
    uploaded = []
    replay_all(tmp_path / "spool", URI, lambda op: uploaded.append(Path(op["path"]).read_bytes()))
    assert uploaded == [b"png"]


def test_a_line_cut_short_by_a_killed_process_is_skipped(tmp_path):
    spooled(tmp_path, [{"op": "set_terminated", "run_id": "a", "status": "FINISHED"}]).close()
    [path] = pending(tmp_path / "spool")
    with path.open("a") as stream:
        stream.write('{"op": "log_ba')
    executed = []
    assert replay_all(tmp_path / "spool", URI, executed.append) == (1, 0)
    assert [op["run_id"] for op in executed] == ["a"]


def test_is_unavailable_recognises_a_refused_connection(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as refused:
        MlflowClient(f"http://127.0.0.1:{free_port()}").get_experiment_by_name("x")
    assert is_unavailable(refused.value)
    assert is_unavailable(RuntimeError("(sqlite3.OperationalError) database is locked"))
    assert not is_unavailable(ValueError("RESOURCE_DOES_NOT_EXIST: run r not found"))
