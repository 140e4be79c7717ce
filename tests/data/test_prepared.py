"""PreparedData, channel statistics, normalization and describe()."""

import json

import pytest
import torch

from pipeline.data import PreparedData, Split, channel_stats, describe, normalize


def make_split(count: int, label_cycle: int = 2, channels: int = 3, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, 4, 5), dtype=torch.uint8, generator=generator)
    return Split(images, torch.arange(count, dtype=torch.int64) % label_cycle)


def make_data() -> PreparedData:
    train = make_split(10)
    mean, std = channel_stats(train.images)
    return PreparedData(
        train=train,
        val=make_split(4, seed=1),
        test=make_split(6, seed=2),
        classes=["a", "b"],
        mean=mean,
        std=std,
        dataset="toy",
    )


def test_channel_stats_match_direct_computation():
    images = make_split(12).images
    scaled = images.to(torch.float64) / 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx(scaled.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(scaled.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)


def test_normalize_applies_mean_and_std_per_channel():
    images = make_split(3).images
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    expected = (images.float() / 255 - mean_t) / std_t
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(normalize(images[0], mean, std), expected[0])


def test_normalize_survives_a_constant_channel():
    images = torch.full((2, 1, 3, 3), 7, dtype=torch.uint8)
    assert torch.isfinite(normalize(images, [7 / 255], [0.0])).all()


def test_normalize_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2), [0, 0, 0], [1, 1, 1])


def test_prepared_data_exposes_shape_and_classes():
    data = make_data()
    assert data.input_shape == (3, 4, 5)
    assert data.num_classes == 2
    assert data.split("val") is data.val


def test_prepared_data_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="different image shapes"):
        PreparedData(
            train=make_split(4),
            val=make_split(2, channels=1),
            test=make_split(2),
            classes=["a", "b"],
            mean=[0.0] * 3,
            std=[1.0] * 3,
        )


def test_split_rejects_wrong_dtypes():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        Split(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_describe_is_json_serialisable_and_counts_classes():
    summary = describe(make_data())
    assert json.loads(json.dumps(summary)) == summary
    assert summary["dataset"] == "toy"
    assert summary["input_shape"] == [3, 4, 5]
    assert summary["num_classes"] == 2
    assert summary["sizes"] == {"train": 10, "val": 4, "test": 6}
    assert summary["class_counts"]["train"] == {"a": 5, "b": 5}
    assert summary["class_counts"]["test"] == {"a": 3, "b": 3}
    assert len(summary["mean"]) == len(summary["std"]) == 3
