"""Property-based: every bad value of every parameter in params.yaml gives one ConfigError.

The keys come from the real params.yaml, so a parameter added there is fuzzed without
touching this file; what a key holds (int, float, bool, text, choice, list) is read from
its pydantic field. Each case must raise the project's ConfigError (never a pydantic
ValidationError, KeyError or TypeError) whose lines all name the dotted parameter and say
what is expected. Examples are derandomized, so CI sees the same cases every run.
"""

from __future__ import annotations

import copy
import math
import re
import time
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from pipeline.config import PipelineConfig, load_config, parse_config
from pipeline.errors import ConfigError

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
REAL_PARAMS: dict = yaml.safe_load(PARAMS_FILE.read_text())
FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
EXPECTATION = re.compile(r"should|expected|must|choose|unknown|finite", re.IGNORECASE)
BOOL_WORDS = {"0", "1", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "off"}
NUMBER_WORDS = {"auto"}  # words that numeric parameters accept too


# ---------------------------------------------------------------------------- the key tree


def _leaves(tree: dict, prefix: tuple = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in tree.items():
        path = (*prefix, key)
        paths += _leaves(value, path) if isinstance(value, dict) else [path]
    return paths


def _sections(tree: dict, prefix: tuple = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for key, value in tree.items():
        if isinstance(value, dict):
            paths += _sections(value, (*prefix, key))
    return paths


LEAVES = _leaves(REAL_PARAMS)
SECTIONS = _sections(REAL_PARAMS)


def _annotation(path: tuple[str, ...]) -> Any:
    model: Any = PipelineConfig
    for key in path:
        annotation = model.model_fields[key].annotation
        model = annotation
    return annotation


def _kind(annotation: Any) -> tuple[str, bool]:
    """(int | float | bool | str | choice | list, nullable) of a field's type."""
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(get_args(annotation))
        # A number that also takes a word (round_to: auto) is fuzzed as the number; the
        # words are never generated as bad text (NUMBER_WORDS).
        numbers = [a for a in args if get_origin(a) is not Literal]
        assert all(set(get_args(a)) <= NUMBER_WORDS for a in args if get_origin(a) is Literal)
        (annotation,) = numbers or args
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return "choice", nullable
    if get_origin(annotation) is list:
        return "list", nullable
    return {bool: "bool", int: "int", float: "float", str: "str"}[annotation], nullable


def test_every_parameter_in_params_yaml_is_fuzzed():
    """The walk covers each leaf of the shipped file, and every leaf has a known kind."""
    assert len(LEAVES) >= 50
    assert {_kind(_annotation(p))[0] for p in LEAVES} == {
        "int",
        "float",
        "bool",
        "str",
        "choice",
        "list",
    }
    assert () in SECTIONS and ("search", "jst") in SECTIONS


# ---------------------------------------------------------------------------- bad values


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_bad_text = st.text(max_size=12).filter(
    lambda s: not _looks_numeric(s) and s.strip().lower() not in BOOL_WORDS | NUMBER_WORDS
)
_containers = st.one_of(
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.none())
)
_huge = st.sampled_from([10**15, -(10**15), 1e15, -1e300, 1e300, 2**64])
_non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def wrong_type(kind: str, nullable: bool) -> st.SearchStrategy:
    """Values whose type is wrong for a ``kind`` parameter, whatever their size."""
    none = st.nothing() if nullable else st.none()
    if kind == "int":
        fractional = st.floats(-1e6, 1e6).filter(lambda x: x != int(x))
        return st.one_of(_bad_text, _containers, st.booleans(), fractional, none)
    if kind == "float":
        return st.one_of(_bad_text, _containers, st.booleans(), none)
    if kind == "bool":
        numbers = st.one_of(st.integers(), st.floats()).filter(lambda x: x not in (0, 1))
        return st.one_of(_bad_text, _containers, numbers, none)
    if kind in ("str", "choice"):
        return st.one_of(st.integers(), st.floats(), st.booleans(), _containers, none)
    bad_items = st.one_of(_bad_text, st.booleans(), st.none(), _non_finite, _huge)
    return st.one_of(
        _bad_text,
        st.integers(),
        st.booleans(),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
        st.lists(bad_items, min_size=1, max_size=3),
        st.just([]),
        none,
    )


def out_of_range(kind: str) -> st.SearchStrategy:
    """Numbers no parameter accepts: every scalar one is a count, size, rate or fraction."""
    if kind in ("int", "float"):
        return st.one_of(_huge, _non_finite, st.integers(max_value=-1), st.floats(max_value=-1e-9))
    return st.nothing()


def any_value() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=12),
        st.lists(st.one_of(st.integers(), st.floats(), st.text(max_size=3)), max_size=4),
    )


