"""Progress display: a rich bar on a terminal, one log line per epoch everywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def _summary(record: dict) -> str:
    keys = ("train_loss", "train_top1", "val_top1", "val_acc", "flops_ratio", "reward")
    return "  ".join(f"{k}={record[k]:.4f}" for k in keys if k in record)


@contextmanager
def epoch_progress(desc: str, total: int, start: int = 0) -> Iterator[Callable[[dict], None]]:
    """Yields ``advance(record)``: call it once per finished epoch or iteration."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[summary]}"),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )
    with progress:
        task = progress.add_task(desc, total=total, completed=start, summary="")

        def advance(record: dict) -> None:
            summary = _summary(record)
            progress.update(task, advance=1, summary=summary)
            if not console.is_terminal:
                console.log(f"{desc} {progress.tasks[0].completed:.0f}/{total} {summary}")

        yield advance


@contextmanager
def count_progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)`` for work counted in units (shards, files): a bar on
    a terminal, else a log line at every tenth of the total and at the end."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )
    with progress:
        task = progress.add_task(desc, total=None, visible=False)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, visible=True)
            step = max(1, total // 10)
            if not console.is_terminal and (done % step == 0 or done == total):
                console.log(f"{desc} {done}/{total}")

        yield update
