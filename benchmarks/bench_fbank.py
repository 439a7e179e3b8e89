"""Throughput of the Kaldi filterbank: one batched ``kaldi_fbank`` call against per-clip loops.

Usage: python benchmarks/bench_fbank.py [--clips 32] [--seconds 10] [--repeats 7] [--threads N] [--device cpu]

Variants, timed round-robin on the same clips:

- ``batched``: ``equiav.audio.kaldi_fbank`` on the whole (clips, samples) batch;
- ``per-clip loop``: the same function called once per clip;
- ``authors' per-clip path``: what the authors' data loader runs for every clip, torchaudio's ``kaldi.fbank`` (the
  steps of torchaudio 2.11 re-implemented in plain torch below, since torchaudio's extension only loads beside its
  own torch release): strided frames, a log-energy column, replicate-padded pre-emphasis, window, zero-padding,
  ``rfft(...).abs().pow(2)``, a mel bank rebuilt on every call and a dense product;
- ``torchaudio per-clip``: torchaudio itself, when it imports;
- ``batched at REV`` (with ``--before REV``): the batched call of ``equiav`` as it was at git revision REV, for the
  before/after ratio of a change.

Every variant's output is checked against the batched one (max abs difference of the log-mel values, limit 1e-3)
before timing. The script prints the machine, the settings, the median times and the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import (
    add_common_arguments,
    apply_threads,
    package_at_revision,
    print_header,
    ratio_line,
    synchronizer,
    time_round_robin,
    use_repository_package,
)

use_repository_package()

from equiav import audio  # noqa: E402

MEL_BINS = 128
MAX_ABS_DIFFERENCE = 1e-3


def authors_fbank(clip: torch.Tensor, sample_rate: int, num_mel_bins: int = MEL_BINS) -> torch.Tensor:
    """torchaudio's Kaldi fbank with the authors' settings, step by step, for one (samples,) clip."""
    window_size = int(sample_rate * 0.025)
    hop = int(sample_rate * 0.010)
    fft_size = 1 << (window_size - 1).bit_length()
    frames = clip.as_strided((1 + (clip.numel() - window_size) // hop, window_size), (hop, 1))
    frames = frames - frames.mean(dim=1, keepdim=True)
    _unused_log_energy = (
        frames.pow(2).sum(dim=1).clamp_min(torch.finfo(clip.dtype).eps).log()
    )  # as torchaudio
    shifted = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - 0.97 * shifted[:, :-1]
    frames = frames * torch.hann_window(window_size, periodic=False, dtype=clip.dtype)
    frames = F.pad(frames.unsqueeze(0), (0, fft_size - window_size), mode="constant", value=0).squeeze(0)
    power = torch.fft.rfft(frames).abs().pow(2.0)
    bank = _rebuilt_mel_bank(num_mel_bins, fft_size, sample_rate)
    mel = torch.mm(power, F.pad(bank, (0, 1), mode="constant", value=0).T)
    return mel.clamp_min(torch.finfo(clip.dtype).eps).log()


def _rebuilt_mel_bank(num_mel_bins: int, fft_size: int, sample_rate: int) -> torch.Tensor:
    """The HTK mel triangles as (num_mel_bins, fft_size // 2), rebuilt on every call as torchaudio does."""

    def mel(freq: torch.Tensor | float) -> torch.Tensor | float:
        if isinstance(freq, torch.Tensor):
            return 1127.0 * (1.0 + freq / 700.0).log()
        return 1127.0 * math.log(1.0 + freq / 700.0)

    low, high = mel(20.0), mel(0.5 * sample_rate)
    step = (high - low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins).unsqueeze(1)
    left, center, right = low + index * step, low + (index + 1.0) * step, low + (index + 2.0) * step
    bins = mel((sample_rate / fft_size) * torch.arange(fft_size // 2)).unsqueeze(0)
    up, down = (bins - left) / (center - left), (right - bins) / (right - center)
    return torch.max(torch.zeros(1), torch.min(up, down))


def torchaudio_fbank() -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    try:
        from torchaudio.compliance import kaldi
    except Exception:  # noqa: BLE001 - any import failure (missing, or built for another torch) means "skip"
        return None

    def fbank(clip: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return kaldi.fbank(
            clip[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
            num_mel_bins=MEL_BINS, dither=0.0, frame_shift=10,
        )  # fmt: skip

    return fbank


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument(
        "--block-rows", type=int, default=None, help="override the CPU row-block size (tuning)"
    )
    parser.add_argument("--before", metavar="REV", default=None, help="also time equiav at this git revision")
    add_common_arguments(parser, repeats=7, warmup=2)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.block_rows:
        audio._CPU_BLOCK_ROWS = args.block_rows
    device = torch.device(args.device)
    samples = int(args.seconds * args.sample_rate)
    clips = (0.1 * torch.randn(args.clips, samples, generator=torch.Generator().manual_seed(0))).to(device)
    print_header(
        "Kaldi filterbank",
        device,
        {
            "clips": f"{args.clips} x {args.seconds:g} s at {args.sample_rate} Hz",
            "mel bins": MEL_BINS,
            "CPU block rows": audio._CPU_BLOCK_ROWS,
            "repeats": f"median of {args.repeats} after {args.warmup} warm-up rounds",
        },
    )

    variants: dict[str, Callable[[], object]] = {
        "batched": lambda: audio.kaldi_fbank(clips, args.sample_rate),
        "per-clip loop": lambda: [audio.kaldi_fbank(clip, args.sample_rate) for clip in clips],
        "authors' per-clip path": lambda: [authors_fbank(clip, args.sample_rate) for clip in clips],
    }
    if args.before:
        before = importlib.import_module(package_at_revision(args.before).__name__ + ".audio")
        variants[f"batched at {args.before}"] = lambda: before.kaldi_fbank(clips, args.sample_rate)
    reference = torchaudio_fbank()
    if reference is None:
        print("torchaudio: not importable, skipped")
    else:
        variants["torchaudio per-clip"] = lambda: [reference(clip, args.sample_rate) for clip in clips]

    batched = audio.kaldi_fbank(clips, args.sample_rate)
    for name, run in variants.items():
        difference = (torch.stack(list(run())) - batched).abs().max().item() if name != "batched" else 0.0
        print(f"max |{name} - batched| = {difference:.2e} (limit {MAX_ABS_DIFFERENCE:g})")
        if not difference <= MAX_ABS_DIFFERENCE:
            raise SystemExit(
                f"{name} does not compute the batched filterbank; timing would compare different work"
            )

    timings = time_round_robin(variants, args.repeats, args.warmup, synchronizer(device))
    for name, timing in timings.items():
        print(f"{name:>24}: {timing.describe(args.clips, 'clips')}")
    for name, timing in timings.items():
        if name == "batched":
            continue
        goal = 2.0 if name == "per-clip loop" else None
        what = (
            f"after over before ({args.before})" if name.startswith("batched at") else f"batched over {name}"
        )
        print(ratio_line(what, timing, timings["batched"], goal))


if __name__ == "__main__":
    main()
