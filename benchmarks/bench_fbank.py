"""Throughput of the Kaldi filterbank: one batched call vs a per-clip loop of the same function vs torchaudio.

Usage: python benchmarks/bench_fbank.py [--clips 32] [--seconds 10] [--repeats 7] [--threads N] [--device cpu]

Prints the machine, the settings, the median wall time of each variant over ``--repeats`` runs (after
``--warmup`` untimed runs) and clips per second, then the speed-up of batching over the loop.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from common import cpu_name, load_average

from equiav import audio


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        timed()
    return statistics.median(timed() for _ in range(repeats))


def torchaudio_fbank() -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    try:
        from torchaudio.compliance import kaldi
    except Exception:  # noqa: BLE001 - any import failure (missing, or built for another torch) means "skip"
        return None

    def fbank(clip: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return kaldi.fbank(
            clip[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_shift=10,
        )  # fmt: skip

    return fbank


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--block-rows", type=int, default=None, help="override the CPU row-block size (tuning)"
    )
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.block_rows:
        audio._CPU_BLOCK_ROWS = args.block_rows
    device = torch.device(args.device)
    samples = int(args.seconds * args.sample_rate)
    clips = 0.1 * torch.randn(args.clips, samples, generator=torch.Generator().manual_seed(0))
    clips = clips.to(device)

    print(f"machine: {cpu_name()}, {torch.get_num_threads()} torch threads, {platform.python_version()}")
    print(load_average())
    print(f"torch {torch.__version__}, device {device}" + (
        f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    ))  # fmt: skip
    print(
        f"settings: {args.clips} clips x {args.seconds:g} s at {args.sample_rate} Hz, 128 mel bins, "
        f"CPU block {audio._CPU_BLOCK_ROWS} rows, median of {args.repeats} after {args.warmup} warm-up"
    )

    variants: dict[str, Callable[[], object]] = {
        "batched kaldi_fbank": lambda: audio.kaldi_fbank(clips, args.sample_rate),
        "per-clip loop": lambda: [audio.kaldi_fbank(clip, args.sample_rate) for clip in clips],
    }
    reference = torchaudio_fbank()
    if reference is None:
        print("torchaudio: not importable, skipped")
    else:
        variants["torchaudio per-clip"] = lambda: [reference(clip, args.sample_rate) for clip in clips]

    seconds = {}
    for name, run in variants.items():
        seconds[name] = median_seconds(run, device, args.repeats, args.warmup)
        print(f"{name:>22}: {seconds[name] * 1e3:9.2f} ms  {args.clips / seconds[name]:9.1f} clips/s")
    batched = seconds["batched kaldi_fbank"]
    for name, value in seconds.items():
        if name != "batched kaldi_fbank":
            print(f"batched speed-up over {name}: {value / batched:.2f}x")


if __name__ == "__main__":
    main()
