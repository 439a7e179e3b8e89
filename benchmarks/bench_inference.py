"""Inference throughput: clips/s of ``encode_audio`` + ``encode_image`` against the authors' ``forward_feat`` path.

One clip is one 1024 x 128 filterbank and one 224 x 224 frame. Variants:

* ``authors fp32``: a plain re-implementation of the authors' inference path (reference sections 1.3-1.5) with the
  authors' parameter names: the audio enters as (B, 3, 1024, 128) identical channels through a 3-channel patch
  convolution, attention is written out by hand (q @ k^T * scale, softmax, @ v, as timm 0.4.5 and their
  cross-attention), and ``forward_feat`` draws 16 fresh audio and 16 fresh visual vectors for every clip in a Python
  loop with their per-vector sampler (reference 2.4: global RNGs, a dummy ``torch.rand`` image per vector and
  torchvision's ``RandomResizedCrop.get_params``);
* ``ours fp32``: ``EquiAVModel.encode_audio`` (one-channel input, fused patch embedding) + ``encode_image``, with
  ``F.scaled_dot_product_attention`` and the model's fixed views;
* ``ours bf16``: the same model converted with ``dtype=torch.bfloat16`` (what ``from_pretrained(..., dtype=...)``
  does); on CUDA ``F.scaled_dot_product_attention`` is restricted to the flash-attention kernel;
* on a CPU, ``ours fp32 packed`` and ``ours bf16 packed``: the same models after ``pack_for_cpu()``, whose linear
  layers multiply by weights prepacked once for oneDNN (``equiav.packing``);
* with ``--compile``, ``ours fp32 compiled`` and ``ours bf16 compiled``: the models after
  ``EquiAVModel.compile_for_cpu()`` (``torch.compile`` with frozen weights: inductor folds the weights into the graph
  as constants and, on a CPU, keeps them prepacked for oneDNN's matrix kernels).

Both models hold the same random weights (``load_state_dict`` by name). Before timing, the script checks that the
authors' path and ours give the same embeddings (max abs difference <= 1e-4) when both are given the same vectors,
and that bf16 embeddings stay within cosine 0.999 of float32 ones (packed and compiled variants: fp32 within 1e-4 of
the authors' path or the eager model, bf16 within cosine 0.999 of fp32). Then it times all variants round-robin.

    python benchmarks/bench_inference.py                      # equiav-base, batch 1 and 16, CPU
    python benchmarks/bench_inference.py --device cuda        # batch 64 on the GPU
    python benchmarks/bench_inference.py --batch-sizes 1 --compile   # adds the compiled variants
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from common import (
    add_common_arguments,
    apply_threads,
    print_header,
    ratio_line,
    synchronizer,
    time_round_robin,
    timing_record,
    use_repository_package,
    write_json,
)
from torch import nn

use_repository_package()

from equiav import EquiAVConfig, EquiAVModel  # noqa: E402
from equiav.packing import packing_available  # noqa: E402

EQUALITY_TOLERANCE = 1e-4
BF16_MIN_COSINE = 0.999
GOALS = {
    f"ours {dtype}{kind}": goal
    for dtype, goal in (("fp32", 1.2), ("bf16", 3.0))
    for kind in ("", " packed", " compiled")
}

# ---------------------------------------------------------------------------------------------------------------------
# The authors' inference path, re-implemented with their parameter names


class HandAttention(nn.Module):
    """timm 0.4.5 self-attention: one qkv projection, scores and softmax written out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class TwoLayerMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HandBlock(nn.Module):
    """Pre-norm transformer block (reference 1.3.4)."""

    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), HandAttention(dim, cfg.num_heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), TwoLayerMlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HandCrossAttention(nn.Module):
    """The authors' cross-attention (reference 1.3.6): queries from augmentation tokens, keys/values from patches."""

    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        inner = cfg.cross_attn_heads * cfg.cross_attn_head_dim
        self.heads, self.scale = cfg.cross_attn_heads, cfg.cross_attn_head_dim**-0.5
        self.to_q = nn.Linear(cfg.aug_embed_dim, inner)
        self.to_k = nn.Linear(cfg.embed_dim, inner)
        self.to_v = nn.Linear(cfg.embed_dim, inner)
        self.to_out = nn.Linear(inner, cfg.embed_dim, bias=False)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._split(self.to_q(queries)),
            self._split(self.to_k(tokens)),
            self._split(self.to_v(tokens)),
        )
        weights = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (weights @ v).transpose(1, 2)
        return self.to_out(out.reshape(out.shape[0], out.shape[1], -1))


