"""Architecture specs: the identity of a (compact) network as canonical JSON.

A spec names the model, the input shape, the number of classes and the kept width of
every channel group. Its sha256 (over the canonical JSON) is the architecture's hash.
Compact models are always rebuilt from a spec plus a weights file, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import write_text_atomic
from pipeline.errors import ArtifactError

SPEC_VERSION = 1


@dataclass(frozen=True)
class ArchSpec:
    model: str
    input_shape: tuple[int, int, int]  # C, H, W
    num_classes: int
    widths: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": SPEC_VERSION,
            "model": self.model,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "widths": dict(sorted(self.widths.items())),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, source: str = "architecture spec") -> ArchSpec:
        """Parse and check a spec: exact keys, sane sizes, widths within the dense model's."""
        if not isinstance(data, dict):
            raise _invalid(source, "(top level)", f"expected a JSON object, got {_short(data)}")
        unknown = sorted(set(data) - set(_KEYS), key=str)
        if unknown:
            raise _invalid(source, "keys", f"unknown {_short(unknown)}; expected {list(_KEYS)}")
        missing = [key for key in _KEYS if key not in data]
        if missing:
            raise _invalid(source, "keys", f"missing {missing}")
        if not (_is_int(data["spec_version"]) and data["spec_version"] == SPEC_VERSION):
            raise _invalid(
                source,
                "spec_version",
                f"expected {SPEC_VERSION}, got {_short(data['spec_version'])}",
            )
        model = _check_model(data["model"], source)
        shape = _check_shape(data["input_shape"], source)
        num_classes = data["num_classes"]
        if not _in_range(num_classes, 1, MAX_CLASSES):
            raise _invalid(
                source,
                "num_classes",
                f"expected an integer in 1..{MAX_CLASSES}, got {_short(num_classes)}",
            )
        widths = _check_widths(data["widths"], model, shape, source)
        return cls(model, shape, num_classes, widths)

    def save(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ArchSpec:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: architecture spec not found; run `dvc repro` first.")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON; absurd nesting
            raise ArtifactError(f"{path}: not valid JSON ({str(err)[:120]}); {_FIX}.") from None
        except OSError as err:
            raise ArtifactError(f"{path}: cannot be read ({err.strerror or err}).") from None
        return cls.from_dict(data, str(path))


_KEYS = ("spec_version", "model", "input_shape", "num_classes", "widths")
_FIX = "regenerate it with `dvc repro` (the search stage writes it)"
# Generous bounds that keep a corrupted spec from building a model that fills the memory.
MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_CLASSES = 100_000


def _invalid(source: str, field: str, problem: str) -> ArtifactError:
    return ArtifactError(f"{source}: {field}: {problem}; {_FIX}.")


def _short(value: Any, limit: int = 60) -> str:
    text = reprlib.repr(value)  # a few items and levels, however large or deep the value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _in_range(value: Any, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def _check_model(model: Any, source: str) -> str:
    """A name ``model.arch`` accepts: registered, torchvision's, or a user factory in the
    repository that resolves (pipeline.models.user: never a module outside it)."""
    from pipeline.errors import ConfigError
    from pipeline.models import model_factory

    if not isinstance(model, str) or not model:
        raise _invalid(source, "model", f"expected a model name, got {_short(model)}")
    try:
        model_factory(model)
    except ConfigError as err:
        raise _invalid(source, "model", str(err).removeprefix("model.arch: ")) from None
    return model


def _check_shape(shape: Any, source: str) -> tuple[int, int, int]:
    ok = isinstance(shape, list) and len(shape) == 3
    if not (
        ok
        and _in_range(shape[0], 1, MAX_CHANNELS)
        and all(_in_range(v, 1, MAX_SIDE) for v in shape[1:])
    ):
        raise _invalid(
            source,
            "input_shape",
            f"expected [C, H, W] with C in 1..{MAX_CHANNELS} and H, W in 1..{MAX_SIDE}, "
            f"got {_short(shape)}",
        )
    return (shape[0], shape[1], shape[2])


def _dense_widths(model: str, shape: tuple[int, int, int]) -> dict[str, int]:
    """The dense group widths of ``model``: written by hand or discovered by tracing.

    Only the widths are needed (``build_on_meta``), and they do not depend on the number
    of classes.
    """
    from pipeline.models import build_on_meta, create_model
    from pipeline.pruning.discovery import model_layout

    dense_model = build_on_meta(
        lambda: create_model(model, num_classes=1, in_channels=shape[0], input_size=shape[1])
    )
    return model_layout(dense_model, shape).dense_widths()


def _check_widths(
    widths: Any, model: str, shape: tuple[int, int, int], source: str
) -> dict[str, int]:
    if not isinstance(widths, dict):
        raise _invalid(
            source, "widths", f"expected an object of group: width, got {_short(widths)}"
        )
    dense = _dense_widths(model, shape)
    unknown = sorted(set(widths) - set(dense))
    if unknown:
        raise _invalid(source, "widths", f"{model} has no channel group(s) {_short(unknown)}")
    missing = sorted(set(dense) - set(widths))
    if missing:
        raise _invalid(source, "widths", f"missing groups {missing} of {model}")
    for group, width in widths.items():
        if not _in_range(width, 1, dense[group]):
            raise _invalid(
                source,
                f"widths.{group}",
                f"expected an integer in 1..{dense[group]} (the dense width), got {_short(width)}",
            )
    return dict(widths)
