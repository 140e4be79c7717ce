"""Property-based: any corruption of arch.json is refused with one ArtifactError that names
the file and the field (truncation, bad UTF-8, wrong types, missing or unknown keys, unknown
model, widths of zero, below zero or above the dense model's, absurdly large sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.artifacts import load_compact, save_compact
from pipeline.errors import ArtifactError
from pipeline.models import available_models
from pipeline.pruning.slicing import build_model, dense_spec
from pipeline.pruning.spec import ArchSpec

FUZZ = settings(
    derandomize=True,
    deadline=None,
    max_examples=120,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DENSE = dense_spec("resnet20", (1, 8, 8), 10)
SPEC = ArchSpec(
    DENSE.model, DENSE.input_shape, 10, {g: max(1, w // 2) for g, w in DENSE.widths.items()}
)
VALID = SPEC.to_dict()
GROUPS = sorted(DENSE.widths)

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_huge = st.sampled_from([10**12, 2**63, 10**40, -(10**12)])
_not_positive_int = st.one_of(
    st.integers(max_value=0), _huge, st.floats(), st.booleans(), st.text(max_size=4), st.none()
)


def _bad_shape() -> st.SearchStrategy:
    good = list(VALID["input_shape"])
    one_bad_dim = st.tuples(st.integers(0, 2), _not_positive_int).map(
        lambda t: [t[1] if i == t[0] else v for i, v in enumerate(good)]
    )
    wrong_length = st.lists(st.integers(1, 8), max_size=6).filter(lambda v: len(v) != 3)
    return st.one_of(one_bad_dim, wrong_length, _json.filter(lambda v: not isinstance(v, list)))


def _bad_widths() -> st.SearchStrategy:
    def set_group(group_value):
        group, value = group_value
        return {**VALID["widths"], group: value}, f"widths.{group}"

    too_wide = st.sampled_from(GROUPS).flatmap(
        lambda g: st.tuples(st.just(g), st.integers(DENSE.widths[g] + 1, 10**15))
    )
    bad_value = st.tuples(st.sampled_from(GROUPS), _not_positive_int)
    dropped = st.sampled_from(GROUPS).map(
        lambda g: ({k: v for k, v in VALID["widths"].items() if k != g}, g)
    )
    unknown = st.text(min_size=1, max_size=6).filter(lambda g: g not in DENSE.widths)
    return st.one_of(
        st.one_of(too_wide, bad_value).map(set_group),
        dropped,
        unknown.map(lambda g: ({**VALID["widths"], g: 1}, "widths")),
        _json.filter(lambda v: not isinstance(v, dict)).map(lambda v: (v, "widths")),
    )


@st.composite
def corrupted_spec(draw) -> tuple[dict | list | str | int | None, list[str]]:
    """A parsed-JSON corruption of the valid spec and the words its error must contain."""
    data = dict(VALID)
    kind = draw(
        st.sampled_from(["drop", "extra", "model", "version", "shape", "classes", "widths"])
    )
    if kind == "drop":
        key = draw(st.sampled_from(sorted(VALID)))
        del data[key]
        return data, ["missing", key]
    if kind == "extra":
        key = draw(st.text(max_size=8).filter(lambda k: k not in VALID))
        data[key] = draw(_json)
        return data, ["unknown", repr(key)[1:-1]]
    if kind == "model":
        data["model"] = draw(_json.filter(lambda m: m not in available_models()))
        return data, ["model"]
    if kind == "version":
        data["spec_version"] = draw(_json.filter(lambda v: v != 1 or isinstance(v, bool)))
        return data, ["spec_version"]
    if kind == "shape":
        data["input_shape"] = draw(_bad_shape())
        return data, ["input_shape"]
    if kind == "classes":
        data["num_classes"] = draw(_not_positive_int)
        return data, ["num_classes"]
    data["widths"], name = draw(_bad_widths())
    return data, [name]


def _refused(path: Path, *names: str) -> str:
    with pytest.raises(ArtifactError) as error:
        ArchSpec.load(path)
    message = str(error.value)
    assert message.startswith(str(path)), message
    assert message.isprintable(), repr(message)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    return message


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spec") / "arch.json"


def test_the_uncorrupted_spec_loads(spec_file):
    SPEC.save(spec_file)
    assert ArchSpec.load(spec_file) == SPEC


@FUZZ
@given(corrupted_spec())
def test_corrupted_fields_are_named(spec_file, case):
    data, names = case
    spec_file.write_text(json.dumps(data))
    _refused(spec_file, *names)


@FUZZ
@given(_json.filter(lambda v: not isinstance(v, dict)))
def test_a_document_that_is_not_an_object_is_refused(spec_file, data):
    spec_file.write_text(json.dumps(data))
    _refused(spec_file, "(top level)")


@FUZZ
@given(st.data())
def test_truncated_or_non_utf8_files_are_refused(spec_file, data):
    text = json.dumps(VALID, indent=2).encode()
    if data.draw(st.booleans(), label="truncate"):
        content = text[: data.draw(st.integers(0, len(text) - 1), label="cut")]
    else:
        at = data.draw(st.integers(0, len(text)), label="at")
        bad = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xfe\xff"]), label="bytes")
        content = text[:at] + bad + text[at:]
    spec_file.write_bytes(content)
    _refused(spec_file, "not valid JSON")


def test_absurd_nesting_is_refused(spec_file):
    spec_file.write_text("[" * 100_000 + "]" * 100_000)
    _refused(spec_file)


def test_a_model_directory_with_a_corrupted_spec_is_refused_before_its_weights(tmp_path):
    save_compact(tmp_path / "m", SPEC, build_model(SPEC))
    spec_path = tmp_path / "m" / "arch.json"
    spec_path.write_text(json.dumps({**VALID, "widths": {**VALID["widths"], "stem": 10**9}}))
    with pytest.raises(ArtifactError, match="widths.stem") as error:
        load_compact(tmp_path / "m")
    assert str(spec_path) in str(error.value)