class HandPredictor(nn.Module):
    """``CrossAttentionBlock``: mean-pooled tokens + attention output, a pre-norm MLP, then the mean over views."""

    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.norm_aug = nn.LayerNorm(cfg.aug_embed_dim, eps=eps)
        self.attn = HandCrossAttention(cfg)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = TwoLayerMlp(dim, int(dim * cfg.cross_attn_mlp_ratio))

    def forward(self, tokens: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
        x = tokens.mean(dim=1, keepdim=True) + self.attn(self.norm_aug(aug), tokens)
        x = x + self.mlp(self.norm(x))
        return x.mean(dim=1)


class QuickGelu(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Head(nn.Module):
    """``MLPProjectionHead`` (reference 1.3.7)."""

    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        dim, hidden, out, eps = cfg.embed_dim, cfg.proj_hidden_dim, cfg.inter_proj_dim, cfg.layer_norm_eps
        self.fc1, self.norm1 = nn.Linear(dim, hidden), nn.LayerNorm(hidden, eps=eps)
        self.fc2, self.norm2 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
        self.fc3, self.norm3 = nn.Linear(hidden, out), nn.LayerNorm(out, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.fc1(x)))
        x = F.relu(self.norm2(self.fc2(x)))
        return self.norm3(self.fc3(x))


class Conv3(nn.Module):
    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)


