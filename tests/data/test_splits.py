"""Seeded stratified splits: partition, stratification, determinism and errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.splits import check_fractions, stratified_split
from pipeline.errors import DataError

FRACTIONS = {"val": 0.2, "test": 0.1}


def balanced_labels(num_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(num_classes), per_class)


def assert_partition(parts: dict[str, np.ndarray], size: int) -> None:
    combined = np.concatenate(list(parts.values()))
    assert len(combined) == size
    assert np.array_equal(np.sort(combined), np.arange(size))


def test_splits_are_disjoint_cover_all_and_keep_class_shares():
    labels = np.concatenate([balanced_labels(3, 50), np.full(17, 3)])
    parts = stratified_split(labels, FRACTIONS, seed=0)
    assert list(parts) == ["train", "val", "test"]
    assert_partition(parts, len(labels))
    for label in range(4):
        class_size = int(np.sum(labels == label))
        for split, fraction in FRACTIONS.items():
            count = int(np.sum(labels[parts[split]] == label))
            assert abs(count - class_size * fraction) < 1


def test_same_seed_same_split_and_other_seed_differs():
    labels = balanced_labels(5, 40)
    first = stratified_split(labels, FRACTIONS, seed=7)
    again = stratified_split(labels, FRACTIONS, seed=7)
    other = stratified_split(labels, FRACTIONS, seed=8)
    for split in first:
        assert np.array_equal(first[split], again[split])
    assert not np.array_equal(first["val"], other["val"])


def test_every_class_gets_an_image_in_every_split():
    labels = balanced_labels(4, 3)  # 3 images a class: 0.1 * 3 rounds to 0
    parts = stratified_split(labels, {"val": 0.1, "test": 0.1}, seed=0)
    for split in parts.values():
        assert sorted(set(labels[split])) == [0, 1, 2, 3]


def test_class_with_too_few_images_is_named():
    labels = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(DataError, match=r"Class 'cat' has only 2 image") as error:
        stratified_split(labels, FRACTIONS, seed=0, class_names=["dog", "cat"])
    assert "data.val_fraction" in str(error.value)


@pytest.mark.parametrize("value", [0, 0.0, 1.0, -0.1, float("nan"), True, "0.1"])
def test_out_of_range_fraction_names_the_parameter(value):
    with pytest.raises(DataError, match=r"data\.test_fraction"):
        check_fractions({"val": 0.1, "test": value})


def test_fractions_that_leave_no_train_images_are_rejected():
    with pytest.raises(DataError, match=r"data\.val_fraction \+ data\.test_fraction = 1"):
        check_fractions({"val": 0.6, "test": 0.4})


def test_empty_label_set_is_rejected():
    with pytest.raises(DataError, match="empty"):
        stratified_split(np.array([], dtype=np.int64), FRACTIONS, seed=0)


@settings(max_examples=60, deadline=None)
@given(
    class_sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    val_fraction=st.floats(0.01, 0.45),
    test_fraction=st.floats(0.01, 0.45),
    seed=st.integers(0, 2**32),
)
def test_split_partitions_indices_or_reports_a_small_class(
    class_sizes, val_fraction, test_fraction, seed
):
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    np.random.default_rng(seed).shuffle(labels)
    fractions = {"val": val_fraction, "test": test_fraction}
    try:
        parts = stratified_split(labels, fractions, seed=seed)
    except DataError as error:
        assert "too few for a stratified split" in str(error)
        return
    assert_partition(parts, len(labels))
    for label, class_size in enumerate(class_sizes):
        for split in parts:
            assert np.sum(labels[parts[split]] == label) >= 1
        for split, fraction in fractions.items():
            count = int(np.sum(labels[parts[split]] == label))
            assert abs(count - class_size * fraction) < 1
