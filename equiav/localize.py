"""``equiav localize``: draw where in an image the sound comes from (paper Figure 3).

The heat map is ``EquiAVModel.localize``: cosine similarity between the audio embedding and each image patch
projected into the cross-modal space, upsampled to the image and blended over it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .audio import audio_input_to_fbanks
from .config import EquiAVConfig
from .console import add_runtime_arguments, run_main, set_threads
from .image import load_image, preprocess_image, resized_size


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along a dark-blue -> red -> yellow ramp."""
    stops = np.array(
        [[0, 0, 80], [40, 0, 160], [200, 20, 60], [255, 140, 0], [255, 255, 80]], dtype=np.float64
    )
    position = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The image with the min-max normalized heat map (rows, cols) upsampled and blended over it."""
    heat = heat.float()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    size = image.size[::-1]
    upsampled = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    colors = Image.fromarray(heat_colors(upsampled.numpy()))
    return Image.blend(image.convert("RGB"), colors, alpha)


def center_crop(image: Image.Image, config: EquiAVConfig) -> Image.Image:
    """The resized, center-cropped image the model sees (resized with ``config.image_interpolation``, as
    ``equiav.image.preprocess_image`` does), so the heat map lines up with it."""
    height, width = resized_size(image.height, image.width, config.image_resize)
    resample = Image.Resampling[config.image_interpolation.upper()]
    resized = image.convert("RGB").resize((width, height), resample)
    left = (resized.width - config.image_size) // 2
    top = (resized.height - config.image_size) // 2
    return resized.crop((left, top, left + config.image_size, top + config.image_size))


@torch.no_grad()
def localize_files(model, audio_path: str | Path, image_path: str | Path) -> tuple[Image.Image, torch.Tensor]:
    """(the cropped image the model saw, heat map (rows, cols)) for an audio file and an image file."""
    fbank = audio_input_to_fbanks(str(audio_path), None, model.config, "crop")
    image = load_image(image_path)
    pixels = preprocess_image(image, model.config)[None]
    heat = model.localize(fbank.to(model.device), pixels.to(model.device))[0].cpu()
    return center_crop(image, model.config), heat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="equiav localize", description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="audio file")
    parser.add_argument("image", help="image file")
    parser.add_argument("-o", "--output", default="localization.png", help="PNG to write")
    parser.add_argument("--model", default="equiav-tiny-digits")
    parser.add_argument("--display-size", type=int, default=384, help="side of the written image in pixels")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the heat map")
    add_runtime_arguments(parser)
    args = parser.parse_args(argv)

    from .model import EquiAVModel

    model = EquiAVModel.from_pretrained(args.model)
    set_threads(args.threads, model.config.embed_dim)
    cropped, heat = localize_files(model, args.audio, args.image)
    shown = cropped.resize((args.display_size, args.display_size), Image.BICUBIC)
    overlay(shown, heat, args.alpha).save(args.output)
    peak = divmod(int(heat.argmax()), heat.shape[1])
    print(f"wrote {args.output}; strongest patch at row {peak[0]}, column {peak[1]} of {tuple(heat.shape)}")


if __name__ == "__main__":
    run_main(main, "equiav localize")
