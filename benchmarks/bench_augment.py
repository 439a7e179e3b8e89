"""Throughput of the parameterized augmentations: augmented training examples per second per CPU core.

One training example needs one audio augmentation (1024 x 128 normalized fbank), one visual augmentation (224 x 224
frame) and 16 audio plus 16 visual parameter vectors for the centroid views. The script times that work for

* ours: ``equiav.training.augment`` (sample, apply, encode; vectors from ``sample_vectors``), and
* the authors' path, re-implemented here from the reference spec (sections 2.3 and 2.4): per-sample torchvision ops on
  the 3-channel spectrogram, Pillow ops on the frame, and per-vector samplers that draw a dummy ``torch.rand`` image
  for every vector, all on the global random generators,

and prints the median time per example after warm-up (wall clock and process CPU time, which on a busy shared
machine leaves out the time spent waiting for a core), examples/s/core and the ratio. With ``--device cuda`` it also
times our batched path on the GPU (apply on a batch already on the device; parameters drawn on the CPU).

    python benchmarks/bench_augment.py --threads 1
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from equiav.training.augment import AudioAugmenter, VisualAugmenter

FRAMES, BINS, IMAGE = 1024, 128, 224


# ---------------------------------------------------------------------------------------------------------------------
# The authors' per-sample path (reference 2.3 / 2.4), written for this comparison


def _authors_mask(spec: torch.Tensor, mask_param: int, axis: int) -> tuple[int, int]:
    """SpecAugment mask along ``axis`` of a (3, T, F) tensor, filled with 0; returns [start, end)."""
    value = torch.rand(1) * mask_param
    min_value = torch.rand(1) * (spec.size(axis) - value)
    start = int(min_value.long())
    end = start + int(value.long())
    if axis == 1:
        spec[:, start:end, :] = 0.0
    else:
        spec[:, :, start:end] = 0.0
    return start, end


def authors_audio(fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    spec = fbank.unsqueeze(0).repeat(3, 1, 1)
    t = torch.zeros(24)
    if random.uniform(0, 1) < 0.8:
        t[0], t[5] = 1.0, 1.0
        t[1], t[2] = _authors_mask(spec, 192, 1)
        t[3], t[4] = _authors_mask(spec, 48, 2)
        shift = np.random.randint(-FRAMES, FRAMES)
        spec = torch.roll(spec, shift, 0)  # the channel axis, as in their code
        t[6] = shift / FRAMES
    i, j, h, w = T.RandomResizedCrop.get_params(spec, scale=(0.08, 1.0), ratio=(1 / 10, 1.5 / 8))
    spec = TF.resized_crop(spec, i, j, h, w, [FRAMES, BINS], antialias=True)
    t[7:12] = torch.tensor([1.0, i / BINS, j / FRAMES, h / BINS, w / FRAMES])
    t[13:17] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    if random.uniform(0, 1) < 0.8:
        spec, t[12:21] = _authors_jitter(spec)
    if random.uniform(0, 1) < 0.5:
        sigma = random.uniform(0.1, 2.0)
        k = 2 * math.ceil(sigma) + 1
        spec = TF.gaussian_blur(spec, [k, k], [sigma, sigma])
        t[21], t[22] = 1.0, sigma
    if random.uniform(0, 1) < 0.5:
        spec = TF.hflip(spec)
        t[23] = 1.0
    return spec, t


def _authors_jitter(img):
    order = torch.randperm(4)
    _, b, c, s, h = T.ColorJitter.get_params((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = (b, c, s, h)
    for op_id in order.tolist():
        img = ops[op_id](img, factors[op_id])
    return img, torch.tensor([1.0, *order.float().tolist(), b - 1, c - 1, s - 1, h])


def authors_visual(frame: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.zeros(18)
    width, height = frame.size
    i, j, h, w = T.RandomResizedCrop.get_params(frame, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    img = TF.resized_crop(frame, i, j, h, w, [IMAGE, IMAGE])
    t[0:5] = torch.tensor([1.0, i / height, j / width, h / height, w / width])
    t[6:10] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    if random.uniform(0, 1) < 0.8:
        img, t[5:14] = _authors_jitter(img)
    if random.uniform(0, 1) < 0.5:
        sigma = random.uniform(0.1, 2.0)
        img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
        t[14], t[15] = 1.0, sigma
    if random.uniform(0, 1) < 0.5:
        img = TF.hflip(img)
        t[16] = 1.0
    if random.uniform(0, 1) < 0.2:
        img = TF.to_grayscale(img, num_output_channels=3)
        t[17] = 1.0
    return TF.to_tensor(img), t


def authors_audio_vector() -> torch.Tensor:
    t = torch.zeros(24)
    lengths = [torch.rand(1) for _ in range(4)]
    if random.uniform(0, 1) < 0.8:
        time_len, freq_len = lengths[0] * 192, lengths[2] * 48
        t_start = int((lengths[1] * (FRAMES - time_len)).long())
        f_start = int((lengths[3] * (BINS - freq_len)).long())
        t[0:5] = torch.tensor(
            [1.0, t_start, t_start + int(time_len.long()), f_start, f_start + int(freq_len.long())]
        )
        t[5], t[6] = 1.0, np.random.randint(-FRAMES, FRAMES) / FRAMES
    dummy = torch.rand(3, FRAMES, BINS)
    i, j, h, w = T.RandomResizedCrop.get_params(dummy, scale=(0.08, 1.0), ratio=(1 / 10, 1.5 / 8))
    t[7:12] = torch.tensor([1.0, i / BINS, j / FRAMES, h / BINS, w / FRAMES])
    t[12:21] = _authors_jitter_vector()
    if random.uniform(0, 1) < 0.5:
        t[21], t[22] = 1.0, random.uniform(0.1, 2.0)
    if random.uniform(0, 1) < 0.5:
        t[23] = 1.0
    return t


def authors_visual_vector() -> torch.Tensor:
    t = torch.zeros(18)
    dummy = torch.rand(3, IMAGE, IMAGE)
    i, j, h, w = T.RandomResizedCrop.get_params(dummy, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    t[0:5] = torch.tensor([1.0, i / IMAGE, j / IMAGE, h / IMAGE, w / IMAGE])
    t[5:14] = _authors_jitter_vector()
    if random.uniform(0, 1) < 0.5:
        t[14], t[15] = 1.0, random.uniform(0.1, 2.0)
    if random.uniform(0, 1) < 0.5:
        t[16] = 1.0
    if random.uniform(0, 1) < 0.2:
        t[17] = 1.0
    return t


def _authors_jitter_vector() -> torch.Tensor:
    if random.uniform(0, 1) < 0.8:
        order = torch.randperm(4)
        _, b, c, s, h = T.ColorJitter.get_params((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
        return torch.tensor([1.0, *order.float().tolist(), b - 1, c - 1, s - 1, h])
    return torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------------------------------
# Timing


def median_seconds(
    work: Callable[[], object], examples: int, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median wall and process-CPU seconds per call of ``work`` over ``repeats`` runs of ``examples`` calls each.

    On a busy shared machine the wall time also counts time spent waiting for a core; the CPU time does not.
    """
    for _ in range(warmup):
        work()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(examples):
            work()
        wall.append((time.perf_counter() - start_wall) / examples)
        cpu.append((time.process_time() - start_cpu) / examples)
    return statistics.median(wall), statistics.median(cpu)


