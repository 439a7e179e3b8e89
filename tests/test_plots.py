"""The pictures people read: labelled similarity plots (matplotlib and the Pillow fallback), the localization figure,
the demo's PNG on one's own files and the names ``equiav eval retrieval`` prints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from equiav.demo import demo_set
from equiav.demo import main as demo_main
from equiav.localize import heat_map_figure, image_origin, overlay
from equiav.retrieval import format_table, plot_similarity, short_name
from equiav.training.evaluate import _report


def _names(count: int, suffix: str) -> list[str]:
    return [f"a_rather_long_recording_name_{i:03d}{suffix}" for i in range(count)]


def _plot(tmp_path: Path, count: int, name: str) -> np.ndarray:
    """Plot a random count x count matrix with file names and return the written PNG's pixels."""
    similarity = torch.rand(count, count, generator=torch.Generator().manual_seed(count)) * 2 - 1
    path = plot_similarity(
        similarity,
        tmp_path / name,
        query_name="audio",
        gallery_name="images",
        query_labels=_names(count, ".wav"),
        gallery_labels=_names(count, ".png"),
    )
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _colourful_column(pixels: np.ndarray, start: float) -> int:
    """The most distinct saturated colours in one pixel column right of ``start`` (a fraction of the width): a
    colour bar's gradient has many, text (grey) and a 2 x 2 matrix have few."""
    best = 0
    for column in range(int(pixels.shape[1] * start), pixels.shape[1]):
        values = pixels[:, column].astype(int)
        saturated = values[values.max(axis=1) - values.min(axis=1) > 60]
        best = max(best, len({tuple(v) for v in saturated}))
    return best


def _check_plots(tmp_path: Path) -> None:
    small, large = _plot(tmp_path, 2, "two.png"), _plot(tmp_path, 100, "hundred.png")
    assert small.shape[0] > 150 and small.shape[1] > 300  # labels, title and colour bar around 2 x 2 cells
    assert large.shape[0] > 2.5 * small.shape[0] and large.shape[1] > 2.5 * small.shape[1]
    assert large.shape[0] > 100 * 12  # every row keeps a legible tick label
    assert _colourful_column(small, 0.6) > 20


def test_similarity_plot_is_labelled_and_sized_to_its_items(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    _check_plots(tmp_path)


def test_similarity_plot_without_matplotlib_uses_pillow(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    _check_plots(tmp_path)


def test_similarity_plot_samples_large_matrices_and_checks_labels(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = plot_similarity(torch.rand(500, 800), tmp_path / "big.png", max_items=50)
    with Image.open(path) as picture:
        assert picture.width < 2000 and picture.height < 2000
    with pytest.raises(ValueError, match="one label per row"):
        plot_similarity(torch.rand(3, 3), tmp_path / "bad.png", query_labels=["a", "b"])


def test_short_name_keeps_start_and_extension() -> None:
    assert short_name("dog.wav") == "dog.wav"
    shortened = short_name("a_rather_long_recording_name_017.wav")
    assert len(shortened) == 24 and shortened.startswith("a_rather") and shortened.endswith("name_017.wav")


def test_heat_map_is_blended_over_the_image_with_a_colour_bar() -> None:
    pixels = np.zeros((96, 96, 3), dtype=np.uint8)
    pixels[:, 48:] = 255  # left half black, right half white
    image = Image.fromarray(pixels)
    heat = torch.linspace(-0.2, 0.6, 16).reshape(4, 4)
    figure = np.asarray(heat_map_figure(image, heat, "sound of a.wav in b.png", alpha=0.5))
    left, top = image_origin()
    region = figure[top : top + 96, left : left + 96].astype(int)
    np.testing.assert_array_equal(region, np.asarray(overlay(image, heat, 0.5)))
    brighter = region[:, 48:].mean(axis=2) - region[:, :48].mean(axis=2)
    assert brighter.mean() > 100  # the image's white half shows through the heat map, half opaque
    assert figure.shape[0] > 96 and figure.shape[1] > 96 + 100
    assert _colourful_column(figure, (left + 96) / figure.shape[1]) > 20


def test_demo_on_own_files_writes_a_labelled_picture(tmp_path, capsys) -> None:
    audio, _, images, _ = demo_set()
    out = tmp_path / "mine.png"
    demo_main(["--audio", *map(str, audio[:2]), "--image", *map(str, images[:2]), "--output", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.width > 300 and picture.height > 150  # was 72 x 84 pixels of bare cells


@pytest.mark.parametrize(("extra", "visual"), [({"split": "val"}, "image"), ({"frame": 5}, "video frame")])
def test_retrieval_report_names_the_visual_items(tmp_path, capsys, monkeypatch, extra, visual) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    metrics = {"R@1": 50.0, "median_rank": 1.5, "mean_rank": 2.0, "num_queries": 2}
    result = {"level": "class", **extra, "num_audio": 2, "num_video": 2}
    result.update(video_to_audio=metrics, audio_to_video=metrics)
    args = argparse.Namespace(output=None, plot=str(tmp_path / "sim.png"))
    names = (["a.wav", "b.wav"], ["a.png", "b.png"])
    _report(result, args, torch.eye(2), torch.eye(2), names)
    printed = capsys.readouterr().out
    assert f"{visual} -> audio" in printed and f"audio -> {visual}" in printed
    assert f"2 {visual} items" in printed and "video_to_audio" not in printed
    assert (tmp_path / "sim.png").read_bytes()[:4] == b"\x89PNG"


def test_format_table_keeps_keys_without_names() -> None:
    metrics = {"R@1": 1.0, "num_queries": 1}
    table = format_table({"video_to_audio": metrics, "audio_to_video": metrics})
    assert "video_to_audio" in table
    renamed = format_table({"video_to_audio": metrics}, {"video_to_audio": "video frame -> audio"})
    assert "video frame -> audio" in renamed and "video_to_audio" not in renamed
