"""``equiav localize``: draw where in an image the sound comes from (paper Figure 3).

The heat map is ``EquiAVModel.localize``: cosine similarity between the audio embedding and each image patch
projected into the cross-modal space, upsampled to the image and blended over it. The written picture names the two
files and has a colour bar with the similarity scale; it is drawn with Pillow, so it needs no plotting package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .audio import audio_input_to_fbanks
from .config import EquiAVConfig
from .console import add_runtime_arguments, run_main, set_threads
from .image import load_image, preprocess_image, resized_size
from .retrieval import draw_colorbar, heat_colors, label_font, short_name

MARGIN, TITLE_HEIGHT, BAR_GAP, BAR_SPACE = 12, 44, 16, 130


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The image with the min-max normalized heat map (rows, cols) upsampled and blended over it."""
    heat = heat.float()
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)
    size = image.size[::-1]
    upsampled = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    colors = Image.fromarray(heat_colors(upsampled.numpy()))
    return Image.blend(image.convert("RGB"), colors, alpha)


def heat_map_figure(image: Image.Image, heat: torch.Tensor, title: str, alpha: float = 0.5) -> Image.Image:
    """The heat map blended over ``image`` (pasted at ``image_origin()``, unscaled), a title above it and a colour
    bar on its right with the cosine-similarity scale of the heat map's lowest and highest patch."""
    blended = overlay(image, heat, alpha)
    left, top = image_origin()
    bar_left = left + blended.width + BAR_GAP
    font = label_font(14)
    width = max(bar_left + BAR_SPACE, left + round(font.getlength(title)) + MARGIN)
    canvas = Image.new("RGB", (width, top + blended.height + MARGIN), "white")
    canvas.paste(blended, (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, MARGIN), title, fill="black", font=font)
    scale = (float(heat.min()), float(heat.max()))
    draw_colorbar(
        canvas, (bar_left, top, blended.height), scale, "audio-patch cosine similarity", label_font(12)
    )
    return canvas


def image_origin() -> tuple[int, int]:
    """Where ``heat_map_figure`` puts the blended image's top-left corner (x, y) in pixels."""
    return MARGIN, TITLE_HEIGHT


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
    title = f"sound of {short_name(Path(args.audio).name)} in {short_name(Path(args.image).name)}"
    heat_map_figure(shown, heat, title, args.alpha).save(args.output)
    peak = divmod(int(heat.argmax()), heat.shape[1])
    print(f"wrote {args.output}; strongest patch at row {peak[0]}, column {peak[1]} of {tuple(heat.shape)}")


if __name__ == "__main__":
    run_main(main, "equiav localize")
