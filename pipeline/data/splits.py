"""Seeded, stratified splits of a labelled index set.

Each class is shuffled by one seeded generator and cut by the fractions, so every split
keeps each class's share to within one image, the splits are disjoint and cover all
indices, and the same seed always gives the same split. Every class gets at least one
image in every split, so validation and test scores cover all classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.errors import DataError

TRAIN = "train"


def fraction_parameter(split: str) -> str:
    """The params.yaml key that sets the fraction of ``split``."""
    return f"data.{split}_fraction"


def check_fractions(fractions: Mapping[str, float]) -> None:
    """Each fraction must lie strictly in (0, 1) and together leave images for train."""
    for split, value in fractions.items():
        valid_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not valid_number or not math.isfinite(value) or not 0 < value < 1:
            raise DataError(
                f"{fraction_parameter(split)} = {value!r} would leave the {split} split "
                f"empty or take every image; set it to a number strictly between 0 and 1 "
                f"(for example 0.1)."
            )
    total = sum(fractions.values())
    if total >= 1:
        keys = " + ".join(fraction_parameter(split) for split in fractions)
        raise DataError(
            f"{keys} = {total:g} leaves no images for the train split; lower the fractions "
            f"so they sum to less than 1."
        )


def stratified_split(
    labels: Sequence[int] | np.ndarray,
    fractions: Mapping[str, float],
    *,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Split indices ``0..len(labels)-1`` into ``train`` plus one part per fraction.

    Returns sorted index arrays keyed by split name (``train`` first). Raises DataError
    when a fraction is out of range or a class has too few images to appear in every
    split.
    """
    check_fractions(fractions)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise DataError("There are no images to split; the data set is empty.")
    rng = np.random.default_rng(seed % 2**64)
    parts: dict[str, list[np.ndarray]] = {TRAIN: [], **{split: [] for split in fractions}}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        counts = carve_counts(len(members), fractions)
        _check_class_size(label, len(members), counts, class_names)
        members = rng.permutation(members)
        start = 0
        for split, count in counts.items():
            parts[split].append(members[start : start + count])
            start += count
        parts[TRAIN].append(members[start:])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def carve_counts(class_size: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images of one class for each carved split: rounded share, at least one."""
    return {
        split: max(1, math.floor(class_size * fraction + 0.5))
        for split, fraction in fractions.items()
    }


def _check_class_size(
    label: int,
    class_size: int,
    counts: Mapping[str, int],
    class_names: Sequence[str] | None,
) -> None:
    if class_size - sum(counts.values()) >= 1:
        return
    name = class_names[label] if class_names is not None else str(label)
    splits = ", ".join(f"{count} to {split}" for split, count in counts.items())
    keys = ", ".join(fraction_parameter(split) for split in counts)
    raise DataError(
        f"Class {name!r} has only {class_size} image(s), too few for a stratified split: "
        f"{splits} ({keys}) leaves none for train, and every class needs at least one "
        f"image in each of the {len(counts) + 1} splits. Add images to class {name!r}, "
        f"remove it, or lower {keys}."
    )
