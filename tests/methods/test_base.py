"""The method registry: a method is one module dropped into the package, nothing else."""

import importlib
import sys
import textwrap

import pytest

import pipeline.methods
from pipeline.errors import ConfigError
from pipeline.methods import base, get_method, register_method
from pipeline.methods.base import import_modules

TOY = """
from pipeline.methods.base import register_method


@register_method("toy")
def toy(ctx):
    return ("toy result", ctx)
"""


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test."""
    monkeypatch.setattr(base, "_METHODS", dict(base._METHODS))
    yield base._METHODS
    sys.modules.pop("pipeline.methods.toy_method", None)
    vars(pipeline.methods).pop("toy_method", None)


def test_a_module_in_the_package_registers_its_method(tmp_path, registry, monkeypatch):
    (tmp_path / "toy_method.py").write_text(textwrap.dedent(TOY))
    # A folder of the package: the toy module is then pipeline.methods.toy_method.
    path = [*pipeline.methods.__path__, str(tmp_path)]
    monkeypatch.setattr(pipeline.methods, "__path__", path)
    with pytest.raises(ConfigError):
        get_method("toy")
    names = import_modules(path, "pipeline.methods")
    assert "pipeline.methods.toy_method" in names
    assert {"pipeline.methods.baselines", "pipeline.methods.jst.search"} <= set(names)
    assert get_method("toy")("ctx") == ("toy result", "ctx")
    with pytest.warns(UserWarning, match="method 'toy' registered again"):
        importlib.reload(sys.modules["pipeline.methods.toy_method"])  # a second definition


def test_a_method_package_that_fails_to_import_fails_loudly(tmp_path, registry, monkeypatch):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("import a_module_that_is_not_there\n")
    monkeypatch.setattr(pipeline.methods, "__path__", [str(tmp_path)])
    with pytest.raises(ImportError, match="a_module_that_is_not_there"):
        import_modules([str(tmp_path)], "pipeline.methods")


def test_registering_a_name_again_warns_and_replaces(registry):
    @register_method("toy")
    def first(ctx):
        return 1

    with pytest.warns(UserWarning, match="method 'toy' registered again"):

        @register_method("toy")
        def second(ctx):
            return 2

    assert get_method("toy") is second


def test_an_unknown_method_names_the_choices():
    with pytest.raises(ConfigError, match=r"^search.method: unknown method 'magic'; choose one"):
        get_method("magic")
