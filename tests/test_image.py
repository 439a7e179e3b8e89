"""Image front-end: exact parity with torchvision's Resize/CenterCrop/ToTensor/Normalize, mode conversion, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from equiav.config import EquiAVConfig
from equiav.errors import ImageDecodeError, InvalidInputError
from equiav.image import load_image, preprocess_image, preprocess_images, resized_size, to_rgb

SIZES = [
    (300, 200),
    (200, 300),
    (224, 224),
    (640, 480),
    (1000, 225),
    (31, 17),
    (1, 1),
    (500, 223),
    (225, 224),
]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def torchvision_pipeline(config: EquiAVConfig):
    """The authors' transform, built from torchvision itself (the reference the PIL path must equal)."""
    T = pytest.importorskip("torchvision.transforms")
    mode = getattr(T.InterpolationMode, config.image_interpolation.upper())
    return T.Compose(
        [
            T.Resize(config.image_resize, interpolation=mode),
            T.CenterCrop(config.image_size),
            T.ToTensor(),
            T.Normalize(config.image_mean, config.image_std),
        ]
    )


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> list[tuple[int, ...]]:
    """RGB pixel values in row-major order."""
    return [tuple(int(v) for v in pixel) for pixel in np.asarray(image).reshape(-1, 3)]


def smooth_image(width: int, height: int) -> np.ndarray:
    """A photo-like (band-limited) uint8 image: sums of low-frequency sinusoids."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(7 * x + 3 * y + k) * np.cos(5 * y - 2 * x * k) for k in range(3)]
    return np.round(127.5 + 120 * np.stack(channels, axis=-1)).astype(np.uint8)


@pytest.mark.parametrize(
    "resize, size, interpolation",
    [
        (224, 224, "bicubic"),
        (256, 224, "bicubic"),
        (200, 224, "bicubic"),
        (224, 224, "bilinear"),
        (64, 64, "nearest"),
    ],
)
def test_pil_path_equals_torchvision(resize: int, size: int, interpolation: str) -> None:
    config = EquiAVConfig(image_resize=resize, image_size=size, image_interpolation=interpolation)
    reference = torchvision_pipeline(config)
    for seed, (width, height) in enumerate(SIZES):
        image = random_image(width, height, seed)
        ours = preprocess_image(image, config)
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        assert torch.equal(ours, reference(image)), (width, height)


def test_resized_size_follows_torchvision_rounding() -> None:
    assert resized_size(200, 300, 224) == (224, 336)
    assert resized_size(300, 200, 224) == (336, 224)
    assert resized_size(223, 500, 224) == (224, 502)  # 224 * 500 / 223 = 502.24 -> 502
    assert resized_size(3, 1000, 224) == (224, 74666)


def test_path_and_uint8_array_inputs_match_pil(tmp_path: Path) -> None:
    image = random_image(320, 240, seed=3)
    path = tmp_path / "photo.png"
    image.save(path)
    expected = preprocess_image(image)
    assert torch.equal(preprocess_image(path), expected)
    assert torch.equal(preprocess_image(str(path)), expected)
    array = np.asarray(image)
    assert torch.equal(preprocess_image(array), expected)
    assert torch.equal(preprocess_image(np.ascontiguousarray(array.transpose(2, 0, 1))), expected)
    gray = np.asarray(image.convert("L"))
    assert torch.equal(preprocess_image(gray), preprocess_image(image.convert("L")))
    assert torch.equal(preprocess_image(gray[..., None]), preprocess_image(gray))


def test_tensor_path_layouts_and_closeness_to_pil() -> None:
    array = smooth_image(400, 300)
    chw = torch.from_numpy(array).permute(2, 0, 1)
    from_chw = preprocess_image(chw)
    assert torch.equal(preprocess_image(chw.permute(1, 2, 0)), from_chw)
    assert torch.allclose(preprocess_image(chw.float() / 255), from_chw, atol=1e-5)
    assert torch.allclose(preprocess_image(array.astype(np.float32) / 255), from_chw, atol=1e-5)
    # Same kernel, but PIL rounds to 8 bits between and after its two passes: close, not equal.
    difference = (from_chw - preprocess_image(array)).abs()
    assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.1


def test_ambiguous_layout_follows_library_convention() -> None:
    # A 3x5x3 array: numpy reads it as (H=3, W=5, C=3), torch as (C=3, H=5, W=3).
    values = np.random.default_rng(1).random((3, 5, 3)).astype(np.float32)
    as_numpy = preprocess_image(values)
    as_torch = preprocess_image(torch.from_numpy(values))
    assert torch.allclose(as_numpy, preprocess_image(torch.from_numpy(values).permute(2, 0, 1)))
    assert not torch.allclose(as_numpy, as_torch)


def test_alpha_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, half of it fully transparent
    rgba[:, :4, 3] = 255
    out = to_rgb(Image.fromarray(rgba, "RGBA"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((7, 7)) == (255, 255, 255)
    half = to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 128)))
    assert half.getpixel((0, 0)) == (255, 127, 127)
    white = (1 - MEAN) / STD
    tensor = preprocess_image(torch.from_numpy(rgba).float() / 255)  # same composite on the tensor path
    assert torch.allclose(tensor[:, :, -1], white[:, :, 0].expand(3, 224), atol=1e-5)
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert pixels(to_rgb(palette)) == [(255, 255, 255), (0, 255, 0)]
    assert to_rgb(Image.new("LA", (1, 1), (0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_high_depth_modes_are_rescaled() -> None:
    ramp16 = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    assert pixels(to_rgb(Image.fromarray(ramp16))) == [(v, v, v) for v in (0, 1, 128, 255)]
    as_int = Image.fromarray(ramp16.astype(np.int32))
    assert as_int.mode == "I"
    assert pixels(to_rgb(as_int)) == [(v, v, v) for v in (0, 1, 128, 255)]
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert pixels(to_rgb(unit)) == [(v, v, v) for v in (0, 128, 255)]
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))
    assert pixels(to_rgb(wide)) == [(v, v, v) for v in (0, 128, 255)]


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"])
def test_other_modes_use_pil_conversion(mode: str) -> None:
    image = random_image(16, 8).convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (16, 8)
    assert pixels(out) == pixels(image.convert("RGB"))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = random_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    image = random_image(200, 150)
    truncated = {}
    for fmt in ("PNG", "JPEG"):
        full = tmp_path / f"full.{fmt.lower()}"
        image.save(full, format=fmt)
        truncated[fmt] = tmp_path / f"cut.{fmt.lower()}"
        truncated[fmt].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    for path in (tmp_path / "missing.png", tmp_path, text, *truncated.values()):
        with pytest.raises(ImageDecodeError, match=path.name):
            load_image(path)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_image(truncated["PNG"])


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match=r"big\.png.*10000 pixels"):
        load_image(path)


def test_large_normal_image_loads(tmp_path: Path) -> None:
    path = tmp_path / "large.png"
    Image.new("L", (8000, 8000), 90).save(path, compress_level=1)
    image = load_image(path)
    assert image.size == (8000, 8000) and image.getpixel((7999, 7999)) == (90, 90, 90)


def test_invalid_arrays_and_tensors() -> None:
    cases = {
        "NaN": np.full((8, 8, 3), np.nan, dtype=np.float32),
        "infinite": torch.full((3, 8, 8), float("inf")),
        "lie in": np.full((8, 8, 3), 255.0),  # a 0..255 image stored as float
        "dtype int16": np.zeros((8, 8, 3), dtype=np.int16),
        "dtype torch.bool": torch.zeros(3, 8, 8, dtype=torch.bool),
        r"shape \(8, 8, 5\)": np.zeros((8, 8, 5), dtype=np.uint8),
        r"shape \(2, 3, 8, 8\)": torch.zeros(2, 3, 8, 8),
        r"shape \(8,\)": np.zeros(8, dtype=np.uint8),
        r"shape \(0, 8, 3\)": np.zeros((0, 8, 3), dtype=np.uint8),
        "got list": [[0, 1], [1, 0]],
    }
    for message, value in cases.items():
        with pytest.raises(InvalidInputError, match=message):
            preprocess_image(value)


def test_batch_preprocessing() -> None:
    images = [random_image(120, 90, 1), np.asarray(random_image(64, 64, 2)), torch.rand(3, 50, 70)]
    batch = preprocess_images(images)
    assert batch.shape == (3, 3, 224, 224)
    for row, image in zip(batch, images):
        assert torch.equal(row, preprocess_image(image))
    with pytest.raises(InvalidInputError, match=r"images\[1\]"):
        preprocess_images([images[0], np.zeros((8, 8, 5), dtype=np.uint8)])
    with pytest.raises(InvalidInputError, match="empty"):
        preprocess_images([])
    with pytest.raises(InvalidInputError, match="list of images"):
        preprocess_images(torch.rand(2, 3, 8, 8))


def test_video_frame_pipeline_matches_torchvision(shared_dir: Path) -> None:
    pytest.importorskip("av")
    from equiav.video import read_video_frames

    [frame] = read_video_frames(shared_dir / "data" / "av" / "nasa_13013.mp4")
    config = EquiAVConfig()
    assert torch.equal(preprocess_image(frame, config), torchvision_pipeline(config)(frame))
