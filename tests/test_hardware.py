"""round_to: auto: kept widths follow the deployment hardware's channel block."""

import pytest
import torch

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.hardware import cpu_channel_block, deployment_channel_block
from pipeline.methods import SearchContext, get_method
from tests.conftest import synthetic_data, tiny_config


@pytest.mark.parametrize(
    ("capability", "block"), [("AVX512", 16), ("AVX512_BF16", 16), ("AVX2", 8), ("DEFAULT", 8)]
)
def test_cpu_block_is_the_simd_width_in_floats(monkeypatch, capability, block):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert cpu_channel_block() == block
    assert deployment_channel_block("cpu") == block


def test_gpu_deployment_rounds_to_eight(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert deployment_channel_block("cuda") == 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deployment_channel_block("auto") == 16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert deployment_channel_block("auto") == 8


def test_auto_is_resolved_before_a_method_sees_it_and_the_widths_follow_it():
    cfg = tiny_config(
        model={"arch": "resnet20"},
        search={"method": "l1", "epochs": 1, "round_to": "auto", "target_flops": 0.5},
    )
    ctx = SearchContext(cfg, synthetic_data(channels=3, size=16), torch.device("cpu"))
    # evaluate.device is auto: the block of whatever deploys here, a CPU or a GPU
    block = deployment_channel_block(cfg.evaluate.device)
    assert cfg.search.round_to == "auto"  # the caller's config is left as it was
    assert ctx.config.search.round_to == block
    result = get_method("l1")(ctx)
    dense = result.dense_spec.widths
    assert all(w % block == 0 or w == dense[g] for g, w in result.spec.widths.items())
    assert result.spec.widths != dense


def test_round_to_takes_a_number_or_auto():
    assert parse_config({"search": {"round_to": 16}}).search.round_to == 16
    with pytest.raises(ConfigError, match="round_to"):
        parse_config({"search": {"round_to": "fast"}})
