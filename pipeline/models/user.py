"""The user's own model as ``model.arch: "package.module:factory"``.

Contract: ``factory`` is a callable in a module of this repository (a file under the
current directory, which is the repository root when stages run), returning an
``nn.Module`` whose training-mode output is the N x num_classes logits tensor. It must
accept the keyword ``num_classes`` and gets ``in_channels`` and ``input_size`` too where
its signature takes them (or ``**kwargs``). The channel layout is discovered by tracing
the model, as for torchvision's.

Why inside the repository: the commit then identifies the model's code (provenance,
``jst reproduce``), and an architecture spec, which names the factory, cannot make
``load_compact`` import and call an arbitrary installed module.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from pipeline.errors import ConfigError

_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_REQUIRED = "num_classes"
_OPTIONAL = ("in_channels", "input_size")


def is_user_factory(name: str) -> bool:
    """Whether ``name`` is meant as 'package.module:factory' (it has a colon)."""
    return ":" in name


def user_factory(name: str) -> Callable[..., nn.Module]:
    """The factory ``name`` names, imported and checked; build models through the result."""
    if not _SPEC.fullmatch(name):
        raise _error(
            name, "expected 'package.module:factory' (Python names separated by dots, one colon)"
        )
    module_name, _, attribute = name.partition(":")
    factory = _attribute(_import(name, module_name), attribute, name)
    keywords = _accepted_keywords(factory, name)

    def build(*, num_classes: int, in_channels: int, input_size: int) -> nn.Module:
        given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
        try:
            return factory(**{k: v for k, v in given.items() if k in keywords})
        except Exception as err:  # the user's code: any error, named
            raise _error(
                name, f"the factory raised {type(err).__name__}: {str(err)[:300]}"
            ) from None

    return build


def factory_module_file(name: str) -> Path:
    """The file that defines ``name``'s module (``__init__.py`` for a package), found
    without importing it; checked to lie in the repository like every import here."""
    module_name = name.partition(":")[0]
    with _repository_on_path():
        _check_inside_repository(name, module_name)
        return _where(importlib.util.find_spec(module_name))[0]


def _import(name: str, module_name: str):
    with _repository_on_path():
        _check_inside_repository(name, module_name)
        try:
            return importlib.import_module(module_name)
        except Exception as err:  # ImportError, SyntaxError, or what the module raises
            raise _error(
                name, f"importing {module_name!r} failed ({type(err).__name__}: {err})"
            ) from None


def _check_inside_repository(name: str, module_name: str) -> None:
    """Every package on the way and the module are files under the current directory;
    checked before each is imported, so nothing outside the repository runs."""
    root = Path.cwd().resolve()
    parts = module_name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        try:
            spec = importlib.util.find_spec(prefix)
        except Exception as err:  # a parent package that fails to import
            raise _error(
                name, f"importing {prefix!r} failed ({type(err).__name__}: {err})"
            ) from None
        if spec is None:
            raise _error(
                name,
                f"no module {prefix!r} under {root}; put it in the repository "
                "(stages import it from the repository root)",
            )
        places = _where(spec)
        outside = [p for p in places if not p.is_relative_to(root)]
        if not places or outside:
            raise _error(
                name,
                f"module {prefix!r} is {outside[0] if outside else 'built in'}, not a file in "
                f"the repository ({root}); models must be defined in the repository, so that "
                "the commit identifies their code",
            )


def _where(spec) -> list[Path]:
    """The file of a module, or the folders of a namespace package (none: built in)."""
    if spec.has_location and spec.origin:
        return [Path(spec.origin).resolve()]
    return [Path(p).resolve() for p in (spec.submodule_search_locations or [])]


@contextmanager
def _repository_on_path() -> Iterator[None]:
    """The current directory importable, as under `python -m stages.X`, also for `jst`."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added:
            sys.path.remove(cwd)


def _attribute(module, attribute: str, name: str):
    value = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise _error(name, f"{module.__name__!r} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise _error(name, f"{attribute!r} is a {type(value).__name__}, not callable")
    return value


def _accepted_keywords(factory, name: str) -> set[str]:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        raise _error(
            name, "the factory's signature cannot be read; wrap it in a function"
        ) from None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {_REQUIRED, *_OPTIONAL}
    keywords = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    if _REQUIRED not in keywords:
        raise _error(
            name,
            "the factory must accept the keyword argument num_classes (and may accept "
            "in_channels and input_size)",
        )
    return keywords & {_REQUIRED, *_OPTIONAL}


def _error(name: str, problem: str) -> ConfigError:
    return ConfigError(
        f"model.arch: {name!r}: {problem}. A user model is 'package.module:factory', a "
        "function in a module of the repository that takes num_classes (and optionally "
        "in_channels, input_size) and returns a torch.nn.Module."
    )