def machine_info(threads: int) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}\n"
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"numpy {np.__version__}, pillow {PIL.__version__}; torch threads {threads}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads = cores used (default 1)"
    )
    parser.add_argument(
        "--views", type=int, default=16, help="centroid view vectors per modality (default 16)"
    )
    parser.add_argument("--examples", type=int, default=20, help="examples per timed repeat (default 20)")
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed repeats; the median is reported (default 7)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed examples first (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="also time our batched path on this device, e.g. cuda"
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="batch size for the --device timing (default 64)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    print(machine_info(args.threads))
    print(
        f"settings: audio {FRAMES}x{BINS}, image {IMAGE}x{IMAGE}, {args.views}+{args.views} view vectors per example, "
        f"{args.repeats} repeats x {args.examples} examples after {args.warmup} warm-up"
    )

    g = torch.Generator().manual_seed(args.seed)
    fbank = torch.randn(FRAMES, BINS, generator=g)
    image = torch.rand(3, IMAGE, IMAGE, generator=g)
    frame = Image.fromarray((image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    audio, visual = AudioAugmenter(), VisualAugmenter()

    def ours_audio():
        params = audio.sample(g)
        return audio.apply(fbank, params), audio.vector(params)

    def ours_visual():
        params = visual.sample(g)
        return visual.apply(image, params), visual.vector(params)

    def ours_views():
        return audio.sample_vectors(args.views, g), visual.sample_vectors(args.views, g)

    def authors_views():
        audio_list = torch.stack([authors_audio_vector() for _ in range(args.views)])
        return audio_list, torch.stack([authors_visual_vector() for _ in range(args.views)])

    parts = {
        "ours": (ours_audio, ours_visual, ours_views),
        "authors": (lambda: authors_audio(fbank), lambda: authors_visual(frame), authors_views),
    }
    totals = {}
    for name, (audio_part, visual_part, views_part) in parts.items():

        def example(audio_part=audio_part, visual_part=visual_part, views_part=views_part):
            audio_part()
            visual_part()
            views_part()

        times = [median_seconds(f, args.examples, args.repeats, args.warmup)
                 for f in (audio_part, visual_part, views_part, example)]  # fmt: skip
        totals[name] = times[-1]
        wall, cpu = times[-1]
        labels = ("audio", "visual", f"{args.views}+{args.views} vectors", "example")
        print(f"{name}: ms per call, wall / CPU: " + " | ".join(
            f"{label} {w * 1e3:.2f} / {c * 1e3:.2f}" for label, (w, c) in zip(labels, times)
        ))  # fmt: skip
        print(
            f"{name}: {1 / (wall * args.threads):.1f} examples/s/core (wall), {1 / (cpu * args.threads):.1f} (CPU)"
        )
    wall_ratio = totals["authors"][0] / totals["ours"][0]
    cpu_ratio = totals["authors"][1] / totals["ours"][1]
    print(f"ratio ours / authors: {wall_ratio:.2f}x (wall), {cpu_ratio:.2f}x (CPU)")
    big, _ = median_seconds(lambda: audio.sample_vectors(10_000, g), 1, args.repeats, 2)
    print(
        f"sample_vectors: 10,000 audio vectors in {big * 1e3:.2f} ms ({10_000 / (big * 1e3):.0f} vectors/ms)"
    )

    if args.device != "cpu":
        time_device(args, audio, visual, g)


def time_device(
    args: argparse.Namespace, audio: AudioAugmenter, visual: VisualAugmenter, g: torch.Generator
) -> None:
    """Our batched path with the batch already on ``args.device``; parameters are drawn and decoded on the CPU."""
    device = torch.device(args.device)
    fbanks = torch.randn(args.batch, FRAMES, BINS, device=device)
    images = torch.rand(args.batch, 3, IMAGE, IMAGE, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def batch():
        a_params, v_params = audio.sample_batch(args.batch, g), visual.sample_batch(args.batch, g)
        outputs = (audio.apply(fbanks, a_params), visual.apply(images, v_params))
        views = (
            audio.sample_vectors(args.batch * args.views, g),
            visual.sample_vectors(args.batch * args.views, g),
        )
        sync()
        return outputs, views

    seconds, _ = median_seconds(batch, 5, args.repeats, 3)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{name}: batch of {args.batch} in {seconds * 1e3:.1f} ms -> {args.batch / seconds:.0f} examples/s")


if __name__ == "__main__":
    main()
