"""model.arch: "package.module:factory", the user's own model: the contract (num_classes,
optionally in_channels and input_size), and one clear ConfigError for each way it fails."""

import itertools
import sys
import textwrap

import pytest
import torch

from pipeline.config import parse_config
from pipeline.errors import ArtifactError, ConfigError
from pipeline.models import check_model_runs, create_model
from pipeline.pruning import spec as spec_module
from stages.common import resolve_names

MODULE = """
from torch import nn

def full(num_classes, in_channels, input_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
    )

def classes_only(num_classes):
    return full(num_classes, 3, None)

def anything(**options):
    assert set(options) == {"num_classes", "in_channels", "input_size"}, options
    return full(**options)

def no_classes():
    return full(10, 3, None)

def not_a_module(num_classes):
    return "a model"

def raises(num_classes):
    raise RuntimeError("boom")

def ten_classes(num_classes, in_channels):
    return full(10, in_channels, None)

def with_aux(num_classes, in_channels):
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = full(num_classes, in_channels, None)
        def forward(self, x):
            return self.body(x), self.body(x)
    return Aux()

class Zoo:
    @staticmethod
    def small(num_classes, in_channels):
        return full(num_classes, in_channels, None)

NOT_CALLABLE = 3
"""
_names = itertools.count()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the 'repository' (the current directory), with a fresh name per test."""
    name = f"user_models_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "broken.py").write_text("def oops(:\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def run(arch, num_classes=5, in_channels=1, input_size=8):
    check_model_runs(arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    model = create_model(
        arch, num_classes=num_classes, in_channels=in_channels, input_size=input_size
    )
    return model(torch.zeros(2, in_channels, input_size, input_size))


@pytest.mark.parametrize("factory", ["full", "anything", "Zoo.small"])
def test_a_factory_gets_the_keywords_it_takes(user_module, factory):
    assert run(f"{user_module}:{factory}").shape == (2, 5)


def test_a_factory_taking_only_num_classes_works_on_rgb_and_fails_clearly_on_gray(user_module):
    assert run(f"{user_module}:classes_only", in_channels=3).shape == (2, 5)
    with pytest.raises(ConfigError, match=r"fails on a batch of 2 x 1 x 8 x 8 zeros"):
        run(f"{user_module}:classes_only", in_channels=1)


BAD = {
    "no_such_module_e:build": "no module 'no_such_module_e' under",
    "{m}:missing": "has no attribute 'missing'",
    "{m}:NOT_CALLABLE": "'NOT_CALLABLE' is a int, not callable",
    "{m}:no_classes": "must accept the keyword argument num_classes",
    "{m}:not_a_module": "returned a str, not a torch.nn.Module",
    "{m}:raises": "the factory raised RuntimeError: boom",
    "{m}:ten_classes": r"to 2 x 5 logits .* but returned \(2, 10\)",
    "{m}:with_aux": "but returned tuple",
    "broken:oops": "importing 'broken' failed \\(SyntaxError",
    "os:getcwd": "module 'os' is .*, not a file in the repository",
    "sys:exit": "module 'sys' is built in, not a file in the repository",
    "{m}:": "expected 'package.module:factory'",
    "a b:c": "expected 'package.module:factory'",
}


@pytest.mark.parametrize(("arch", "problem"), BAD.items(), ids=list(BAD))
def test_each_bad_factory_is_a_config_error_naming_model_arch(user_module, arch, problem):
    arch = arch.format(m=user_module)
    with pytest.raises(ConfigError, match=r"^model.arch: .*" + problem):
        run(arch)


def test_resolve_names_checks_the_factory_on_the_configured_data(user_module):
    """digits at image_size 16: 1 channel, 10 classes; the stages' first check."""
    resolve_names(parse_config({"model": {"arch": f"{user_module}:full"}}))
    cfg = parse_config({"model": {"arch": f"{user_module}:classes_only"}})
    with pytest.raises(ConfigError, match=r"model.arch: .* 2 x 1 x 16 x 16 zeros"):
        resolve_names(cfg)
    with pytest.raises(ConfigError, match="has no attribute"):
        resolve_names(parse_config({"model": {"arch": f"{user_module}:nope"}}))


def test_the_repository_is_importable_without_being_on_sys_path(user_module, monkeypatch):
    """`jst` runs as a script: the current directory is not on sys.path there."""
    cwd = str(__import__("pathlib").Path.cwd())
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", cwd)])
    assert run(f"{user_module}:full").shape == (2, 5)
    assert cwd not in sys.path  # put back


def test_an_architecture_spec_names_a_user_factory_that_must_resolve(user_module):
    assert spec_module._check_model(f"{user_module}:full", "arch.json") == f"{user_module}:full"
    with pytest.raises(ArtifactError, match="arch.json: model: .*not a file in the repository"):
        spec_module._check_model("subprocess:run", "arch.json")


def test_a_pruned_user_model_is_saved_and_rebuilt_from_its_spec(user_module, tmp_path):
    """The spec names the factory; load_compact imports it again (layout discovered)."""
    from pipeline.artifacts import load_compact, save_compact
    from pipeline.pruning.slicing import build_model, dense_spec
    from pipeline.pruning.spec import ArchSpec

    arch = f"{user_module}:full"
    dense = dense_spec(arch, (1, 8, 8), 3)
    halved = {group: max(1, width // 2) for group, width in dense.widths.items()}
    spec = ArchSpec(arch, dense.input_shape, 3, halved)
    model = build_model(spec)
    save_compact(tmp_path / "compact", spec, model)
    loaded_spec, loaded = load_compact(tmp_path / "compact")
    assert loaded_spec == spec and loaded_spec.widths != dense.widths
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
