"""SIGKILL during `dvc repro`: the rerun resumes from the last checkpoint and finishes.

A real git + DVC repository (tests/e2e/e2e_repo.py); `dvc repro` runs in its own process
group, which is SIGKILLed (dvc and the stage it runs, no chance to clean up) at seeded
random moments after the search or fine-tuning stage has checkpointed an epoch.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.artifacts import load_compact
from tests.e2e.e2e_repo import E2ERepo, normalized

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EPOCHS = 5
# Three kills in two stages, each once the stage has checkpointed one more epoch than it
# resumed from (a seeded delay of up to 0.3 s then lets it get further into the next).
KILLS = ("search", "search", "finetune")


def checkpointed_epochs(repo: E2ERepo, stage: str) -> int:
    """Epochs the stage's newest checkpoint holds (0 when it has none yet)."""
    epochs = 0
    for path in (repo.root / "checkpoints" / stage).glob("*/*.pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # replaced under us: read it on the next poll
            continue
        epochs = max(epochs, int(state.get("epoch", 0)))
    return epochs


def repro_killed_after(repo: E2ERepo, stage: str, epochs: int, delay: float) -> tuple[str, int]:
    """Start `dvc repro`, SIGKILL its process group ``delay`` s after ``stage`` has
    checkpointed ``epochs`` epochs; returns what it printed and the epochs the stage's
    checkpoint held when it died (the delay may let it finish another one)."""
    log = repo.root.parent / f"repro-{stage}-{epochs}-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dvc", "repro"],
            cwd=repo.root,
            env=repo.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 400
        try:
            while checkpointed_epochs(repo, stage) < epochs:
                assert process.poll() is None, f"dvc repro ended early:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no checkpoint:\n{log.read_text()[-4000:]}"
                time.sleep(0.05)
            time.sleep(delay)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return log.read_text(), checkpointed_epochs(repo, stage)


def assert_outputs_complete_or_absent(repo: E2ERepo) -> None:
    """A model folder a later stage would read is either whole or not there at all."""
    for folder in ("models/searched", "models/compact"):
        path = repo.root / folder
        if path.exists():
            load_compact(path)  # raises on a half-written folder


def test_sigkilled_repro_resumes_and_finishes(tmp_path: Path) -> None:
    repo = E2ERepo.create(tmp_path / "repo")
    params = repo.read_params()
    # Epoch checkpoints of a dense pre-training; JST's per-iteration resume after SIGKILL is
    # tested in tests/methods/jst/test_search.py (test_resume_after_sigkill_...).
    params["search"]["method"] = "l1"
    params["search"]["epochs"] = EPOCHS
    params["finetune"]["epochs"] = EPOCHS
    repo.write_params(params)
    repo.commit("three epochs per stage")

    rng = random.Random(0)
    outputs, held = [], []
    for stage in KILLS:
        epochs = checkpointed_epochs(repo, stage) + 1
        text, at_kill = repro_killed_after(repo, stage, epochs, delay=rng.uniform(0.0, 0.3))
        assert epochs <= at_kill < EPOCHS, f"{stage} was not killed mid-stage:\n{text}"
        outputs.append(text)
        held.append(at_kill)
        assert_outputs_complete_or_absent(repo)

    final = repo.dvc("repro", timeout=420)
    # Each run after a kill picked up the stage's checkpoint instead of starting over.
    after_kills = [*outputs[1:], final.output]
    for stage, at_kill, text in zip(KILLS, held, after_kills, strict=True):
        expected = f"resuming after epoch {at_kill}/{EPOCHS}"
        assert expected in normalized(text), f"{stage} did not resume:\n{text}"

    status = repo.dvc("status").output
    assert "up to date" in status, status
    for folder in ("models/searched", "models/compact"):
        load_compact(repo.root / folder)
    # The resumed fine-tuning history holds every epoch exactly once.
    finetune_rows = (repo.root / "metrics/plots/finetune_history.csv").read_text().splitlines()
    assert len(finetune_rows) == 1 + EPOCHS, finetune_rows
    # Finished stages leave no checkpoints behind.
    assert not any((repo.root / "checkpoints").glob("*/*/*.pt"))
