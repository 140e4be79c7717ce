"""Image geometry shared by prepared data and loaders: fitting an image to the network's
input size, and the random-resized crop of torchvision's classification references.

``fit_image`` is the evaluation transform (and how in-memory data are stored): with no
``crop_ratio`` it squashes the image to size x size; with one (ImageNet's 0.875) it resizes
the shorter side to ``round(size / crop_ratio)`` and takes the center size x size crop.

``crop_box`` samples a random-resized-crop box exactly as
``torchvision.transforms.RandomResizedCrop.get_params`` does (area fraction in ``scale``,
log-uniform aspect ratio in ``ratio``, ten tries, then a center crop of clamped ratio).
Sharded data crop each full-resolution image with it in the loader's workers
(``random_resized_crop``); in-memory data, whose images are already size x size, crop a
whole batch on the device (``random_resized_crop_batch``).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

RATIO = (3 / 4, 4 / 3)  # aspect ratios of the random-resized crop, as torchvision's
_RESAMPLE = Image.Resampling.BILINEAR  # widens with the scale factor: antialiased


def fit_image(image: Image.Image, size: int | None, crop_ratio: float | None) -> Image.Image:
    """``image`` at the network's input size (``size`` None: unchanged)."""
    if size is None:
        return image
    if crop_ratio is None:
        return image.resize((size, size), _RESAMPLE)
    width, height = image.size
    short = round(size / crop_ratio)
    scale = short / min(width, height)
    resized = image.resize(
        (max(size, round(width * scale)), max(size, round(height * scale))), _RESAMPLE
    )
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def crop_box(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(top, left, crop_height, crop_width)`` (torchvision's)."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (1,), generator=generator))
            return top, left, crop_h, crop_w
    in_ratio = width / height  # fallback: the whole image, aspect ratio clamped
    if in_ratio < RATIO[0]:
        crop_w, crop_h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        crop_h, crop_w = height, round(height * RATIO[1])
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], generator: torch.Generator
) -> Image.Image:
    """A random-resized crop of ``image``, resized to size x size."""
    top, left, crop_h, crop_w = crop_box(image.height, image.width, scale, generator)
    return image.resize((size, size), _RESAMPLE, box=(left, top, left + crop_w, top + crop_h))


def random_resized_crop_batch(
    images: torch.Tensor, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """Random-resized crops of uint8 N x C x H x W images, resized back to H x W, on their
    device in one ``roi_align`` (bilinear, 2 x 2 samples a bin)."""
    from torchvision.ops import roi_align  # torchvision's import costs seconds: only here

    count, _, height, width = images.shape
    if count == 0:
        return images
    boxes = torch.tensor(
        [crop_box(height, width, scale, generator) for _ in range(count)], dtype=torch.float32
    )
    top, left, crop_h, crop_w = boxes.unbind(1)
    rois = torch.stack(
        [torch.arange(count, dtype=torch.float32), left, top, left + crop_w, top + crop_h], 1
    ).to(images.device)
    cropped = roi_align(
        images.float(), rois, (height, width), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    return cropped.round_().clamp_(0, 255).to(torch.uint8)
