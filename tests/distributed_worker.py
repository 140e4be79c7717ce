"""One rank of the data-parallel test: a tiny JST search and an l1 baseline.

usage: python -m torch.distributed.run --standalone --nproc_per_node=N \
           tests/distributed_worker.py OUT
Each rank saves what it found (architecture JSON + weights) under OUT/<method>/rank<r>;
with no torchrun the same code runs as one process (rank 0).
"""

import json
import sys
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


def main(out: str) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env()
    try:
        run_methods(Path(out))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
