"""A checkpoint resumes only the run that wrote it, never a half-written or foreign file."""

import pytest
import torch

from pipeline import checkpoint as checkpoint_module
from pipeline.checkpoint import Checkpoint


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    """The lines the checkpoint logs."""
    lines: list[str] = []
    monkeypatch.setattr(checkpoint_module.console, "log", lines.append)
    return lines


def test_saved_state_comes_back_with_its_fingerprint(tmp_path):
    checkpoint = Checkpoint(tmp_path / "phase.pt", "fp", "phase")
    checkpoint.save({"epoch": 2, "weights": torch.arange(3.0)})
    state = checkpoint.load()
    assert state["fingerprint"] == "fp" and state["epoch"] == 2
    assert torch.equal(state["weights"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["phase.pt"]  # no temporary file left


def test_state_of_another_fingerprint_is_not_resumed(tmp_path, logged):
    Checkpoint(tmp_path / "phase.pt", "fp", "phase").save({"epoch": 2})
    assert Checkpoint(tmp_path / "phase.pt", "other", "phase").load() is None
    assert logged == ["phase: checkpoint of other parameters or data; starting afresh"]


def test_unreadable_or_missing_checkpoints_are_not_resumed(tmp_path, logged):
    path = tmp_path / "phase.pt"
    assert Checkpoint(path, "fp", "phase").load() is None  # none yet
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, "fp", "phase").load() is None
    assert logged == [f"phase: ignoring unreadable checkpoint {path}"]


def test_a_pickled_object_is_refused(tmp_path):
    """weights_only: loading a checkpoint never runs code from it."""
    path = tmp_path / "phase.pt"
    torch.save({"fingerprint": "fp", "payload": Exploit()}, path)
    assert Checkpoint(path, "fp", "phase").load() is None


class Exploit:
    def __reduce__(self):
        return (print, ("ran code from a checkpoint",))


def test_without_a_path_nothing_is_kept(tmp_path):
    checkpoint = Checkpoint(None, "fp", "phase")
    checkpoint.save({"epoch": 1})
    assert checkpoint.load() is None
    assert checkpoint.kept("epoch", 3) == "No epoch checkpoint was written yet."


def test_kept_names_the_last_finished_unit(tmp_path):
    checkpoint = Checkpoint(tmp_path / "jst.pt", "fp", "jst")
    assert checkpoint.kept("iteration", 0) == "No iteration checkpoint was written yet."
    assert checkpoint.kept("iteration", 2) == (
        f"The checkpoint after iteration 2 is kept ({tmp_path / 'jst.pt'})."
    )
