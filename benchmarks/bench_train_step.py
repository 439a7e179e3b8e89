"""Time one EquiAV training step for several numbers of centroid views S, and with activation checkpointing on/off.

    python benchmarks/bench_train_step.py                       # equiav-base, batch 2 on CPU (64 on GPU)
    python benchmarks/bench_train_step.py --views 1 16 --repeats 5 --batch-size 4

A step is forward + ``EquiAVLoss`` + backward + AdamW update on random inputs (the data pipeline is not timed).
The S settings are timed round-robin (S=1, 4, 8, 16, S=1, 4, ...) so that a drifting machine load affects them
alike; the ratio S=16 / S=1 compares medians from the same run. On CUDA the step runs under bf16 autocast and the
report adds samples/s, achieved TFLOP/s and model FLOPs utilisation (MFU).

FLOP count (forward, multiply-add = 2 FLOPs; B batch, S views, D width, L depth, r MLP ratio, p patch size):

* tower, per input of N tokens: 2 N c p^2 D (patch embedding; c = 1 for audio, 3 for images)
  + L [N D^2 (8 + 4 r) + 4 N^2 D] (qkv 6ND^2, scores and mixing 4N^2 D, output projection 2ND^2, MLP 4rND^2);
  each tower runs on 2B inputs (original and augmented);
* transformation predictor, per input with Q = S + 1 queries (the S views and the intra vector t), aug width A,
  vector size d, attention width I = heads x head dim:
  2 Q (d A + 2 A^2) (augmentation encoder) + 2 Q A I (queries) + 4 N D I (keys, values) + 4 Q N I (attention)
  + 2 Q I D (output projection) + 4 r Q D^2 (MLP);
* projection heads D -> H -> H -> P: 2 (D H + H^2 + H P) per vector, three vectors per input and modality
  (inter centroid, intra prediction, augmented input).

A training step costs 3x the forward (the backward pass is twice the forward); recomputation under activation
checkpointing is not counted (model FLOPs, not hardware FLOPs). ``tests/test_pretrain.py`` checks this count
against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from equiav import EquiAVConfig, EquiAVModel  # noqa: E402
from equiav.training.augment import AudioAugmenter, VisualAugmenter  # noqa: E402
from equiav.training.losses import EquiAVLoss  # noqa: E402

# Dense bf16 tensor-core peak in TFLOP/s, by a substring of the device name (first match wins).
PEAK_BF16_TFLOPS = (("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.0),
                    ("A10G", 125.0), ("V100", 125.0))  # fmt: skip


def tower_flops(tokens: int, cfg: EquiAVConfig, in_chans: int) -> float:
    d, r = cfg.embed_dim, cfg.mlp_ratio
    patch = 2 * tokens * in_chans * cfg.patch_size**2 * d
    return patch + cfg.depth * (tokens * d * d * (8 + 4 * r) + 4 * tokens**2 * d)


def predictor_flops(tokens: int, queries: int, vector_dim: int, cfg: EquiAVConfig) -> float:
    d, a, r = cfg.embed_dim, cfg.aug_embed_dim, cfg.cross_attn_mlp_ratio
    inner = cfg.cross_attn_heads * cfg.cross_attn_head_dim
    encoder = 2 * queries * (vector_dim * a + 2 * a * a)
    attention = 2 * queries * a * inner + 4 * tokens * d * inner + 4 * queries * tokens * inner
    return encoder + attention + 2 * queries * inner * d + 4 * r * queries * d * d


def head_flops(cfg: EquiAVConfig, out_dim: int) -> float:
    d, h = cfg.embed_dim, cfg.proj_hidden_dim
    return 2 * (d * h + h * h + h * out_dim)


def forward_flops(cfg: EquiAVConfig, batch: int, views: int) -> float:
    """Analytic forward FLOPs of one pretraining forward pass (see the module docstring)."""
    total = 0.0
    for tokens, chans, vector_dim in (
        (cfg.num_audio_patches, 1, cfg.audio_aug_dim),
        (cfg.num_image_patches, cfg.in_chans, cfg.visual_aug_dim),
    ):
        total += 2 * batch * tower_flops(tokens, cfg, chans)
        total += batch * predictor_flops(tokens, views + 1, vector_dim, cfg)
        total += batch * (head_flops(cfg, cfg.inter_proj_dim) + 2 * head_flops(cfg, cfg.intra_proj_dim))
    return total


def make_inputs(cfg: EquiAVConfig, batch: int, views: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    audio_aug, visual_aug = AudioAugmenter.for_config(cfg), VisualAugmenter.for_config(cfg)
    inputs = {
        "audio": torch.randn(batch, cfg.target_length, cfg.num_mel_bins, generator=generator),
        "image": torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=generator),
        "audio_aug": torch.randn(batch, cfg.target_length, cfg.num_mel_bins, generator=generator),
        "image_aug": torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=generator),
        "t_audio": audio_aug.sample_vectors(batch, generator),
        "t_image": visual_aug.sample_vectors(batch, generator),
        "t_audio_views": audio_aug.sample_vectors(batch * views, generator).view(batch, views, -1),
        "t_image_views": visual_aug.sample_vectors(batch * views, generator).view(batch, views, -1),
    }
    return {k: v.to(device) for k, v in inputs.items()}


class StepRunner:
    """A model, loss and optimizer that run timed training steps."""

    def __init__(
        self,
        cfg: EquiAVConfig,
        device: torch.device,
        bf16: bool,
        checkpointing: bool,
        compile_backend: str | None = None,
    ) -> None:
        torch.manual_seed(0)
        self.model = EquiAVModel(cfg).to(device).train()
        self.model.set_grad_checkpointing(checkpointing)
        self.forward = torch.compile(self.model, backend=compile_backend) if compile_backend else self.model
        self.loss = EquiAVLoss()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-5
        )
        self.device, self.bf16 = device, bf16

    def forward_backward(self, inputs: dict[str, torch.Tensor]) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            losses = self.loss(self.forward(**inputs))
        losses.total.backward()

    def step(self, inputs: dict[str, torch.Tensor]) -> float:
        """Seconds of one synchronized training step."""
        self._sync()
        start = time.perf_counter()
        self.forward_backward(inputs)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def time_views(
    args: argparse.Namespace, cfg: EquiAVConfig, device: torch.device, bf16: bool
) -> dict[int, float]:
    """Median step seconds per S, timed round-robin after ``args.warmup`` untimed steps each."""
    runner = StepRunner(cfg, device, bf16, checkpointing=False)
    inputs = {s: make_inputs(cfg, args.batch_size, s, device) for s in args.views}
    for _ in range(args.warmup):
        for s in args.views:
            runner.step(inputs[s])
    times: dict[int, list[float]] = {s: [] for s in args.views}
    for _ in range(args.repeats):
        for s in args.views:
            times[s].append(runner.step(inputs[s]))
    return {s: statistics.median(t) for s, t in times.items()}


def time_compiled(
    args: argparse.Namespace, cfg: EquiAVConfig, device: torch.device, bf16: bool, views: int
) -> dict[str, float]:
    """Median step seconds of the eager model and of the same model through ``torch.compile``, round-robin (the
    compiled model's first steps, which compile it, are among the warm-up steps)."""
    runners = {
        "eager": StepRunner(cfg, device, bf16, checkpointing=False),
        "compiled": StepRunner(cfg, device, bf16, checkpointing=False, compile_backend=args.compile_backend),
    }
    inputs = make_inputs(cfg, args.batch_size, views, device)
    for _ in range(max(args.warmup, 2)):
        for runner in runners.values():
            runner.step(inputs)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            times[name].append(runner.step(inputs))
    return {name: statistics.median(t) for name, t in times.items()}


def probe_memory(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """Peak memory of forward + backward and training-step time, activation checkpointing on or off.

    The peak is taken before any optimizer step: AdamW's temporaries (several copies of the weights) would otherwise
    set the peak on both settings alike and hide the activations. On CPU it is the process's peak RSS, on CUDA the
    peak of allocated memory.
    """
    device = torch.device(args.device)
    cfg = EquiAVConfig.from_preset(args.preset)
    bf16 = device.type == "cuda"
    runner = StepRunner(cfg, device, bf16, checkpointing)
    inputs = make_inputs(cfg, args.batch_size, max(args.views), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        runner.forward_backward(inputs)
        runner.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak = peak_rss_gib()
    for _ in range(args.warmup):
        runner.step(inputs)
    times = [runner.step(inputs) for _ in range(args.repeats)]
    return {"step_s": statistics.median(times), "peak_gib": peak}


def peak_rss_gib() -> float:
    """This process's peak resident memory. Linux: ``VmHWM``, the high-water mark of this program's own memory;
    ``ru_maxrss`` would also count the parent's peak, which a child inherits through ``fork`` and keeps after
    ``exec`` (a probe started after 10-GiB timed steps reported 10 GiB whatever it did)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    divisor = 2**30 if sys.platform == "darwin" else 2**20  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor


def memory_in_subprocess(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    """Run :func:`probe_memory` in a fresh process, so that each setting's peak RSS is its own."""
    command = [sys.executable, __file__, "--probe", "on" if checkpointing else "off", "--preset", args.preset,
               "--device", args.device, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
               "--repeats", str(args.repeats), "--views", str(max(args.views))]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="equiav-base", help="model preset (default: equiav-base)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="per step (default: 2 on CPU, 32 on CUDA)"
    )
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4, 8, 16], help="values of S to time")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per setting (default: 1 CPU, 5 CUDA)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per setting (default: 3 CPU, 20 CUDA)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="accelerator peak for MFU (default: by name)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the largest S through torch.compile against the eager model, round-robin",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of --compile (default inductor; aot_eager traces forward and backward without "
        "generating kernels, a quick check that the step compiles)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the activation-checkpointing comparison"
    )
    parser.add_argument("--probe", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (32 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.repeats = args.repeats or (20 if cuda else 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(json.dumps(probe_memory(args, args.probe == "on")))
        return
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    cfg = EquiAVConfig.from_preset(args.preset)
    print("machine:", json.dumps(machine_info(device)))
    print(
        f"settings: preset {args.preset}, batch {args.batch_size}, precision {'bf16 autocast' if bf16 else 'fp32'}, "
        f"warmup {args.warmup}, repeats {args.repeats} (medians), views {args.views}, compiled too {args.compile}"
    )
    medians = time_views(args, cfg, device, bf16)
    peak = peak_tflops(device, args.peak_tflops)
    base = medians[min(args.views)]
    print(f"\n{'S':>4} {'step ms':>10} {'vs S=' + str(min(args.views)):>9}" + (
        f" {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6}" if bf16 else ""))  # fmt: skip
    for s, seconds in medians.items():
        line = f"{s:>4} {seconds * 1e3:>10.1f} {seconds / base:>9.4f}"
        if bf16:
            tflops = 3 * forward_flops(cfg, args.batch_size, s) / seconds / 1e12
            mfu = f"{tflops / peak:>6.1%}" if peak else f"{'n/a':>6}"
            line += f" {args.batch_size / seconds:>10.1f} {tflops:>8.1f} {mfu}"
        print(line)
    if 1 in medians and 16 in medians:
        print(f"\nratio S=16 / S=1: {medians[16] / medians[1]:.4f} (paper: < 1.05; goal: < 1.03)")
    print(f"model forward GFLOPs per sample at S=16: {forward_flops(cfg, 1, 16) / 1e9:.1f}")
    if args.compile:
        views = max(args.views)
        compiled = time_compiled(args, cfg, device, bf16, views)
        print(
            f"\ntorch.compile, backend {args.compile_backend} (S={views}, round-robin with the eager model):"
        )
        for name, seconds in compiled.items():
            line = f"  {name:>8}: step {seconds * 1e3:8.1f} ms"
            if bf16:
                tflops = 3 * forward_flops(cfg, args.batch_size, views) / seconds / 1e12
                mfu = f", MFU {tflops / peak:.1%}" if peak else ""
                line += f", {args.batch_size / seconds:.1f} samples/s, {tflops:.1f} TFLOP/s{mfu}"
            print(line)
        print(f"speed-up compiled / eager: {compiled['eager'] / compiled['compiled']:.3f}x")
    if not args.no_memory:
        print(f"\nactivation checkpointing (S={max(args.views)}, each setting in a fresh process):")
        memory = {"off": memory_in_subprocess(args, False), "on": memory_in_subprocess(args, True)}
        what = "forward+backward peak allocated GiB" if bf16 else "forward+backward peak RSS GiB"
        for name, result in memory.items():
            print(f"  {name:>3}: step {result['step_s'] * 1e3:8.1f} ms, {what} {result['peak_gib']:.2f}")


if __name__ == "__main__":
    main()
