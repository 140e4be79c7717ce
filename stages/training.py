"""What the training stages (search, finetune) share around their own work.

Both pick the device and its numerics, open a tracked MLflow run tagged with them, load
the prepared data, seed every RNG, log their section's parameters and keep resumable
checkpoints, which are dropped once the stage has written its outputs. They may run
as several processes (``run_stage(main, data_parallel=True)``): every rank trains, rank
0 alone writes outputs and MLflow records.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from pipeline import distributed
from pipeline.config import PipelineConfig
from pipeline.data import PreparedData, load_prepared
from pipeline.train import resolve_device, seed_everything, training_numerics
from stages.common import (
    PREPARED_DIR,
    clear_checkpoints,
    stage_checkpoints,
    tracked_stage,
)

T = TypeVar("T")


@dataclass
class TrainingStage(Generic[T]):
    """A training stage under way: its run, device, data and checkpoint folder."""

    name: str
    cfg: PipelineConfig
    run: Any  # the MLflow stage run (on ranks other than 0, one that records nothing)
    device: torch.device
    numerics: dict[str, str]  # what train.precision / memory_format resolved to
    data: PreparedData
    checkpoints: Path
    loaded: T  # what the stage loaded besides the prepared data

    def log_chart(self, draw: Callable[[Path], Path]) -> None:
        """Log the chart ``draw`` writes into the folder it is given as a plot."""
        with tempfile.TemporaryDirectory() as tmp:
            self.run.log_artifact(draw(Path(tmp)), "plots")


@contextmanager
def training_stage(
    cfg: PipelineConfig,
    name: str,
    inputs: list[Path],
    load: Callable[[], T] = lambda: None,
) -> Iterator[TrainingStage[T]]:
    """Run the block as training stage ``name`` (``search`` or ``finetune``: also the
    section whose parameters are logged) reading ``inputs``.

    ``load`` reads the stage's other inputs; it runs before the seed is set, because
    building a model draws random numbers. The checkpoints are cleared when the block
    ends without an error on rank 0, which has then written the outputs.
    """
    device = resolve_device(cfg.train.device)
    numerics = training_numerics(cfg.train, device)
    with tracked_stage(cfg, name, inputs) as run:
        run.set_tags({f"train.{k}": v for k, v in numerics.items()})
        data = load_prepared(PREPARED_DIR)
        loaded = load()
        seed_everything(cfg.seed)
        run.log_params({f"{name}.{k}": v for k, v in getattr(cfg, name).model_dump().items()})
        checkpoints = stage_checkpoints(name, cfg, inputs)
        yield TrainingStage(name, cfg, run, device, numerics, data, checkpoints, loaded)
    if distributed.is_main():
        clear_checkpoints(name)
