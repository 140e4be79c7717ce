"""Tests of pipeline.tracking.client: calls retried while the SQLite store is locked."""

from __future__ import annotations

import pytest

from pipeline.tracking import retry_while_locked


def test_retry_while_locked_retries_lock_errors_only():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "done"

    assert retry_while_locked(flaky, delays_s=(0, 0, 0)) == "done"
    assert len(attempts) == 3
    with pytest.raises(ValueError):
        retry_while_locked(lambda: (_ for _ in ()).throw(ValueError("other")), delays_s=(0,))
