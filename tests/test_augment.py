"""Parameterized augmentations: vector layout, round trips, op semantics and the authors' sampler distribution."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from scipy.stats import ks_2samp

from equiav.config import EquiAVConfig
from equiav.errors import ConfigError, InvalidInputError
from equiav.training.augment import (
    AudioAugmentConfig,
    AudioAugmenter,
    AudioAugParams,
    VisualAugmentConfig,
    VisualAugmenter,
    VisualAugParams,
)

FRAMES, BINS = 1024, 128


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fbank(seed: int = 0, frames: int = FRAMES, bins: int = BINS) -> torch.Tensor:
    """A normalized-fbank-like input: smooth structure plus noise, roughly zero mean and unit spread."""
    g = generator(seed)
    coarse = torch.randn(1, 1, frames // 16, bins // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(frames, bins), mode="bilinear")[0, 0]
    return smooth + 0.3 * torch.randn(frames, bins, generator=g)


def image(seed: int = 0, size: tuple[int, int] = (224, 224)) -> torch.Tensor:
    g = generator(seed)
    coarse = torch.rand(1, 3, 12, 12, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")[0]
    return (0.7 * smooth + 0.3 * torch.rand(3, *size, generator=g)).clamp(0, 1)


ALL_ON_AUDIO = AudioAugParams(
    spec_augment=True, time_mask=(100, 250), freq_mask=(30, 70), time_shift=True, shift=-300, crop=True,
    crop_box=(200, 16, 512, 96), color_jitter=True, jitter_order=(3, 1, 0, 2), brightness=1.25, contrast=0.75,
    saturation=1.375, hue=-0.0625, blur=True, sigma=1.5, flip=True,
)  # fmt: skip
ALL_ON_VISUAL = VisualAugParams(
    crop=True, crop_box=(0.125, 0.25, 0.5, 0.625), color_jitter=True, jitter_order=(2, 0, 3, 1), brightness=0.75,
    contrast=1.25, saturation=0.625, hue=0.09375, blur=True, sigma=0.75, flip=True, grayscale=True,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Vector layout


def test_audio_vector_layout_all_on():
    v = AudioAugmenter().vector(ALL_ON_AUDIO)
    expected = [
        1, 100, 250, 30, 70,  # SpecAugment flag, raw time / frequency mask indices
        1, -300 / 1024,  # time-shift flag, n / T
        1, 200 / 128, 16 / 1024, 512 / 128, 96 / 1024,  # crop: i / F, j / T, h / F, w / T (the authors' swap)
        1, 3, 1, 0, 2, 0.25, -0.25, 0.375, -0.0625,  # jitter flag, order, factor - 1, raw hue
        1, 1.5, 1,  # blur flag, sigma, flip flag
    ]  # fmt: skip
    assert v.dtype == torch.float32 and v.shape == (24,)
    torch.testing.assert_close(v, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0)


def test_audio_vector_layout_all_off():
    v = AudioAugmenter().vector(AudioAugParams())
    expected = torch.zeros(24)
    expected[13:17] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # default colour-jitter order slots
    torch.testing.assert_close(v, expected, rtol=0, atol=0)


def test_audio_identity_vector_is_the_in_distribution_no_crop():
    v = AudioAugmenter().identity_vector()
    expected = torch.zeros(24)
    expected[7], expected[10], expected[11] = 1.0, 8.0, 0.125
    expected[13:17] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(v, expected, rtol=0, atol=0)


def test_audio_vector_uses_the_configured_geometry():
    aug = AudioAugmenter(AudioAugmentConfig.for_input(128, 64))
    p = AudioAugParams(time_shift=True, shift=-32, crop=True, crop_box=(16, 8, 64, 32))
    v = aug.vector(p)
    assert v[6].item() == -32 / 128
    assert v[8:12].tolist() == [16 / 64, 8 / 128, 64 / 64, 32 / 128]
    assert aug.decode(v) == p


def test_visual_vector_layout_all_on_and_off():
    aug = VisualAugmenter()
    expected = [
        1, 0.125, 0.25, 0.5, 0.625,  # crop flag, top / H, left / W, height / H, width / W
        1, 2, 0, 3, 1, -0.25, 0.25, -0.375, 0.09375,  # jitter flag, order, factor - 1, hue
        1, 0.75, 1, 1,  # blur flag, sigma, flip, grayscale
    ]  # fmt: skip
    torch.testing.assert_close(
        aug.vector(ALL_ON_VISUAL), torch.tensor(expected, dtype=torch.float32), rtol=0, atol=0
    )
    off = torch.zeros(18)
    off[6:10] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(aug.vector(VisualAugParams()), off, rtol=0, atol=0)
    identity = off.clone()
    identity[0], identity[3], identity[4] = 1.0, 1.0, 1.0
    torch.testing.assert_close(aug.identity_vector(), identity, rtol=0, atol=0)


def test_sampled_vectors_follow_the_layout():
    a = AudioAugmenter().sample_vectors(4000, generator(1))
    assert a.dtype == torch.float32 and a.shape == (4000, 24)
    spec = a[:, 0] == 1
    assert torch.equal(a[:, 5], a[:, 0])  # one coin for SpecAugment and time shift
    assert (
        (a[~spec, 1:7] == 0).all() and (a[spec, 2] >= a[spec, 1]).all() and (a[spec, 4] >= a[spec, 3]).all()
    )
    assert (a[spec, 2] <= 1023).all() and (a[spec, 4] <= 127).all()
    assert (a[:, 7] == 1).all()
    assert ((a[:, 8] + a[:, 10]) * 128 <= 1024).all() and ((a[:, 9] + a[:, 11]) * 1024 <= 128).all()
    jitter = a[:, 12] == 1
    assert (a[~jitter, 13:17] == torch.tensor([0.0, 1.0, 2.0, 3.0])).all() and (a[~jitter, 17:21] == 0).all()
    assert (a[jitter, 13:17].sort(dim=1).values == torch.tensor([0.0, 1.0, 2.0, 3.0])).all()
    assert (a[a[:, 21] == 0, 22] == 0).all() and (a[a[:, 21] == 1, 22] >= 0.1).all()
    v = VisualAugmenter().sample_vectors(4000, generator(2))
    assert v.shape == (4000, 18) and (v[:, 0] == 1).all()
    assert (v[:, 1] + v[:, 3] <= 1 + 1e-6).all() and (v[:, 2] + v[:, 4] <= 1 + 1e-6).all()
    assert (v[v[:, 5] == 0, 6:10] == torch.tensor([0.0, 1.0, 2.0, 3.0])).all()
    flags = v[:, [0, 5, 14, 16, 17]]
    assert ((flags == 0) | (flags == 1)).all()


# ---------------------------------------------------------------------------------------------------------------------
# Round trips, determinism, identity


@pytest.mark.parametrize("faithful", [False, True])
def test_audio_round_trip_and_batch_consistency(faithful):
    aug = AudioAugmenter(faithful=faithful)
    params = aug.sample_batch(6, generator(3))
    vectors = aug.vector(params)
    assert aug.decode(vectors) == params
    assert torch.equal(aug.vector(aug.decode(vectors)), vectors)
    x = torch.stack([fbank(k) for k in range(6)])
    batch = aug.apply(x, params)
    assert batch.shape == ((6, 3, FRAMES, BINS) if faithful else (6, FRAMES, BINS))
    for k, p in enumerate(params):
        single = aug.apply(x[k], p)
        assert torch.equal(single, aug.apply(x[k], aug.decode(vectors[k])))
        torch.testing.assert_close(batch[k], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("faithful", [False, True])
def test_visual_round_trip_and_batch_consistency(faithful):
    aug = VisualAugmenter(faithful=faithful)
    params = aug.sample_batch(6, generator(4), input_size=(240, 320))
    vectors = aug.vector(params)
    assert aug.decode(vectors) == params
    x = torch.stack([image(k, (240, 320)) for k in range(6)])
    batch = aug.apply(x, params)
    assert batch.shape == (6, 3, 224, 224) and batch.min() >= 0 and batch.max() <= 1
    for k, p in enumerate(params):
        single = aug.apply(x[k], p)
        assert torch.equal(single, aug.apply(x[k], aug.decode(vectors[k])))
        torch.testing.assert_close(batch[k], single, rtol=1e-5, atol=1e-5)


def test_sampling_is_reproducible_from_the_generator():
    audio, visual = AudioAugmenter(), VisualAugmenter()
    assert audio.sample_batch(5, generator(7)) == audio.sample_batch(5, generator(7))
    assert torch.equal(visual.sample_vectors(50, generator(7)), visual.sample_vectors(50, generator(7)))
    assert audio.sample(generator(7)) == audio.sample_batch(1, generator(7))[0]
    assert not torch.equal(audio.sample_vectors(50, generator(7)), audio.sample_vectors(50, generator(8)))
    augmented, vector = audio(fbank(), generator(9))
    p = audio.sample(generator(9))
    assert torch.equal(vector, audio.vector(p)) and torch.equal(augmented, audio.apply(fbank(), p))


def test_identity_leaves_the_input_unchanged():
    x = fbank()
    for faithful in (False, True):
        aug = AudioAugmenter(faithful=faithful)
        for params in (aug.identity_params(), aug.decode(aug.identity_vector()), AudioAugParams()):
            out = aug.apply(x, params)
            assert torch.equal(out[0] if faithful else out, x)
            assert out.data_ptr() != x.data_ptr()
    img = image()
    for faithful in (False, True):
        aug = VisualAugmenter(faithful=faithful)
        assert torch.equal(aug.apply(img, aug.decode(aug.identity_vector())), img)
        assert torch.equal(aug.apply(img, VisualAugParams()), img)
    # Factors of exactly 1, zero hue and zero shift are identities too.
    still = AudioAugParams(color_jitter=True, jitter_order=(2, 3, 0, 1), time_shift=True, shift=0)
    assert torch.equal(AudioAugmenter().apply(x, still), x)


# ---------------------------------------------------------------------------------------------------------------------
# Audio operations against brute force and torchvision


def test_spec_augment_masks_with_zero():
    x = fbank()
    p = AudioAugParams(spec_augment=True, time_mask=(10, 200), freq_mask=(5, 53))
    out = AudioAugmenter().apply(x, p)
    expected = x.clone()
    expected[10:200] = 0.0
    expected[:, 5:53] = 0.0
    assert torch.equal(out, expected)


def test_time_shift_rolls_time_by_default_and_is_a_no_op_when_faithful():
    x = fbank()
    p = AudioAugParams(time_shift=True, shift=-300)
    assert torch.equal(AudioAugmenter().apply(x, p), torch.roll(x, -300, dims=0))
    assert torch.equal(AudioAugmenter(faithful=True).apply(x, p), x.expand(3, -1, -1))
    # SpecAugment masks first, then the roll moves the masked frames (the authors' order).
    both = AudioAugParams(spec_augment=True, time_mask=(0, 10), freq_mask=(0, 0), time_shift=True, shift=5)
    out = AudioAugmenter().apply(x, both)
    assert (out[5:15] == 0).all() and torch.equal(out[15:], x[10:-5])


def test_audio_crop_matches_torchvision_resized_crop():
    x = fbank()
    p = AudioAugParams(crop=True, crop_box=(37, 11, 301, 57))
    ref = TF.resized_crop(x[None], 37, 11, 301, 57, [FRAMES, BINS], antialias=True)[0]
    torch.testing.assert_close(AudioAugmenter().apply(x, p), ref, rtol=0, atol=1e-5)


def test_audio_colour_jitter_default_is_unclamped_brightness_and_contrast():
    x = fbank()
    for order in ((0, 1, 2, 3), (3, 2, 1, 0)):
        p = AudioAugParams(
            color_jitter=True, jitter_order=order, brightness=1.3, contrast=0.7, saturation=1.4, hue=0.1
        )
        out = AudioAugmenter().apply(x, p)
        expected = 1.3 * (0.7 * x + 0.3 * x.mean())
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert out.min() < -1 and out.max() > 1  # no clamping to [0, 1]
    # Saturation and hue alone leave a single-channel spectrogram unchanged.
    p = AudioAugParams(color_jitter=True, saturation=0.6, hue=-0.1)
    assert torch.equal(AudioAugmenter().apply(x, p), x)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 0, 1, 2), (1, 3, 2, 0), (2, 1, 0, 3)])
def test_audio_colour_jitter_faithful_matches_torchvision_on_three_channels(order):
    x = fbank()
    p = AudioAugParams(
        color_jitter=True, jitter_order=order, brightness=0.8, contrast=1.2, saturation=0.7, hue=0.08
    )
    ref = x.expand(3, -1, -1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    factors = (0.8, 1.2, 0.7, 0.08)
    for op_id in order:
        ref = ops[op_id](ref, factors[op_id])
    out = AudioAugmenter(faithful=True).apply(x, p)
    assert out.shape == (3, FRAMES, BINS)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)
    assert out.min() >= 0  # clamped below, as the authors' pipeline
    if order[0] == 3:  # hue first leaves red unclamped and clamps green and blue, so the channels part ways
        assert not torch.equal(out[0], out[1])


@pytest.mark.parametrize("sigma", [0.1, 0.9, 1.0, 1.7, 2.0])
def test_blur_matches_torchvision_gaussian_blur(sigma):
    x = fbank()
    k = 2 * math.ceil(sigma) + 1
    out = AudioAugmenter().apply(x, AudioAugParams(blur=True, sigma=sigma))
    ref = TF.gaussian_blur(x[None], [k, k], [sigma, sigma])[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_audio_flip_reverses_the_mel_bins():
    x = fbank()
    assert torch.equal(AudioAugmenter().apply(x, AudioAugParams(flip=True)), x.flip(-1))


def test_audio_full_pipeline_matches_a_step_by_step_reference():
    x = fbank()
    p = ALL_ON_AUDIO
    ref = x.clone()
    ref[100:250] = 0.0
    ref[:, 30:70] = 0.0
    ref = torch.roll(ref, -300, dims=0)
    ref = TF.resized_crop(ref[None], 200, 16, 512, 96, [FRAMES, BINS], antialias=True)
    ref = 1.25 * (0.75 * ref + 0.25 * ref.mean())
    ref = TF.gaussian_blur(ref, [5, 5], [1.5, 1.5])
    ref = ref[0].flip(-1)
    torch.testing.assert_close(AudioAugmenter().apply(x, p), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Visual operations against torchvision and Pillow


def torchvision_reference(img: torch.Tensor, p: VisualAugParams, size: int = 224) -> torch.Tensor:
    """The visual pipeline written with torchvision's functional tensor ops, one item at a time."""
    height, width = img.shape[-2:]
    top, left, h, w = p.crop_box if p.crop else (0.0, 0.0, 1.0, 1.0)
    box = round(top * height), round(left * width), round(h * height), round(w * width)
    out = TF.resized_crop(img, *box, [size, size], antialias=True)
    if p.color_jitter:
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        factors = (p.brightness, p.contrast, p.saturation, p.hue)
        for op_id in p.jitter_order:
            out = ops[op_id](out, factors[op_id])
    if p.blur:
        k = 2 * math.ceil(p.sigma) + 1
        out = TF.gaussian_blur(out, [k, k], [p.sigma, p.sigma])
    if p.flip:
        out = TF.hflip(out)
    return TF.rgb_to_grayscale(out, num_output_channels=3) if p.grayscale else out


