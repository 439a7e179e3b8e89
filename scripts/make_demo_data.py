"""Build the demo set packaged in ``equiav/demo_data``: spoken digits and digit images made by this project.

Speech: the digit words synthesized by espeak-ng (Debian package ``espeak-ng``) with several voices, pitches and
speeds, saved as 8 kHz mono 16-bit WAV like the Free Spoken Digit Dataset. Images: the digits drawn in several
fonts, weights and slants, white on black at 28 x 28 like MNIST. Run from the repository root:

    python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw, ImageFont

from equiav.audio import load_audio, resample

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = [
    ("us", "en-us", 45, 160),
    ("gb", "en-gb+f3", 60, 140),
    ("scot", "en-gb-scotland+m4", 35, 175),
]
FONTS = [
    ("sans", "DejaVuSans.ttf", 0),
    ("serif-bold", "DejaVuSerif-Bold.ttf", 8),
    ("mono-slant", "DejaVuSansMono-Oblique.ttf", -8),
]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
SAMPLE_RATE = 8000


def speak(word: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "word.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), word], check=True
        )
        waveform, rate = load_audio(path)
    mono = resample(waveform.mean(dim=0), rate, SAMPLE_RATE).numpy()
    voiced = np.flatnonzero(np.abs(mono) > 0.02 * np.abs(mono).max())
    mono = mono[max(0, voiced[0] - 400) : voiced[-1] + 400]
    return (mono / np.abs(mono).max() * 0.7).astype(np.float32)


def draw(digit: int, font_file: str, angle: float) -> Image.Image:
    canvas = Image.new("L", (112, 112), 0)
    font = ImageFont.truetype(str(FONT_DIR / font_file), 80)
    ImageDraw.Draw(canvas).text((56, 56), str(digit), fill=255, font=font, anchor="mm")
    canvas = canvas.rotate(angle, resample=Image.BICUBIC)
    box = canvas.getbbox()
    glyph = canvas.crop(box)
    scale = 20 / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS
    )
    out = Image.new("L", (28, 28), 0)
    out.paste(glyph, ((28 - glyph.width) // 2, (28 - glyph.height) // 2))
    return out


def main() -> None:
    root = Path(__file__).resolve().parents[1] / "equiav" / "demo_data"
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = {"audio": [], "images": []}
    for digit, word in enumerate(WORDS):
        for name, voice, pitch, speed in VOICES:
            path = f"audio/{digit}_{name}.wav"
            soundfile.write(root / path, speak(word, voice, pitch, speed), SAMPLE_RATE, subtype="PCM_16")
            items["audio"].append({"path": path, "label": digit, "voice": name})
        for name, font_file, angle in FONTS:
            path = f"images/{digit}_{name}.png"
            draw(digit, font_file, angle).save(root / path, optimize=True)
            items["images"].append({"path": path, "label": digit, "style": name})
    (root / "index.json").write_text(json.dumps(items, indent=1) + "\n")
    print(f"wrote {len(items['audio'])} audio clips and {len(items['images'])} images to {root}")


if __name__ == "__main__":
    main()