class AuthorsInference(nn.Module):
    """The modules of the authors' ``MainModel`` that ``forward_feat`` uses, under their state-dict names."""

    def __init__(self, cfg: EquiAVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        for m, aug_dim, tokens in (("a", cfg.audio_aug_dim, cfg.num_audio_patches), ("v", cfg.visual_aug_dim, cfg.num_image_patches)):  # fmt: skip
            setattr(self, f"modality_{m}", nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)))
            self.register_buffer(f"pos_embed_{m}", torch.zeros(1, tokens, cfg.embed_dim))
            setattr(self, f"patch_embed_{m}", Conv3(cfg))
            setattr(self, f"blocks_{m}", nn.ModuleList(HandBlock(cfg) for _ in range(cfg.depth)))
            setattr(self, f"norm_{m}", nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps))
            encoder = nn.Sequential(
                nn.Linear(aug_dim, cfg.aug_embed_dim), QuickGelu(),
                nn.Linear(cfg.aug_embed_dim, cfg.aug_embed_dim), QuickGelu(),
                nn.Linear(cfg.aug_embed_dim, cfg.aug_embed_dim),
            )  # fmt: skip
            setattr(self, f"aug_encoder_{m}", encoder)
            setattr(self, f"cross_attn_{m}", HandPredictor(cfg))
            setattr(self, f"pred_{m}_inter", Head(cfg))

    def _tower(self, x: torch.Tensor, m: str) -> torch.Tensor:
        x = getattr(self, f"patch_embed_{m}").proj(x).flatten(2).transpose(1, 2)
        x = x + getattr(self, f"pos_embed_{m}") + getattr(self, f"modality_{m}")
        for block in getattr(self, f"blocks_{m}"):
            x = block(x)
        return getattr(self, f"norm_{m}")(x)

    def _embed(self, tokens: torch.Tensor, vectors: torch.Tensor, m: str) -> torch.Tensor:
        aug = getattr(self, f"aug_encoder_{m}")(vectors)
        return getattr(self, f"pred_{m}_inter")(getattr(self, f"cross_attn_{m}")(tokens, aug))

    def forward_feat(
        self,
        audio: torch.Tensor,
        image: torch.Tensor,
        audio_vectors: torch.Tensor | None = None,
        image_vectors: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, F) audio and (B, 3, S, S) images -> inter embeddings; vectors drawn per clip unless given."""
        a = self._tower(audio.transpose(2, 3), "a")
        v = self._tower(image, "v")
        if audio_vectors is None or image_vectors is None:
            audio_list, image_list = [], []
            for _ in range(a.shape[0]):
                audio_list.append(authors_audio_vectors(self.cfg))
                image_list.append(authors_image_vectors(self.cfg))
            audio_vectors = torch.stack(audio_list).to(a.device)
            image_vectors = torch.stack(image_list).to(v.device)
        return self._embed(a, audio_vectors, "a"), self._embed(v, image_vectors, "v")


def _authors_jitter_entries() -> list[float]:
    """Color-jitter slots of a vector: coin, order, factors (reference 2.1 indices 12-20)."""
    if random.uniform(0, 1) >= 0.8:
        return [0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]
    order = torch.randperm(4).float().tolist()
    _, brightness, contrast, saturation, hue = T.ColorJitter.get_params(
        (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)
    )
    return [1.0, *order, brightness - 1, contrast - 1, saturation - 1, hue]


def _authors_blur_flip(count: int) -> list[float]:
    """Blur coin and sigma, then ``count`` more coins (flip; flip and grayscale)."""
    out = [1.0, random.uniform(0.1, 2.0)] if random.uniform(0, 1) < 0.5 else [0.0, 0.0]
    for threshold in (0.5, 0.2)[:count]:
        out.append(1.0 if random.uniform(0, 1) < threshold else 0.0)
    return out


def authors_audio_vectors(cfg: EquiAVConfig) -> torch.Tensor:
    """``num_views`` audio vectors drawn one by one in the authors' RNG call order (reference 2.4)."""
    frames, bins = 1024, 128  # hard-coded in the authors' model sampler
    rows = []
    for _ in range(cfg.num_views):
        time_len, time_pos, freq_len, freq_pos = (float(torch.rand(1)) for _ in range(4))
        mask = [0.0] * 7
        if random.uniform(0, 1) < 0.8:
            t_len, f_len = int(time_len * 192), int(freq_len * 48)
            t0, f0 = int(time_pos * (frames - time_len * 192)), int(freq_pos * (bins - freq_len * 48))
            mask = [1.0, t0, t0 + t_len, f0, f0 + f_len, 1.0, np.random.randint(-frames, frames) / frames]
        dummy = torch.rand(3, frames, bins)
        i, j, h, w = T.RandomResizedCrop.get_params(dummy, scale=(0.08, 1.0), ratio=(1 / 10, 1.5 / 8))
        crop = [1.0, i / bins, j / frames, h / bins, w / frames]
        rows.append(mask + crop + _authors_jitter_entries() + _authors_blur_flip(1))
    return torch.tensor(rows, dtype=torch.float32)


