"""Unseen synthetic voices against unseen handwriting: a check of how far a digits model carries beyond its speakers.

Synthesizes the ten digit words with ten espeak-ng voices that the demo set does not use and with flite's four
English voices (140 clips, 8 kHz like FSDD; Debian packages ``espeak-ng`` and ``flite``), then scores class-level
zero-shot retrieval of each clip against the held-out MNIST images of AV-digits (chance 0.10). MODEL_CARD.md reports
it for the packaged model. Run from the repository root:

    python scripts/voice_check.py --model equiav-tiny-digits --data ../shared/data
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import soundfile
import torch
import torch.nn.functional as F
from make_demo_data import SAMPLE_RATE, WORDS, synthesize

from equiav import EquiAVModel
from equiav.audio import load_fbank
from equiav.training.datasets.avdigits import avdigits_eval_set

ESPEAK_VOICES = [
    ("espeak-us-f2", "en-us+f2", 55, 150),
    ("espeak-caribbean", "en-029", 50, 165),
    ("espeak-rp-m3", "en-gb-x-rp+m3", 40, 150),
    ("espeak-nyc", "en-us-nyc", 50, 170),
    ("espeak-lancaster-f4", "en-gb-x-gbclan+f4", 65, 155),
    ("espeak-midlands-m2", "en-gb-x-gbcwmd+m2", 45, 160),
    ("espeak-us-m7", "en-us+m7", 30, 145),
    ("espeak-gb-f5", "en-gb+f5", 70, 165),
    ("espeak-us-klatt", "en-us+klatt", 50, 155),
    ("espeak-scotland-f1", "en-gb-scotland+f1", 60, 150),
]
FLITE_VOICES = ["awb", "kal16", "rms", "slt"]


def clip_commands() -> list[tuple[str, int, str, list[str]]]:
    """(file name, digit, voice, text-to-speech command) of the 140 clips."""
    clips = []
    for digit, word in enumerate(WORDS):
        for name, voice, pitch, speed in ESPEAK_VOICES:
            command = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", "{wav}", word]
            clips.append((f"{digit}_{name}.wav", digit, name, command))
        for voice in FLITE_VOICES:
            command = ["flite", "-voice", voice, "-t", word, "-o", "{wav}"]
            clips.append((f"{digit}_flite-{voice}.wav", digit, f"flite-{voice}", command))
    return clips


def write_clips(folder: Path) -> list[tuple[Path, int, str]]:
    """The clips in ``folder`` (those already there are kept); (path, digit, voice) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, digit, voice, command in clip_commands():
        path = folder / name
        if not path.exists():
            soundfile.write(path, synthesize(command), SAMPLE_RATE, subtype="PCM_16")
        written.append((path, digit, voice))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="equiav-tiny-digits", help="model name or path")
    parser.add_argument("--data", default="../shared/data", help="AV-digits folder (FSDD + MNIST)")
    parser.add_argument(
        "--clips", type=Path, default=None, help="keep the synthesized clips here (default: temporary)"
    )
    args = parser.parse_args()
    model = EquiAVModel.from_pretrained(args.model).eval()
    _, images, _, image_labels = avdigits_eval_set(args.data, model.config, "val")
    with tempfile.TemporaryDirectory() as tmp:
        clips = write_clips(args.clips or Path(tmp))
        fbanks = torch.stack([load_fbank(path, model.config) for path, _, _ in clips])
    labels = torch.tensor([digit for _, digit, _ in clips])
    with torch.no_grad():
        audio = F.normalize(model.encode_audio(fbanks).float(), dim=-1)
        image = F.normalize(model.encode_image(images).float(), dim=-1)
    hits = image_labels[(audio @ image.T).argmax(dim=1)] == labels
    voices = [voice for _, _, voice in clips]
    for voice in dict.fromkeys(voices):
        mine = torch.tensor([v == voice for v in voices])
        print(f"{voice:22s} R@1 {hits[mine].float().mean():.2f}")
    espeak = torch.tensor([v.startswith("espeak") for v in voices])
    print(f"\nespeak-ng, 100 clips: R@1 {hits[espeak].float().mean():.3f}")
    print(f"flite, 40 clips: R@1 {hits[~espeak].float().mean():.3f}")
    print(
        f"all {len(clips)} clips against {len(image_labels)} held-out images: R@1 {hits.float().mean():.3f}"
    )


if __name__ == "__main__":
    main()