@pytest.mark.parametrize("input_size", [(224, 224), (300, 400), (120, 160)])
def test_visual_pipeline_matches_torchvision(input_size):
    img = image(5, input_size)
    colour = dataclasses.replace(ALL_ON_VISUAL, grayscale=False)
    for p in (ALL_ON_VISUAL, colour, *VisualAugmenter().sample_batch(12, generator(5), input_size)):
        out = VisualAugmenter().apply(img, p)
        assert out.shape == (3, 224, 224)
        torch.testing.assert_close(out, torchvision_reference(img, p), rtol=0, atol=2e-5)
    assert not torch.allclose(
        VisualAugmenter().apply(img, colour)[0], VisualAugmenter().apply(img, colour)[1]
    )


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.37, 2.0])
def test_visual_faithful_blur_emulates_pillow(sigma):
    pixels = (image(6) * 255).round().to(torch.uint8)
    ref = TF.to_tensor(TF.to_pil_image(pixels).filter(ImageFilter.GaussianBlur(radius=sigma)))
    x = pixels.float() / 255
    p = VisualAugParams(blur=True, sigma=sigma)
    faithful = VisualAugmenter(faithful=True).apply(x, p)
    default = VisualAugmenter().apply(x, p)
    # Pillow rounds to uint8 after each of its six box passes; the float emulation stays within that rounding.
    assert (faithful - ref).abs().mean() < 0.6 / 255 and (faithful - ref).abs().max() < 3 / 255
    if sigma >= 1:  # the short torchvision kernel is a much weaker blur than Pillow's at the same sigma
        assert (default - ref).abs().mean() > 2 * (faithful - ref).abs().mean()


