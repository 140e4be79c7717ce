"""Saving and loading compact models: architecture spec (JSON) + weights (safetensors).

Nothing is ever unpickled: a model is rebuilt from its spec and the weights are loaded
strictly, so a weights file that does not fit its spec is refused with a clear message.
A model directory is written next to the old one and renamed into place, so a crash
never leaves half a model that a later stage would accept.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.atomic import replace_dir
from pipeline.errors import ArtifactError
from pipeline.models import build_on_meta
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
    try:  # safetensors parses a JSON header and raw tensors: it never unpickles
        state = load_file(weights)
        with safe_open(weights, "pt") as handle:
            stored_hash = (handle.metadata() or {}).get("arch_sha256")
    except (SafetensorError, OSError, ValueError) as err:
        _refuse_pickle(weights)
        raise ArtifactError(
            f"{weights}: not a readable safetensors file ({err}); rerun `dvc repro`."
        ) from None
    if stored_hash is not None and stored_hash != spec.sha256:
        raise ArtifactError(
            f"{weights} does not match its architecture spec {directory / SPEC_FILE}: it was "
            f"saved for architecture {stored_hash[:12]}, the spec is {spec.sha256[:12]}; the "
            "two files come from "
            "different runs: rerun `dvc repro` (or `dvc checkout`) to restore a matching pair."
        )
    model = build_uninitialised(spec)
    _check_tensors(weights, directory / SPEC_FILE, model.state_dict(), state)
    load_state_dict_with_versions(model, state)
    return spec, model


def build_uninitialised(spec: ArchSpec) -> nn.Module:
    """``build_model(spec)`` for a model whose every tensor is about to be overwritten (by
    loaded or sliced weights): built on the meta device and allocated on the CPU without
    an initialisation, which costs seconds for the large torchvision models. A builder that
    needs real tensors (RegNet's) is built as usual, and so is a model with a buffer outside
    its state_dict (a non-persistent buffer is never overwritten: it keeps its initial value)."""
    model = build_on_meta(lambda: build_model(spec))
    tensors = itertools.chain(model.parameters(), model.buffers())
    if not any(tensor.is_meta for tensor in tensors):
        return model  # built on the CPU already, initialised
    if any(module._non_persistent_buffers_set for module in model.modules()):
        return build_model(spec)
    return model.to_empty(device="cpu")


def load_state_dict_with_versions(model: nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` (strict) for a state that may lack the per-module
    version metadata ``model.state_dict()`` carries (its ``_metadata``). A safetensors file
    holds tensors only, and some modules refuse to load without their version (torchvision's
    MNASNet raises ``version should be set to 1 or 2 instead of None``; BatchNorm and others
    read it to convert old layouts): each module's version is then taken from the module
    itself, which is what the tensors were saved from. A state that carries its own
    versions (a torch hub file) keeps them."""
    if getattr(state, "_metadata", None) is None:
        state = OrderedDict(state)
        state._metadata = model.state_dict()._metadata  # type: ignore[attr-defined]
    model.load_state_dict(state)


# Leading bytes of the formats that unpickle on load: a raw pickle (protocol 2+) and the
# zip container of torch.save; named in the message when a file is not safetensors.
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


def _refuse_pickle(weights: Path) -> None:
    with weights.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ArtifactError(
            f"{weights} is not safetensors but looks like a pickle or torch.save file; it was "
            "not loaded: pickles are never loaded "
            "(unpickling can run arbitrary code). Save the weights with "
            "safetensors.torch.save_file(model.state_dict(), path) instead."
        )


def tensor_mismatches(expected: dict, found: dict) -> list[tuple[str, list | None, list | None]]:
    """(name, expected shape, found shape) of every tensor that is missing (found None),
    unexpected (expected None) or misshapen: the model's in state_dict order, then extras."""
    mismatched = [
        (name, list(tensor.shape), list(found[name].shape) if name in found else None)
        for name, tensor in expected.items()
        if name not in found or found[name].shape != tensor.shape
    ]
    return mismatched + [
        (name, None, list(found[name].shape)) for name in found if name not in expected
    ]


def _check_tensors(weights: Path, spec_file: Path, expected: dict, found: dict) -> None:
    """Every tensor the spec's model needs, with its shape, and no other."""
    problems = []
    for name, want, have in sorted(tensor_mismatches(expected, found)):
        if have is None:
            problems.append(f"{name}: missing (expected {want})")
        elif want is None:
            problems.append(f"{name}: not part of the architecture")
        else:
            problems.append(f"{name}: expected {want}, found {have}")
    if problems:
        shown = "; ".join(problems[:3]) + (
            f"; ... {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        raise ArtifactError(
            f"{weights} does not match its architecture spec {spec_file} ({len(problems)} "
            f"mismatched tensors: {shown}); the weights belong to another architecture: "
            "rerun `dvc repro` to regenerate both files."
        )
