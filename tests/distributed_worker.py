"""One rank of the data-parallel test: a tiny JST search and an l1 baseline.

usage: python -m torch.distributed.run --standalone --nproc_per_node=N \
           tests/distributed_worker.py OUT
Each rank saves what it found (architecture JSON + weights) under OUT/<method>/rank<r>;
with no torchrun the same code runs as one process (rank 0).
"""

import json
import multiprocessing
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import distributed  # noqa: E402
from pipeline.artifacts import save_compact  # noqa: E402
from pipeline.methods import SearchContext, get_method  # noqa: E402
from pipeline.train import seed_everything  # noqa: E402
from tests.conftest import synthetic_data, tiny_config  # noqa: E402
from tests.methods.jst.run_tiny_jst import TINY_JST  # noqa: E402

# Global batch 32: each step splits it 16/16 over 2 ranks. JST without gate learning
# (alpha_lr=0): Adam's first steps on the gates move each by about lr * sign(gradient),
# so a last-bit difference in a near-zero gradient becomes a different gate and, a few
# iterations on, a different architecture (measured: gates 0.522 vs 0.519 after one
# iteration). Ranks agree with each other either way; see tests/test_distributed.py.
# fp32 on every CPU: with bf16 autocast (auto on AMX CPUs) one process and two ranks
# round differently by far more than fp32's last bits, and the comparison is of the ranks.
FP32 = {"precision": "fp32", "memory_format": "contiguous"}
CONFIGS = {
    "jst": lambda: tiny_config(
        train=FP32,
        search={
            "method": "jst",
            "target_flops": 0.5,
            "epochs": 3,  # 1 warm-up epoch, then 1 epoch per iteration
            "jst": {**TINY_JST, "iterations": 2, "candidates": 2, "alpha_lr": 0},
        },
    ),
    "l1": lambda: tiny_config(
        train=FP32, search={"method": "l1", "target_flops": 0.5, "epochs": 1}
    ),
}


def run_methods(out: Path) -> None:
    """Run every method of CONFIGS; save each result under out/<method>/rank<r>."""
    data = synthetic_data()
    for method, config in CONFIGS.items():
        seed_everything(0)
        workdir = out / "work" / method  # rank 0 alone writes checkpoints here
        ctx = SearchContext(config(), data, torch.device("cpu"), workdir)
        result = get_method(method)(ctx)
        saved = out / method / f"rank{distributed.rank()}"
        save_compact(saved, result.spec, result.model)
        (saved / "history.json").write_text(json.dumps(result.history, indent=1))


def as_rank(rank: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` of 2, in this process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["WORLD_SIZE"] = "2"


@contextmanager
def two_forked_ranks(target: Callable[..., None], *args) -> Iterator[None]:
    """Run ``target(rank, port, *args)`` as ranks 0 and 1 while the block runs; both must
    exit cleanly. Forked from this process (torchvision and the pipeline are imported
    already: a fresh process spends most of a test importing them); each rank joins the
    gloo group through init_from_env from the variables ``as_rank`` sets."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP's thread pool does not survive a fork
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=target, args=(r, port, *args)) for r in (0, 1)]
    try:
        for process in ranks:
            process.start()
        yield
    finally:
        for process in ranks:
            process.join(timeout=600)
        torch.set_num_threads(threads)
    assert [p.exitcode for p in ranks] == [0, 0]


def main(out: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    try:
        run_methods(Path(out))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
