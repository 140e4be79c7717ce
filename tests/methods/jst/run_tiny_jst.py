"""Runs a tiny JST search in its own process (used by the resume-after-SIGKILL test).

usage: python run_tiny_jst.py WORKDIR RESULT_JSON
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pipeline.methods import SearchContext, get_method  # noqa: E402
from pipeline.train import seed_everything  # noqa: E402
from tests.conftest import synthetic_data, tiny_config  # noqa: E402

TINY_JST = {
    "iterations": 6,
    "warmup_epochs": 1,
    "candidates": 3,
    "freeze_fraction": 0.67,  # iterations 3-6 train one architecture: resume covers it
    "score_batches": 1,
    "recalibrate_batches": 1,
}


def tiny_jst_config(**jst):
    return tiny_config(
        search={"method": "jst", "target_flops": 0.5, "epochs": 7, "jst": {**TINY_JST, **jst}},
        model={"arch": "resnet20"},
    )


def main(workdir: str, result_path: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    ctx = SearchContext(tiny_jst_config(), synthetic_data(), torch.device("cpu"), Path(workdir))
    result = get_method("jst")(ctx)
    weights = sum(float(p.double().sum()) for p in result.model.state_dict().values())
    Path(result_path).write_text(
        json.dumps(
            {
                "arch_sha256": result.spec.sha256,
                "summary": result.summary,
                "history": result.history,
                "weights_checksum": weights,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