def test_visual_faithful_contrast_rounds_the_mean_like_pillow():
    pixels = (image(8) * 255).round().to(torch.uint8)
    ref = TF.to_tensor(TF.adjust_contrast(Image.fromarray(pixels.permute(1, 2, 0).numpy()), 0.55))
    p = VisualAugParams(color_jitter=True, contrast=0.55)
    x = pixels.float() / 255
    faithful = VisualAugmenter(faithful=True).apply(x, p)
    default = VisualAugmenter().apply(x, p)
    assert (faithful - ref).abs().max() <= 1.01 / 255
    grey_mean = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
    torch.testing.assert_close(default, (0.55 * x + 0.45 * grey_mean).clamp(0, 1), rtol=0, atol=1e-6)


def test_visual_grayscale_uses_itu_601_weights():
    img = image(9)
    out = VisualAugmenter().apply(img, VisualAugParams(grayscale=True))
    grey = 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    for channel in range(3):
        torch.testing.assert_close(out[channel], grey, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Distribution against the authors' samplers


AUDIO_FLAGS = {0: 0.8, 5: 0.8, 12: 0.8, 21: 0.5, 23: 0.5}
VISUAL_FLAGS = {5: 0.8, 14: 0.5, 16: 0.5, 17: 0.2}
# Continuous (or many-valued) entries and the flag that switches each on.
AUDIO_CONTINUOUS = {
    1: 0,
    2: 0,
    3: 0,
    4: 0,
    6: 5,
    8: 7,
    9: 7,
    10: 7,
    11: 7,
    17: 12,
    18: 12,
    19: 12,
    20: 12,
    22: 21,
}
VISUAL_CONTINUOUS = {1: 0, 2: 0, 3: 0, 4: 0, 10: 5, 11: 5, 12: 5, 13: 5, 15: 14}
KS_ALPHA = 1e-3  # fixed seed; with 14 + 9 entries plus derived ones, a correct sampler fails by chance < 5 % per seed


def _audio_derived(v: torch.Tensor) -> dict[str, torch.Tensor]:
    on = v[:, 0] == 1
    return {
        "time-mask length": (v[on, 2] - v[on, 1]),
        "frequency-mask length": (v[on, 4] - v[on, 3]),
        "crop area": v[:, 10] * v[:, 11],  # (h / F) (w / T) = h w / (T F), the crop's area fraction
        "crop aspect": (v[:, 11] * 1024) / (v[:, 10] * 128),
    }


def _visual_derived(v: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "crop area": v[:, 3] * v[:, 4],
        "crop aspect": v[:, 4] / v[:, 3],
        "crop bottom": v[:, 1] + v[:, 3],
    }


@pytest.mark.parametrize(
    "modality, key, flags, continuous, order_slots, derived",
    [
        ("audio", "sampler.audio", AUDIO_FLAGS, AUDIO_CONTINUOUS, (12, range(13, 17)), _audio_derived),
        ("visual", "sampler.visual", VISUAL_FLAGS, VISUAL_CONTINUOUS, (5, range(6, 10)), _visual_derived),
    ],
)
def test_sampler_matches_the_authors_distribution(
    parity, modality, key, flags, continuous, order_slots, derived
):
    reference = parity[key]
    aug = AudioAugmenter() if modality == "audio" else VisualAugmenter()
    ours = aug.sample_vectors(reference.shape[0], generator(2024))
    assert ours.shape == reference.shape
    # Flag rates: ours on 200,000 draws (so our own sampling error is ~0.1 point) against theirs on 20,000.
    many = aug.sample_vectors(200_000, generator(2025))
    for index, p in flags.items():
        ours_rate, their_rate = many[:, index].mean().item(), reference[:, index].mean().item()
        assert abs(ours_rate - their_rate) < 0.01, (index, ours_rate, their_rate)
        assert abs(ours_rate - p) < 0.005, (index, ours_rate, p)
    assert (many[:, 0] == 1).all() if modality == "visual" else (many[:, 7] == 1).all()
    # Colour-jitter order slots: each id in each slot at the same rate (discrete, so rates instead of KS).
    gate, slots = order_slots
    for slot in slots:
        for value in range(4):
            ours_rate = (many[many[:, gate] == 1, slot] == value).float().mean().item()
            their_rate = (reference[reference[:, gate] == 1, slot] == value).float().mean().item()
            assert abs(ours_rate - their_rate) < 0.01, (slot, value, ours_rate, their_rate)
    # Continuous entries where their augmentation is on: two-sample KS at n = 20,000, and equal ranges.
    for index, gate in continuous.items():
        a = ours[ours[:, gate] == 1, index].numpy()
        b = reference[reference[:, gate] == 1, index].numpy()
        assert ks_2samp(a, b).pvalue > KS_ALPHA, (modality, index)
        spread = b.max() - b.min()
        # The crop offsets have thin upper tails, so the largest of ~20,000 draws moves by a few percent of the range.
        assert abs(a.min() - b.min()) <= 0.04 * spread and abs(a.max() - b.max()) <= 0.04 * spread, (
            index,
            a,
            b,
        )
    # Joint structure: mask lengths and crop geometry.
    for name, values in derived(ours).items():
        assert ks_2samp(values.numpy(), derived(reference)[name].numpy()).pvalue > KS_ALPHA, (modality, name)


def test_sample_vectors_is_vectorized_and_handles_zero():
    assert AudioAugmenter().sample_vectors(0).shape == (0, 24)
    assert VisualAugmenter().sample_vectors(0).shape == (0, 18)
    big = AudioAugmenter().sample_vectors(50_000, generator(0))
    assert big.shape == (50_000, 24) and torch.isfinite(big).all()


def test_crop_fallback_when_no_try_fits():
    # A wide, short input with a tall aspect range: every try fails, torchvision clamps to the nearest ratio, centred.
    aug = VisualAugmenter(crop_ratio=(4.0, 5.0), crop_scale=(0.9, 1.0))
    v = aug.sample_vectors(50, generator(0), input_size=(100, 40))
    # width 40 / ratio 4 -> height 10, centred: top (100 - 10) // 2 = 45
    assert torch.allclose(v[:, 1:5], torch.tensor([[0.45, 0.0, 0.1, 1.0]]).expand(50, 4))


# ---------------------------------------------------------------------------------------------------------------------
# Configuration and errors


def test_for_config_scales_to_small_presets():
    cfg = EquiAVConfig.from_preset("equiav-tiny-digits")
    audio = AudioAugmenter.for_config(cfg)
    assert audio.config.target_length == 128 and audio.config.num_mel_bins == 64
    assert audio.config.time_mask == 24 and audio.config.freq_mask == 24
    assert audio.config.crop_ratio == pytest.approx((0.4, 0.75))
    x = fbank(0, 128, 64)
    params = audio.sample_batch(20, generator(0))
    out = audio.apply(x.expand(20, -1, -1), params)
    assert out.shape == (20, 128, 64)
    v = audio.vector(params)
    assert (v[:, 2] <= 127).all() and (v[:, 10] <= 2).all() and (v[:, 11] <= 0.5).all()
    visual = VisualAugmenter.for_config(cfg)
    assert visual.apply(image(0, (40, 50)), visual.sample(generator(0))).shape == (3, 32, 32)
    default = AudioAugmenter.for_config(EquiAVConfig())
    assert default.config == AudioAugmentConfig()


def test_bad_inputs_raise_typed_errors():
    audio, visual = AudioAugmenter(), VisualAugmenter()
    with pytest.raises(InvalidInputError, match="audio input must have shape"):
        audio.apply(torch.zeros(1000, 128), AudioAugParams())
    with pytest.raises(InvalidInputError, match="floating-point"):
        audio.apply(torch.zeros(1024, 128, dtype=torch.int64), AudioAugParams())
    with pytest.raises(InvalidInputError, match="sequence of 2"):
        audio.apply(torch.zeros(2, 1024, 128), [AudioAugParams()])
    with pytest.raises(InvalidInputError, match="single"):
        audio.apply(torch.zeros(1024, 128), [AudioAugParams()])
    with pytest.raises(InvalidInputError, match="crop box"):
        audio.apply(torch.zeros(1024, 128), AudioAugParams(crop=True, crop_box=(1000, 0, 100, 128)))
    with pytest.raises(InvalidInputError, match="jitter_order"):
        visual.apply(image(), VisualAugParams(color_jitter=True, jitter_order=(0, 0, 1, 2)))
    with pytest.raises(InvalidInputError, match=r"shape \(3, H, W\)"):
        visual.apply(torch.zeros(1, 224, 224), VisualAugParams())
    bad = audio.identity_vector()
    bad[12] = 0.5
    with pytest.raises(InvalidInputError, match="entry 12 is a flag"):
        audio.decode(bad)
    with pytest.raises(InvalidInputError, match=r"shape \(24,\)"):
        audio.decode(torch.zeros(18))
    bad = visual.sample_vectors(1, generator(0))[0]
    bad[5], bad[6:10] = 1.0, torch.tensor([0.0, 1.0, 1.0, 3.0])
    with pytest.raises(InvalidInputError, match="permutation"):
        visual.decode(bad)
    with pytest.raises(InvalidInputError, match="non-negative"):
        audio.sample_vectors(-1)
    with pytest.raises(ConfigError, match="time_mask"):
        AudioAugmentConfig(target_length=128, num_mel_bins=64)
    with pytest.raises(ConfigError, match="p_gray"):
        VisualAugmentConfig(p_gray=1.5)
    with pytest.raises(ConfigError, match="audio_aug_dim"):
        AudioAugmenter.for_config(EquiAVConfig(audio_aug_dim=21))


# ---------------------------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    for faithful in (False, True):
        audio, visual = AudioAugmenter(faithful=faithful), VisualAugmenter(faithful=faithful)
        a_params = audio.sample_batch(8, generator(1))
        v_params = visual.sample_batch(8, generator(2), input_size=(256, 320))
        x = torch.stack([fbank(k) for k in range(8)])
        img = torch.stack([image(k, (256, 320)) for k in range(8)])
        a_gpu = audio.apply(x.cuda(), a_params)
        v_gpu = visual.apply(img.cuda(), v_params)
        assert a_gpu.is_cuda and v_gpu.is_cuda
        torch.testing.assert_close(a_gpu.cpu(), audio.apply(x, a_params), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v_gpu.cpu(), visual.apply(img, v_params), rtol=1e-4, atol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    vectors = AudioAugmenter().sample_vectors(1000, g)
    assert vectors.is_cuda and vectors.shape == (1000, 24)
    assert AudioAugmenter().decode(vectors[:3]) == AudioAugmenter().decode(vectors[:3].cpu())
    assert np.isclose(vectors[:, 0].float().mean().item(), 0.8, atol=0.05)