def _with_value(path: tuple[str, ...], value: Any) -> dict:
    raw = copy.deepcopy(REAL_PARAMS)
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@st.composite
def bad_leaf(draw, values) -> tuple[tuple[str, ...], Any]:
    path = draw(st.sampled_from(LEAVES))
    return path, draw(values(*_kind(_annotation(path))))


def assert_names_only(error: ConfigError, dotted: str) -> None:
    """One message whose every error line names ``dotted`` and says what is expected."""
    header, *lines = str(error).splitlines()
    assert header.startswith("params.yaml"), str(error)
    assert lines, str(error)
    for line in lines:
        assert line.isprintable(), f"control characters in:\n{error!r}"
        assert line.strip().startswith(dotted), f"{dotted} not named in:\n{error}"
        assert EXPECTATION.search(line), f"no expectation in:\n{error}"


# ---------------------------------------------------------------------------- properties


@FUZZ
@given(bad_leaf(wrong_type))
def test_wrong_type_names_the_parameter(case):
    path, value = case
    with pytest.raises(ConfigError) as error:
        parse_config(_with_value(path, value))
    assert_names_only(error.value, ".".join(path))


@FUZZ
@given(bad_leaf(lambda kind, _nullable: out_of_range(kind)))
def test_out_of_range_names_the_parameter(case):
    path, value = case
    with pytest.raises(ConfigError) as error:
        parse_config(_with_value(path, value))
    assert_names_only(error.value, ".".join(path))


@FUZZ
@given(st.sampled_from(LEAVES), any_value())
def test_any_value_is_accepted_or_named(path, value):
    """Edge values (zero, empty, borderline) either validate or fail naming the field."""
    try:
        parse_config(_with_value(path, value))
    except ConfigError as error:
        dotted = ".".join(path)
        lines = str(error).splitlines()[1:]
        # A cross-field check (sigma_min <= sigma_start) may name the partner field.
        assert any(line.strip().startswith(dotted) for line in lines) or "sigma" in dotted, str(
            error
        )


@FUZZ
@given(
    st.sampled_from(SECTIONS),
    st.one_of(st.text(min_size=1, max_size=10), st.integers()),
    any_value(),
)
def test_unknown_key_at_any_level_is_named(section, key, value):
    raw = copy.deepcopy(REAL_PARAMS)
    node = raw
    for part in section:
        node = node[part]
    model = PipelineConfig if not section else _annotation(section)
    if str(key) in model.model_fields:
        key = f"{key}_typo"
    node[key] = value
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    shown = key if isinstance(key, str) and key.isprintable() and key == key.strip() else repr(key)
    shown = str(key) if isinstance(key, int) else shown
    assert_names_only(error.value, ".".join((*section, shown)))
    assert "unknown parameter" in str(error.value)


@FUZZ
@given(st.sets(st.sampled_from(LEAVES + SECTIONS[1:]), min_size=1, max_size=8))
def test_missing_keys_fall_back_to_the_documented_defaults(dropped):
    """Every parameter has a default: a missing key (or section) is never a crash."""
    raw = copy.deepcopy(REAL_PARAMS)
    for path in sorted(dropped, key=len, reverse=True):
        node = raw
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    cfg = parse_config(raw)
    defaults = PipelineConfig()
    for path in LEAVES:
        if not _present(raw, path):
            assert _attr(cfg, path) == _attr(defaults, path), path


def _present(tree: dict, path: tuple) -> bool:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def _attr(cfg: BaseModel, path: tuple) -> Any:
    for key in path:
        cfg = getattr(cfg, key)
    return cfg


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for position, byte in edits:
        buffer[position % len(buffer)] = byte
    return bytes(buffer[:cut] if cut is not None else buffer)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, len(PARAMS_FILE.read_bytes())),
)
def test_corrupted_params_file_is_accepted_or_named(tmp_path_factory, edits, cut):
    """Random byte edits and truncations of the real file: valid, or a ConfigError that
    names the file (bad UTF-8, bad YAML, not a mapping, or a bad parameter)."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_bytes(_mutate(PARAMS_FILE.read_bytes(), edits, cut))
    try:
        load_config(path)
    except ConfigError as error:
        assert str(error).startswith(str(path)), str(error)


@pytest.mark.parametrize("root", ["data/\x00raw", "data/" + "r" * 256])
def test_a_data_root_the_os_refuses_is_named(root):
    with pytest.raises(ConfigError) as error:
        parse_config(_with_value(("data", "root"), root))
    assert_names_only(error.value, "data.root")


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """Aliases nest a list 9**8 items wide in a few lines; the message must not print it."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="l7: unknown parameter") as error:
        load_config(path)
    assert time.monotonic() - started < 1.0
    assert len(str(error.value)) < 2000
