"""Data-parallel runs over streamed (sharded) data: 2 CPU processes (gloo), as torchrun
would start them. Each rank reads its own disjoint share of every epoch, and the ranks
still take the same steps: a JST search ends with one architecture and the same weights
on both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline import distributed
from pipeline.artifacts import load_compact, save_compact
from pipeline.data import load_prepared, prepare_dataset
from pipeline.methods import SearchContext, get_method
from pipeline.train import make_loader, seed_everything
from tests.conftest import tiny_config
from tests.distributed_worker import as_rank, two_forked_ranks
from tests.methods.jst.run_tiny_jst import TINY_JST

FP32 = {"precision": "fp32", "memory_format": "contiguous", "workers": 1}


def config():
    jst = {**TINY_JST, "iterations": 2, "candidates": 2, "alpha_lr": 0}
    return tiny_config(
        train=FP32,
        search={"method": "jst", "target_flops": 0.5, "epochs": 3, "jst": jst},
    )


def _rank(rank: int, port: int, prepared: Path, out: Path) -> None:
    as_rank(rank, port)
    distributed.init_from_env()
    try:
        data = load_prepared(prepared)
        cfg = config()
        loader = make_loader(data, cfg.train, 0, "cpu", augment=False)
        ids = [image.numpy().tobytes().hex() for x, _ in loader for image in x]
        (out / f"samples{rank}.json").write_text(json.dumps(ids))
        seed_everything(0)
        result = get_method("jst")(SearchContext(cfg, data, torch.device("cpu")))
        save_compact(out / f"rank{rank}", result.spec, result.model)
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    prepared = tmp_path_factory.mktemp("data") / "prepared"
    data = prepare_dataset("digits", None, prepared, image_size=8, max_memory_mb=0)
    assert data.streamed
    out = tmp_path_factory.mktemp("ranks")
    with two_forked_ranks(_rank, prepared, out):
        pass
    return data, out


def test_each_rank_reads_its_own_share_of_an_epoch(ranks):
    data, out = ranks
    shares = [json.loads((out / f"samples{r}.json").read_text()) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == len(data.train) // 32 * 16
    assert not set(shares[0]) & set(shares[1])


def test_ranks_on_streamed_data_agree_on_architecture_and_weights(ranks):
    _, out = ranks
    (spec0, model0), (spec1, model1) = (load_compact(out / f"rank{r}") for r in (0, 1))
    assert spec0.sha256 == spec1.sha256
    for name, tensor in model0.state_dict().items():
        assert torch.equal(tensor, model1.state_dict()[name]), name
