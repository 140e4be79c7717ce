"""Image geometry (pipeline.data.transforms): the evaluation fit, torchvision's
random-resized-crop box, and the batched crop on the device; and their parameters."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import parse_config
from pipeline.data.transforms import RATIO, crop_box, fit_image, random_resized_crop_batch
from pipeline.errors import ConfigError


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(4, 400),
    width=st.integers(4, 400),
    low=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**31),
)
def test_a_crop_box_lies_in_the_image_with_torchvisions_area_and_aspect(height, width, low, seed):
    scale = (low, 1.0)
    top, left, crop_h, crop_w = crop_box(height, width, scale, torch.Generator().manual_seed(seed))
    assert top >= 0 and left >= 0 and top + crop_h <= height and left + crop_w <= width
    assert crop_h >= 1 and crop_w >= 1
    # rounding to whole pixels moves the area by at most a pixel per side
    assert crop_h * crop_w <= height * width
    if min(crop_h, crop_w) >= 20:  # aspect within torchvision's range, up to a pixel's rounding
        assert RATIO[0] * 0.9 <= crop_w / crop_h <= RATIO[1] * 1.1 or (crop_h, crop_w) == (
            height,
            width,
        )


def test_the_evaluation_fit_resizes_the_shorter_side_then_center_crops():
    stripes = np.zeros((300, 400, 3), dtype=np.uint8)
    stripes[:, 200:] = 255  # the right half white
    fitted = fit_image(Image.fromarray(stripes), 224, 0.875)
    assert fitted.size == (224, 224)
    pixels = np.asarray(fitted)
    # shorter side 300 -> 256, width 400 -> 341; the crop keeps the middle 224 columns
    assert pixels[:, :100].max() < 10 and pixels[:, 124:].min() > 245
    assert fit_image(Image.fromarray(stripes), 16, None).size == (16, 16)  # squashed
    assert fit_image(Image.fromarray(stripes), None, None).size == (400, 300)


def test_the_batched_crop_keeps_shape_and_maps_a_flat_image_to_itself():
    images = torch.full((5, 3, 16, 16), 77, dtype=torch.uint8)
    images[2] = 200
    out = random_resized_crop_batch(images, (0.3, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, images)  # every crop of a constant image is that constant
    ramp = torch.arange(16, dtype=torch.uint8).repeat(1, 3, 16, 1) * 15
    zoomed = random_resized_crop_batch(ramp, (0.1, 0.2), torch.Generator().manual_seed(1))
    assert not torch.equal(zoomed, ramp)  # a crop of a tenth of the area is a zoom
    assert int(zoomed.max()) - int(zoomed.min()) < int(ramp.max()) - int(ramp.min())


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"random_resized_crop": [0.08, 1.0]}, "set train.augment.crop_padding: 0"),
        ({"random_resized_crop": [0.5, 0.2], "crop_padding": 0}, "0 < min <= max <= 1"),
    ],
)
def test_random_resized_crop_parameters_are_checked(augment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"train": {"augment": augment}})


def test_crop_ratio_is_for_image_folders_with_an_input_size():
    with pytest.raises(ConfigError, match="data.crop_ratio applies to imagefolder"):
        parse_config({"data": {"crop_ratio": 0.875}})  # digits
    data = parse_config({"data": {"dataset": "imagefolder", "crop_ratio": 0.875}}).data
    assert math.isclose(data.crop_ratio, 0.875)
