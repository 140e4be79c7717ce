"""params.yaml validation: defaults, the shipped file, and one clear message per bad value."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_are_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.search.target_flops <= 1


def test_defaults_are_valid():
    assert parse_config({}).search.method in {"jst", "l1"}


def test_speed_settings_default_to_auto_and_accept_their_words():
    train = parse_config({}).train
    assert (train.precision, train.memory_format, train.compile) == ("auto", "auto", False)
    chosen = parse_config(
        {"train": {"precision": "bf16", "memory_format": "channels_last", "compile": True}}
    ).train
    assert (chosen.precision, chosen.memory_format, chosen.compile) == (
        "bf16",
        "channels_last",
        True,
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"search": {"target_flops": 0}}, "search.target_flops"),
        ({"search": {"target_flops": 1.5}}, "search.target_flops"),
        ({"search": {"method": "magic"}}, "search.method"),
        ({"model": {"arch": "resnet9000"}}, "model.arch"),
        ({"data": {"dataset": "mnist"}}, "data.dataset"),
        ({"data": {"val_fraction": 1.2}}, "data.val_fraction"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"train": {"precision": "fp16"}}, "train.precision"),
        ({"train": {"precision": False}}, "train.precision"),  # YAML reads `off` as false
        ({"train": {"memory_format": "nhwc"}}, "train.memory_format"),
        ({"train": {"compile": "sometimes"}}, "train.compile"),
        ({"train": {"gpu_data_max_mb": -1}}, "train.gpu_data_max_mb"),
        ({"train": {"gpu_data_max_mb": True}}, "train.gpu_data_max_mb"),
        ({"search": {"epochs": "many"}}, "search.epochs"),
        ({"search": {"jst": {"sigma_start": 0.1, "sigma_min": 0.5}}}, "search.jst.sigma_min"),
        ({"search": {"jst": {"iterations": 0}}}, "search.jst.iterations"),
        ({"tracking": {"alias": "latest"}}, "tracking.alias"),
        ({"serach": {}}, "serach"),
        ({"search": {"target_flop": 0.5}}, "search.target_flop"),
    ],
)
def test_bad_values_name_the_parameter(raw, field):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert field in str(err.value)


def test_unknown_key_says_how_to_fix():
    with pytest.raises(ConfigError, match="unknown parameter"):
        parse_config({"search": {"bogus": 1}})


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top)


def test_jst_without_epochs_after_its_warmup_is_refused_at_validation():
    with pytest.raises(
        ConfigError, match=r"search.epochs \(2\) must exceed search.jst.warmup_epochs"
    ):
        parse_config({"search": {"method": "jst", "epochs": 2, "jst": {"warmup_epochs": 2}}})
    parse_config({"search": {"method": "l1", "epochs": 2, "jst": {"warmup_epochs": 2}}})
