"""Saving and loading compact models: architecture spec (JSON) + weights (safetensors).

Nothing is ever unpickled: a model is rebuilt from its spec and the weights are loaded
strictly, so a weights file that does not fit its spec is refused with a clear message.
A model directory is written next to the old one and renamed into place, so a crash
never leaves half a model that a later stage would accept.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.atomic import replace_dir
from pipeline.errors import ArtifactError
from pipeline.pruning.slicing import build_model
from pipeline.pruning.spec import ArchSpec

SPEC_FILE = "arch.json"
WEIGHTS_FILE = "weights.safetensors"


def save_compact(directory: Path, spec: ArchSpec, model: nn.Module) -> None:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        spec.save(staging / SPEC_FILE)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE, metadata={"arch_sha256": spec.sha256})
        replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_compact(directory: Path) -> tuple[ArchSpec, nn.Module]:
    directory = Path(directory)
    spec = ArchSpec.load(directory / SPEC_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file not found; rerun `dvc repro`.")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(
            f"{weights}: not a readable safetensors file ({err}); rerun `dvc repro`."
        ) from None
    model = build_model(spec)
    expected = model.state_dict()
    mismatched = sorted(
        k
        for k in expected.keys() | state.keys()
        if k not in state or k not in expected or state[k].shape != expected[k].shape
    )
    if mismatched:
        raise ArtifactError(
            f"{weights} does not match its architecture spec {directory / SPEC_FILE} "
            f"(first mismatched tensors: {mismatched[:3]}); rerun `dvc repro`."
        )
    model.load_state_dict(state)
    return spec, model
