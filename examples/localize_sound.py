"""Where in the picture is the sound coming from? The heat map of the paper's Figure 3, drawn over the image.

    python examples/localize_sound.py --video clip.mp4 --model equiav-base-audioset/ -o heat.png
    python examples/localize_sound.py --audio bark.wav --image dog.jpg --model equiav-base-audioset/

Each image patch is projected into the cross-modal space and compared with the sound's embedding (cosine
similarity); bright patches match the sound. The paper's maps come from ``equiav-base`` trained on AudioSet (the
authors' checkpoint after ``equiav convert``). The default, the packaged ``equiav-tiny-digits``, saw one centred
digit per image in training, so on its demo files the map shows the mechanics rather than a meaningful location.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

import equiav
from equiav.audio import load_fbank, waveform_to_fbank
from equiav.image import preprocess_image
from equiav.localize import center_crop, heat_map_figure
from equiav.video import read_video_audio, read_video_frames

DEMO = Path(equiav.__file__).parent / "demo_data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="a video: its soundtrack over its middle frame")
    parser.add_argument("--audio", type=Path, default=DEMO / "audio" / "7_us.wav", help="audio file")
    parser.add_argument("--image", type=Path, default=DEMO / "images" / "7_upright.png", help="image file")
    parser.add_argument("--model", default="equiav-tiny-digits", help="registered name or saved directory")
    parser.add_argument("-o", "--output", type=Path, default=Path("localization.png"), help="PNG to write")
    parser.add_argument("--display-size", type=int, default=384, help="side of the drawn image in pixels")
    return parser.parse_args()


@torch.no_grad()
def main() -> None:
    args = parse_args()
    model = equiav.EquiAVModel.from_pretrained(args.model).eval()
    config = model.config

    # The model's inputs: a normalized filterbank (T, F) and normalized pixels (3, S, S).
    if args.video:
        rate = config.sample_rate
        fbank = waveform_to_fbank(read_video_audio(args.video, rate), rate, config)
        image = read_video_frames(args.video)[0]
        title = f"sound of {args.video.name} over its middle frame"
    else:
        fbank = load_fbank(args.audio, config)
        image = Image.open(args.image)
        title = f"sound of {args.audio.name} in {args.image.name}"
    pixels = preprocess_image(image, config)

    heat = model.localize(fbank[None], pixels[None])[0]  # (rows, cols) of patches, cosine similarities
    row, col = divmod(int(heat.argmax()), heat.shape[1])
    print(f"heat map {tuple(heat.shape)}: cosine {float(heat.min()):.3f} .. {float(heat.max()):.3f}")
    print(f"strongest patch: row {row}, column {col}")

    # Draw it over the crop the model saw, enlarged for viewing.
    shown = center_crop(image, config).resize(
        (args.display_size, args.display_size), Image.Resampling.BICUBIC
    )
    heat_map_figure(shown, heat, title).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
