"""Architecture specs: the identity of a (compact) network as canonical JSON.

A spec names the model, the input shape, the number of classes and the kept width of
every channel group. Its sha256 (over the canonical JSON) is the architecture's hash.
Compact models are always rebuilt from a spec plus a weights file, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
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
        fix = "regenerate it with `dvc repro` (the search stage writes it)"
        if not isinstance(data, dict):
            raise ArtifactError(f"{source}: expected a JSON object; {fix}.")
        missing = {"model", "input_shape", "num_classes", "widths"} - data.keys()
        if missing:
            raise ArtifactError(f"{source}: missing keys {sorted(missing)}; {fix}.")
        shape, widths = data["input_shape"], data["widths"]
        if not (isinstance(shape, list) and len(shape) == 3 and all(_pos_int(v) for v in shape)):
            raise ArtifactError(f"{source}: input_shape must be [C, H, W] positive ints; {fix}.")
        if not _pos_int(data["num_classes"]) or not isinstance(data["model"], str):
            raise ArtifactError(f"{source}: bad model or num_classes; {fix}.")
        if not isinstance(widths, dict) or not all(
            isinstance(k, str) and _pos_int(v) for k, v in widths.items()
        ):
            raise ArtifactError(f"{source}: widths must map group names to positive ints; {fix}.")
        return cls(data["model"], tuple(shape), data["num_classes"], dict(widths))

    def save(self, path: Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ArchSpec:
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: architecture spec not found; run `dvc repro` first.")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(
                f"{path}: not valid JSON ({err}); regenerate it with `dvc repro`."
            ) from None
        return cls.from_dict(data, str(path))


def _pos_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
