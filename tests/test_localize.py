"""``equiav localize``'s picture is the crop the model saw."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from equiav.config import EquiAVConfig
from equiav.image import preprocess_image
from equiav.localize import center_crop


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_center_crop_resizes_with_the_configured_interpolation(interpolation: str) -> None:
    config = EquiAVConfig.from_preset("equiav-tiny", image_interpolation=interpolation, image_resize=72)
    pixels = np.random.default_rng(0).integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    cropped = center_crop(image, config)
    assert cropped.size == (config.image_size, config.image_size)
    as_is = config.replace(image_resize=config.image_size)  # normalizes the crop without resizing it again
    torch.testing.assert_close(
        preprocess_image(cropped, as_is), preprocess_image(image, config), rtol=0, atol=0
    )
