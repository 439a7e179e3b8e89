"""Inference against the machine's own limit: the model's FLOP rate over the rate of one large matrix product.

One clip is one filterbank and one frame through ``encode_audio`` + ``encode_image``. Its floating-point operations
are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention;
about 122 GFLOP for ``equiav-base``), and the model's rate is that count over the median time of a call. The limit
is the rate of an N x N x N matrix product of the same dtype (N = 2048 on a CPU, 8192 on a GPU), timed round-robin
with the model in the same process, so both see the same machine state. A ratio near 1 means the model runs as fast
as its matrix products can; what is missing is time outside them (layer norms, GELU, softmax, copies, small products),
which the profile at the end breaks down.

Variants: ``fp32`` and ``bf16`` (the model converted with ``dtype=torch.bfloat16``), both with ``pack_for_cpu()`` on a
CPU where oneDNN can pack that dtype; with ``--compile``, also both through ``EquiAVModel.compile_for_cpu()``
(``torch.compile`` with frozen weights). Each variant's embeddings are checked first: fp32 variants within 1e-4 of the
eager fp32 model, bf16 variants at cosine >= 0.999 to it.

    python benchmarks/bench_roofline.py --threads 1                     # equiav-base, batch 1, CPU
    python benchmarks/bench_roofline.py --threads 1 --compile           # adds the compiled variants
    python benchmarks/bench_roofline.py --device cuda --batch-size 64   # GPU: clips/s and the bf16 ratio
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from bench_inference import BF16_MIN_COSINE, EQUALITY_TOLERANCE, make_inputs
from common import (
    add_common_arguments,
    apply_threads,
    print_header,
    synchronizer,
    time_round_robin,
    timing_record,
    use_repository_package,
    write_json,
)
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

use_repository_package()

from equiav import EquiAVConfig, EquiAVModel  # noqa: E402
from equiav.packing import packable_dtypes, packing_available  # noqa: E402

GOAL = 0.90
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Kernels that are matrix products (their self time is the part the matrix-product rate bounds).
MATRIX_KERNELS = ("mm", "addmm", "bmm", "baddbmm", "linear_pointwise", "mkl_linear", "convolution", "conv2d",
                  "_scaled_dot_product", "mkldnn_linear", "onednn", "gemm", "qlinear")  # fmt: skip


def embed(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return model.encode_audio(inputs["fbank"]), model.encode_image(inputs["pixels"])


def count_flops(model: EquiAVModel, inputs: dict[str, torch.Tensor]) -> int:
    """Floating-point operations of one ``encode_audio`` + ``encode_image`` call on ``inputs``."""
    counter = FlopCounterMode(display=False)
    with counter:
        embed(model, inputs)
    return counter.get_total_flops()


def build_variants(
    model: EquiAVModel, device: torch.device, dtypes: list[str], compile_too: bool
) -> dict[str, EquiAVModel]:
    """The models to time, by name; packed on a CPU where oneDNN packs that dtype."""
    variants = {}
    for name in dtypes:
        dtype = DTYPES[name]
        variant = copy.deepcopy(model).to(dtype=dtype)
        if device.type == "cpu" and packing_available() and dtype in packable_dtypes():
            variant.pack_for_cpu()
            name = f"{name} packed"
        variants[name] = variant
        if compile_too:
            variants[f"{name.split()[0]} compiled"] = copy.deepcopy(model).to(dtype=dtype).compile_for_cpu()
    return variants


def check_outputs(reference: EquiAVModel, variants: dict[str, Any], inputs: dict[str, torch.Tensor]) -> dict:
    """Max abs difference (fp32) or min cosine (bf16) of every variant's embeddings to the eager fp32 model."""
    expected = embed(reference, inputs)
    checks = {}
    for name, variant in variants.items():
        started = time.perf_counter()
        got = [t.float() for t in embed(variant, inputs)]
        seconds = time.perf_counter() - started
        if name.startswith("fp32"):
            value = max(float((a - b).abs().max()) for a, b in zip(expected, got))
            ok, what = value <= EQUALITY_TOLERANCE, f"max |variant - eager fp32| = {value:.2e}"
        else:
            value = min(float(F.cosine_similarity(a, b, dim=-1).min()) for a, b in zip(expected, got))
            ok, what = value >= BF16_MIN_COSINE, f"min cosine to eager fp32 = {value:.6f}"
        print(f"check {name:>13}: {what} (first call {seconds:.1f} s)")
        if not ok:
            raise SystemExit(f"variant {name} does not give the eager model's embeddings: {what}")
        checks[name] = value
    return checks