def authors_image_vectors(cfg: EquiAVConfig) -> torch.Tensor:
    """``num_views`` visual vectors drawn one by one in the authors' RNG call order (reference 2.4)."""
    size = 224  # hard-coded in the authors' model sampler
    rows = []
    for _ in range(cfg.num_views):
        dummy = torch.rand(3, size, size)
        i, j, h, w = T.RandomResizedCrop.get_params(dummy, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        crop = [1.0, i / size, j / size, h / size, w / size]
        rows.append(crop + _authors_jitter_entries() + _authors_blur_flip(2))
    return torch.tensor(rows, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Checks and timing


def build_models(cfg: EquiAVConfig, device: torch.device) -> tuple[EquiAVModel, AuthorsInference]:
    """Our model with random weights, and the authors' path holding the same weights."""
    torch.manual_seed(0)
    ours = EquiAVModel(cfg).eval()
    authors = AuthorsInference(cfg).eval()
    result = authors.load_state_dict(ours.state_dict(), strict=False)
    if result.missing_keys:
        raise RuntimeError(f"the authors' path did not receive weights for {result.missing_keys}")
    return ours.to(device), authors.to(device)


def make_inputs(cfg: EquiAVConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    fbank = torch.randn(batch, cfg.target_length, cfg.num_mel_bins, generator=generator)
    return {
        "fbank": fbank.to(device),
        "fbank3": fbank[:, None].expand(-1, cfg.in_chans, -1, -1).contiguous().to(device),
        "pixels": torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=generator).to(device),
    }


def check_equal(ours: EquiAVModel, authors: AuthorsInference, inputs: dict[str, torch.Tensor]) -> float:
    """Max abs difference of both embeddings when both paths get the same per-clip vectors."""
    batch = inputs["fbank"].shape[0]
    audio_vectors = torch.stack([authors_audio_vectors(ours.config) for _ in range(batch)]).to(ours.device)
    image_vectors = torch.stack([authors_image_vectors(ours.config) for _ in range(batch)]).to(ours.device)
    with torch.inference_mode():
        theirs = authors.forward_feat(inputs["fbank3"], inputs["pixels"], audio_vectors, image_vectors)
        mine = (
            ours.encode_audio(inputs["fbank"], views=audio_vectors),
            ours.encode_image(inputs["pixels"], views=image_vectors),
        )
    return max(float((a - b).abs().max()) for a, b in zip(theirs, mine))


def bf16_cosine(ours: EquiAVModel, ours_bf16: EquiAVModel, inputs: dict[str, torch.Tensor]) -> float:
    """Smallest cosine similarity between the float32 and bf16 embeddings of the clips (audio and image)."""
    with torch.inference_mode(), attention_context(ours_bf16.device, torch.bfloat16):
        low = (
            ours_bf16.encode_audio(inputs["fbank"]).float(),
            ours_bf16.encode_image(inputs["pixels"]).float(),
        )
    with torch.inference_mode():
        full = (ours.encode_audio(inputs["fbank"]), ours.encode_image(inputs["pixels"]))
    return min(float(F.cosine_similarity(a, b, dim=-1).min()) for a, b in zip(full, low))


def compiled_difference(
    eager: EquiAVModel, compiled: EquiAVModel, inputs: dict[str, torch.Tensor], reference: EquiAVModel
) -> tuple[float, float]:
    """Compile ``compiled`` on ``inputs`` (its first call) and return its max abs difference to ``eager`` and its
    smallest cosine to the float32 ``reference``."""
    dtype = eager.dtype
    with torch.inference_mode(), attention_context(eager.device, dtype):
        fast = (
            compiled.encode_audio(inputs["fbank"]).float(),
            compiled.encode_image(inputs["pixels"]).float(),
        )
        slow = (eager.encode_audio(inputs["fbank"]).float(), eager.encode_image(inputs["pixels"]).float())
    with torch.inference_mode():
        full = (reference.encode_audio(inputs["fbank"]), reference.encode_image(inputs["pixels"]))
    difference = max(float((a - b).abs().max()) for a, b in zip(fast, slow))
    cosine = min(float(F.cosine_similarity(a, b, dim=-1).min()) for a, b in zip(full, fast))
    return difference, cosine


FLASH_ONLY = {"enabled": False}


def attention_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """On CUDA in bf16, allow only the flash-attention kernel once ``enable_flash`` found that it runs."""
    if device.type == "cuda" and dtype == torch.bfloat16 and FLASH_ONLY["enabled"]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def enable_flash(model: EquiAVModel, inputs: dict[str, torch.Tensor]) -> str:
    """Restrict bf16 attention on CUDA to flash attention if every attention call of the model accepts it."""
    if model.device.type != "cuda":
        return "not on CUDA"
    FLASH_ONLY["enabled"] = True
    try:
        with torch.inference_mode(), attention_context(model.device, torch.bfloat16):
            model.encode_audio(inputs["fbank"]), model.encode_image(inputs["pixels"])
    except RuntimeError as error:
        FLASH_ONLY["enabled"] = False
        return f"flash attention refused ({str(error).splitlines()[0]}); timing PyTorch's default SDPA choice"
    return "flash attention only (SDPBackend.FLASH_ATTENTION)"


def predictor_share(model: EquiAVModel, inputs: dict[str, torch.Tensor], repeats: int, warmup: int) -> float:
    """Fraction of ``encode_audio`` + ``encode_image`` time spent after the towers (augmentation encoders, the
    S-view cross-attention predictors and the inter heads), timed from precomputed tokens."""
    sync = synchronizer(model.device)
    with torch.inference_mode():
        tokens_a, tokens_v = model.audio_tokens(inputs["fbank"]), model.image_tokens(inputs["pixels"])

        def towers():
            return model.audio_tokens(inputs["fbank"]), model.image_tokens(inputs["pixels"])

        def predictors():
            audio = model.cross_attn_a(tokens_a, model.aug_encoder_a(model.audio_views))
            image = model.cross_attn_v(tokens_v, model.aug_encoder_v(model.visual_views))
            return model.pred_a_inter(audio), model.pred_v_inter(image)

        timings = time_round_robin({"towers": towers, "predictors": predictors}, repeats, warmup, sync)
    after = timings["predictors"].median_wall
    return after / (after + timings["towers"].median_wall)


def variants_for(
    ours: EquiAVModel,
    ours_bf16: EquiAVModel,
    authors: AuthorsInference,
    inputs: dict[str, torch.Tensor],
    packed: dict[str, EquiAVModel],
    compiled: dict[str, EquiAVModel],
) -> dict[str, Callable[[], object]]:
    def run_authors():
        with torch.inference_mode():
            return authors.forward_feat(inputs["fbank3"], inputs["pixels"])

    def run_ours(model: EquiAVModel, dtype: torch.dtype) -> Callable[[], object]:
        def run():
            with torch.inference_mode(), attention_context(model.device, dtype):
                return model.encode_audio(inputs["fbank"]), model.encode_image(inputs["pixels"])

        return run

    variants = {
        "authors fp32": run_authors,
        "ours fp32": run_ours(ours, torch.float32),
        "ours bf16": run_ours(ours_bf16, torch.bfloat16),
    }
    for name, model in packed.items():
        variants[f"ours {name} packed"] = run_ours(model, model.dtype)
    for name, encoders in compiled.items():
        variants[f"ours {name} compiled"] = run_ours(
            encoders, torch.bfloat16 if name == "bf16" else torch.float32
        )
    return variants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, repeats=3, warmup=1)
    parser.add_argument("--preset", default="equiav-base", help="model preset (default equiav-base)")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16 on CPU, 64 on CUDA"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time both models through torch.compile with frozen weights (compiles once per batch size)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.batch_sizes, args.repeats, args.warmup = "equiav-tiny", [1, 2], 1, 0
    if args.batch_sizes is None:
        args.batch_sizes = [64] if args.device.startswith("cuda") else [1, 16]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    random.seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    cfg = EquiAVConfig.from_preset(args.preset)
    settings = {
        "preset": args.preset,
        "batch sizes": args.batch_sizes,
        "views": cfg.num_views,
        "repeats": args.repeats,
        "warm-up": args.warmup,
        "device": device,
        "compiled variants": args.compile,
    }
    machine = print_header(
        "inference: encode_audio + encode_image vs the authors' forward_feat", device, settings
    )
    if device.type == "cuda":  # float32 means float32 for both paths: no TF32 matrix products or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    ours, authors = build_models(cfg, device)
    ours_bf16 = copy.deepcopy(ours).to(
        dtype=torch.bfloat16
    )  # what from_pretrained(..., dtype=torch.bfloat16) does
    packed = {}
    if device.type == "cpu" and packing_available():
        packed = {"fp32": copy.deepcopy(ours).pack_for_cpu(), "bf16": copy.deepcopy(ours_bf16).pack_for_cpu()}
    sync = synchronizer(device)
    goals = GOALS if args.preset == "equiav-base" and device.type == "cpu" else {}  # the CPU goals
    results = []
    for batch in args.batch_sizes:
        inputs = make_inputs(cfg, batch, device)
        difference = check_equal(ours, authors, inputs)
        attention = enable_flash(ours_bf16, inputs)
        cosine = bf16_cosine(ours, ours_bf16, inputs)
        print(
            f"\nbatch {batch}: max |authors - ours| with the same vectors = {difference:.2e} (limit {EQUALITY_TOLERANCE:g})"
        )
        print(
            f"batch {batch}: min cosine(bf16, fp32) = {cosine:.6f} (limit {BF16_MIN_COSINE}); bf16 attention: {attention}"
        )
        if difference > EQUALITY_TOLERANCE:
            raise SystemExit(f"the authors' path and ours differ by {difference:.2e} > {EQUALITY_TOLERANCE}")
        packed_difference = packed_cosine = None
        if packed:
            packed_difference = check_equal(packed["fp32"], authors, inputs)
            packed_cosine = bf16_cosine(ours, packed["bf16"], inputs)
            print(
                f"batch {batch}: packed weights: max |authors - ours fp32| = {packed_difference:.2e}, "
                f"min cosine(bf16, fp32) = {packed_cosine:.6f}"
            )
            if packed_difference > EQUALITY_TOLERANCE or packed_cosine < BF16_MIN_COSINE:
                raise SystemExit("the packed models fail the checks the plain models pass (limits above)")
        compiled = {}
        if args.compile:
            for name, eager in (("fp32", ours), ("bf16", ours_bf16)):
                start = time.perf_counter()
                compiled[name] = copy.deepcopy(eager).compile_for_cpu()
                change, low = compiled_difference(eager, compiled[name], inputs, ours)
                print(
                    f"batch {batch}: {name} compiled in {time.perf_counter() - start:.0f} s; max |compiled - eager| "
                    f"= {change:.2e}, min cosine to fp32 = {low:.6f}"
                )
                if (name == "fp32" and change > EQUALITY_TOLERANCE) or low < BF16_MIN_COSINE:
                    raise SystemExit(f"the compiled {name} model does not give the eager model's embeddings")
        timings = time_round_robin(
            variants_for(ours, ours_bf16, authors, inputs, packed, compiled), args.repeats, args.warmup, sync
        )
        for name, timing in timings.items():
            print(f"batch {batch:3d} {name:>18}: {timing.describe(batch, 'clips')}")
        for name in [name for name in timings if name.startswith("ours")]:
            print(
                f"batch {batch}: "
                + ratio_line(
                    f"{name} / authors fp32", timings["authors fp32"], timings[name], goals.get(name)
                )
            )
        share = predictor_share(ours, inputs, args.repeats, args.warmup)
        print(f"batch {batch}: predictors + heads take {share:.1%} of ours fp32 (the towers the rest)")
        results.append({
            "batch": batch,
            "max_abs_difference": difference,
            "bf16_min_cosine": cosine,
            "bf16_attention": attention,
            "packed_max_abs_difference": packed_difference,
            "packed_bf16_min_cosine": packed_cosine,
            "predictor_share_fp32": share,
            "timings": {name: timing_record(timing, batch) for name, timing in timings.items()},
        })  # fmt: skip
    print("\nfinal numbers need a quiet machine: compare the load average above with the logical CPU count")
    write_json(
        args.json, {"benchmark": "inference", "machine": machine, "settings": settings, "results": results}
    )


if __name__ == "__main__":
    main()
