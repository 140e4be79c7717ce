"""The `jst` command: help everywhere, clean errors, inspection of a saved model."""

import pytest
from typer.testing import CliRunner

from pipeline.artifacts import save_compact
from pipeline.cli import app
from pipeline.pruning.slicing import build_model, dense_spec

runner = CliRunner()
COMMANDS = [
    "prepare",
    "search",
    "finetune",
    "export",
    "evaluate",
    "validate",
    "models",
    "methods",
    "experiments",
    "inspect",
    "predict",
    "reproduce",
    "ui",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_lists():
    assert "resnet56" in runner.invoke(app, ["models"]).output
    assert "jst" in runner.invoke(app, ["methods"]).output


def test_models_says_how_each_layout_is_known():
    lines = {
        line.split()[0]: line for line in runner.invoke(app, ["models"]).output.splitlines() if line
    }
    assert lines["resnet20"].endswith("hand-written layout")
    assert lines["mobilenet_v2"].endswith("torchvision, layout discovered")
    assert "alexnet" not in lines and "package.module:factory" in "".join(lines.values())
    every = runner.invoke(app, ["models", "--all"]).output
    assert "alexnet" in every and "vit_b_16" not in every


def test_validate_reports_the_bad_parameter_without_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("search:\n  target_flops: 2\n")
    result = runner.invoke(app, ["validate", "--params", str(params)])
    assert result.exit_code == 1
    assert "search.target_flops" in result.output
    assert "Traceback" not in result.output


def test_inspect_a_saved_model(tmp_path):
    spec = dense_spec("resnet20", (1, 8, 8), 4)
    save_compact(tmp_path / "m", spec, build_model(spec))
    result = runner.invoke(app, ["inspect", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert spec.sha256 in result.output and "1.000 of dense" in result.output


def test_inspect_refuses_a_missing_model(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "arch.json" in result.output
