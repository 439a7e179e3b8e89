"""Build the demo set packaged in ``equiav/demo_data``: spoken digits and digit images made by this project.

Speech: the digit words synthesized by espeak-ng (Debian package ``espeak-ng``) with several voices, pitches and
speeds, saved as 8 kHz mono 16-bit WAV like the Free Spoken Digit Dataset. Images: the digits written with a round pen
along stroke paths defined here, in several "hands" (slant, width, pen size, wobble), white on black at 28 x 28 and
centred like MNIST. Run from the repository root:

    python scripts/make_demo_data.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image, ImageDraw

from equiav.audio import load_audio, resample

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOICES = [
    ("us", "en-us", 45, 160),
    ("gb", "en-gb+f3", 60, 140),
    ("scot", "en-gb-scotland+m4", 35, 175),
]
# Pen paths of each digit in a unit box (x to the right, y down); each path is a list of points, drawn as a smooth
# curve through them. Corners are made by ending one path and starting the next at the same point.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [[(0.5, 0.04), (0.2, 0.2), (0.14, 0.5), (0.22, 0.82), (0.5, 0.96), (0.78, 0.82), (0.86, 0.5), (0.8, 0.2),
         (0.5, 0.04), (0.3, 0.1)]],
    1: [[(0.35, 0.2), (0.55, 0.04)], [(0.55, 0.04), (0.53, 0.5), (0.5, 0.96)]],
    2: [[(0.2, 0.26), (0.32, 0.08), (0.58, 0.04), (0.78, 0.18), (0.74, 0.42), (0.45, 0.7), (0.18, 0.94)],
        [(0.18, 0.94), (0.5, 0.92), (0.86, 0.93)]],
    3: [[(0.2, 0.14), (0.48, 0.04), (0.76, 0.16), (0.72, 0.36), (0.45, 0.48)],
        [(0.45, 0.48), (0.72, 0.56), (0.82, 0.76), (0.62, 0.94), (0.34, 0.95), (0.16, 0.82)]],
    4: [[(0.62, 0.96), (0.62, 0.5), (0.63, 0.04)], [(0.63, 0.04), (0.38, 0.36), (0.14, 0.66)],
        [(0.14, 0.66), (0.5, 0.66), (0.88, 0.65)]],
    5: [[(0.8, 0.06), (0.52, 0.06), (0.3, 0.06)], [(0.3, 0.06), (0.27, 0.26), (0.24, 0.46)],
        [(0.24, 0.46), (0.52, 0.38), (0.78, 0.52), (0.8, 0.76), (0.6, 0.94), (0.32, 0.94), (0.16, 0.82)]],
    6: [[(0.72, 0.05), (0.44, 0.2), (0.24, 0.5), (0.22, 0.76), (0.4, 0.95), (0.66, 0.93), (0.79, 0.72),
         (0.62, 0.52), (0.38, 0.53), (0.24, 0.66)]],
    7: [[(0.14, 0.06), (0.5, 0.06), (0.86, 0.06)], [(0.86, 0.06), (0.6, 0.5), (0.4, 0.96)]],
    8: [[(0.5, 0.48), (0.74, 0.3), (0.7, 0.1), (0.5, 0.03), (0.3, 0.1), (0.26, 0.3), (0.5, 0.48), (0.78, 0.68),
         (0.7, 0.9), (0.5, 0.97), (0.3, 0.9), (0.22, 0.68), (0.5, 0.48)]],
    9: [[(0.76, 0.3), (0.6, 0.07), (0.36, 0.07), (0.22, 0.27), (0.34, 0.46), (0.6, 0.45), (0.76, 0.3)],
        [(0.76, 0.3), (0.72, 0.62), (0.62, 0.96)]],
}  # fmt: skip
# (name, slant (x shift per unit of height), width factor, pen width in pixels of the 112-pixel canvas, wobble, seed)
HANDS = [
    ("upright", 0.05, 1.0, 11, 0.015, 1),
    ("slanted", 0.3, 0.85, 9, 0.025, 2),
    ("broad", -0.05, 0.9, 14, 0.02, 3),
]
SAMPLE_RATE = 8000


def speak(word: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    """``word`` spoken by espeak-ng with ``voice`` at ``pitch`` (0-99) and ``speed`` (words per minute)."""
    return synthesize(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", "{wav}", word])


def synthesize(command: list[str]) -> np.ndarray:
    """Run a text-to-speech ``command`` that writes a WAV file where its ``"{wav}"`` argument says; return the speech
    as FSDD stores it: 8 kHz mono, cut to its voiced part with 50 ms on each side, peak 0.7."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "word.wav"
        subprocess.run([str(path) if part == "{wav}" else part for part in command], check=True)
        waveform, rate = load_audio(path)
    mono = resample(waveform.mean(dim=0), rate, SAMPLE_RATE).numpy()
    voiced = np.flatnonzero(np.abs(mono) > 0.02 * np.abs(mono).max())
    mono = mono[max(0, voiced[0] - 400) : voiced[-1] + 400]
    return (mono / np.abs(mono).max() * 0.7).astype(np.float32)


def smooth_path(points: list[tuple[float, float]], samples: int = 12) -> list[tuple[float, float]]:
    """A Catmull-Rom curve through ``points`` (end points repeated), ``samples`` points per segment."""
    padded = [points[0], *points, points[-1]]
    curve = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = (np.asarray(padded[j]) for j in range(i - 1, i + 3))
        for t in np.linspace(0.0, 1.0, samples, endpoint=False):
            curve.append(
                tuple(
                    0.5
                    * (
                        2 * p1
                        + (p2 - p0) * t
                        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
                    )
                )
            )
    curve.append(tuple(padded[-2]))
    return curve


def draw(digit: int, slant: float, width: float, pen: int, wobble: float, seed: int) -> Image.Image:
    """The digit written along its pen paths, then framed as MNIST frames its digits: fitted into a 20 x 20 box and
    placed in 28 x 28 so that its centre of mass is the image centre."""
    rng = np.random.default_rng(seed * 10 + digit)
    canvas = Image.new("L", (112, 112), 0)
    pen_draw = ImageDraw.Draw(canvas)
    for path in STROKES[digit]:
        points = [(x + wobble * rng.standard_normal(), y + wobble * rng.standard_normal()) for x, y in path]
        pixels = [
            (16 + 80 * (0.5 + (x - 0.5) * width + slant * (0.5 - y)), 16 + 80 * y)
            for x, y in smooth_path(points)
        ]
        pen_draw.line(pixels, fill=255, width=pen, joint="curve")
        for x, y in (pixels[0], pixels[-1]):
            pen_draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=255)
    glyph = canvas.crop(canvas.getbbox())
    scale = 20 / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS
    )
    mass = np.asarray(glyph, dtype=np.float64)
    rows, cols = np.indices(mass.shape)
    centre_row, centre_col = (rows * mass).sum() / mass.sum(), (cols * mass).sum() / mass.sum()
    left = min(max(round(14 - centre_col), 0), 28 - glyph.width)
    top = min(max(round(14 - centre_row), 0), 28 - glyph.height)
    out = Image.new("L", (28, 28), 0)
    out.paste(glyph, (left, top))
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
        for name, *hand in HANDS:
            path = f"images/{digit}_{name}.png"
            draw(digit, *hand).save(root / path, optimize=True)
            items["images"].append({"path": path, "label": digit, "style": name})
    (root / "index.json").write_text(json.dumps(items, indent=1) + "\n")
    print(f"wrote {len(items['audio'])} audio clips and {len(items['images'])} images to {root}")


if __name__ == "__main__":
    main()
