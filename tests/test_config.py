"""params.yaml validation: defaults, the shipped file, and one clear message per bad value."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import PipelineConfig, load_config, parse_config
from pipeline.errors import ConfigError
from stages.common import resolve_names

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_are_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.search.target_flops <= 1


def test_params_yaml_spells_out_exactly_the_code_defaults():
    """One source of defaults: deleting a line from params.yaml changes nothing."""
    shipped = load_config(ROOT / "params.yaml").model_dump()
    assert shipped == PipelineConfig().model_dump()


def test_every_default_is_written_in_params_yaml():
    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in tree.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert keys(written) == keys(PipelineConfig().model_dump())


def test_loading_the_config_imports_no_torch_and_no_registry():
    code = (
        "import sys, pipeline.config\n"
        "loaded = {'torch', 'pipeline.methods', 'pipeline.models'} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_registry_names_are_left_to_the_registries():
    """A misspelt method or model is reported by its registry (stages.common.resolve_names
    runs before any stage's work), once, naming the parameter and the choices."""
    cfg = parse_config({"search": {"method": "magic"}, "model": {"arch": "resnet9000"}})
    with pytest.raises(ConfigError, match=r"^search.method: unknown method 'magic'; choose"):
        resolve_names(cfg)
    cfg = parse_config({"model": {"arch": "resnet9000"}})
    with pytest.raises(ConfigError, match=r"^model.arch: unknown model 'resnet9000'; choose"):
        resolve_names(cfg)


def test_speed_settings_default_to_portable_fp32_and_accept_their_words():
    train = parse_config({}).train
    assert (train.precision, train.memory_format, train.compile) == ("fp32", "auto", False)
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
