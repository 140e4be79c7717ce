"""Resumable state of a long phase: saved atomically, resumed only by the same run.

A checkpoint carries a fingerprint of what produced it (parameters, data); a run resumes
from it only if its own fingerprint is the same, so a checkpoint of other parameters is
never continued. Loads are ``weights_only``: a checkpoint file is never code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline import distributed
from pipeline.atomic import torch_save_atomic
from pipeline.progress import console


@dataclass(frozen=True)
class Checkpoint:
    """One resumable phase's checkpoint file; ``path`` None keeps nothing."""

    path: Path | None
    fingerprint: str
    desc: str  # names the phase in log lines

    def save(self, state: dict) -> None:
        """Write ``state`` with the fingerprint, atomically (a kill never leaves half a
        file); rank 0 alone writes, every rank holds the same state."""
        if self.path is None or not distributed.is_main():
            return
        torch_save_atomic({"fingerprint": self.fingerprint, **state}, self.path)

    def load(self) -> dict | None:
        """The saved state, or None where there is none this run may resume from."""
        if self.path is None or not Path(self.path).is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is simply not resumed from
            console.log(f"{self.desc}: ignoring unreadable checkpoint {self.path}")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            console.log(f"{self.desc}: checkpoint of other parameters or data; starting afresh")
            return None
        return state

    def kept(self, unit: str, done: int) -> str:
        """What a failure after ``done`` finished ``unit``s (epochs, iterations) leaves."""
        if self.path is None or done == 0:
            return f"No {unit} checkpoint was written yet."
        return f"The checkpoint after {unit} {done} is kept ({self.path})."