def matmul_runner(size: int, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    return lambda: torch.mm(a, b)


def profile_variant(model: Any, inputs: dict[str, torch.Tensor], device: torch.device, top: int) -> dict:
    """Self time of one call by kernel: the share of matrix products and the largest of the rest."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    embed(model, inputs)
    with profile(activities=activities) as prof:
        embed(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = [(e.key, getattr(e, attribute)) for e in prof.key_averages() if getattr(e, attribute) > 0]
    total = sum(t for _, t in kernels) or 1.0
    matrix = sum(t for key, t in kernels if any(k in key for k in MATRIX_KERNELS))
    rest = sorted(
        ((key, t) for key, t in kernels if not any(k in key for k in MATRIX_KERNELS)), key=lambda kt: -kt[1]
    )
    return {
        "matrix_share": matrix / total,
        "rest": [{"kernel": key, "share": t / total} for key, t in rest[:top]],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=5, warmup=1)
    parser.add_argument("--preset", default="equiav-base", help="model preset (default equiav-base)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="clips per call (default: 1 CPU, 64 CUDA)"
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="N of the N x N x N product (default: 2048 CPU, 8192 CUDA)",
    )
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time EquiAVModel.compile_for_cpu() (torch.compile, frozen)",
    )
    parser.add_argument(
        "--profile-top", type=int, default=8, help="kernels listed outside the matrix products"
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.preset, args.repeats, args.warmup, args.matmul_size = "equiav-tiny", 1, 0, 256
    args.batch_size = args.batch_size or (64 if cuda else 1)
    args.matmul_size = args.matmul_size or (8192 if cuda else 2048)
    if cuda and "fp32" in args.dtypes:
        args.dtypes = [d for d in args.dtypes if d != "fp32"] or ["bf16"]  # the GPU goal is bf16
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    device = torch.device(args.device)
    cfg = EquiAVConfig.from_preset(args.preset)
    settings = {
        "preset": args.preset,
        "batch": args.batch_size,
        "matmul": f"{args.matmul_size}^3",
        "dtypes": args.dtypes,
        "repeats": args.repeats,
        "warm-up": args.warmup,
        "threads": torch.get_num_threads(),
        "compiled variants": args.compile,
    }
    machine = print_header("roofline: model FLOP rate / matrix-product FLOP rate", device, settings)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    reference = EquiAVModel(cfg).eval().to(device)
    inputs = make_inputs(cfg, args.batch_size, device)
    flops = count_flops(reference, inputs)
    print(f"model: {flops / 1e9:.2f} GFLOP per call ({flops / args.batch_size / 1e9:.2f} per clip)")
    variants = build_variants(reference, device, args.dtypes, args.compile)
    checks = check_outputs(reference, variants, inputs)
    matmul_flops = 2 * args.matmul_size**3
    runs: dict[str, Callable[[], object]] = {}
    for name, variant in variants.items():
        runs[f"model {name}"] = lambda variant=variant: embed(variant, inputs)
    for name in args.dtypes:
        runs[f"matmul {name}"] = matmul_runner(args.matmul_size, DTYPES[name], device)
    timings = time_round_robin(runs, args.repeats, args.warmup, synchronizer(device))
    results: dict[str, Any] = {"flops_per_call": flops, "checks": checks, "variants": {}}
    print()
    for name in args.dtypes:
        matmul_rate = matmul_flops / timings[f"matmul {name}"].median_wall
        print(f"matmul {name}: {matmul_rate / 1e9:9.1f} GFLOP/s")
        results[f"matmul_{name}_gflops"] = matmul_rate / 1e9
    for name in variants:
        timing = timings[f"model {name}"]
        rate = flops / timing.median_wall
        ratio = rate / (matmul_flops / timings[f"matmul {name.split()[0]}"].median_wall)
        verdict = "met" if ratio >= GOAL else "NOT met"
        print(
            f"model {name:>13}: {timing.median_wall * 1e3:9.1f} ms/call, {args.batch_size / timing.median_wall:8.2f} "
            f"clips/s, {rate / 1e9:8.1f} GFLOP/s, ratio to the matrix product {ratio:.3f} (goal >= {GOAL}: {verdict})"
        )
        results["variants"][name] = {
            **timing_record(timing, args.batch_size),
            "gflops": rate / 1e9,
            "ratio": ratio,
        }
    print(
        "\nprofile (self time of one call; matrix products = mm/addmm/bmm, oneDNN linear, convolution, SDPA):"
    )
    for name, variant in variants.items():
        breakdown = profile_variant(variant, inputs, device, args.profile_top)
        rest = ", ".join(f"{k['kernel']} {k['share']:.1%}" for k in breakdown["rest"])
        print(f"{name:>13}: matrix products {breakdown['matrix_share']:.1%}; the rest: {rest}")
        results["variants"][name]["profile"] = breakdown
    print("\nfinal numbers need a quiet machine: compare the load average above with the logical CPU count")
    write_json(args.json, {"machine": machine, "settings": settings, "results": results})


if __name__ == "__main__":
    main()
