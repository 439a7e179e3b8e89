"""Zero-shot cross-modal retrieval metrics: similarity matrices, exact ranks, recall at k and median rank; the
labelled similarity picture (``plot_similarity``) and the Pillow drawing pieces that ``equiav.localize`` shares.

A query's rank is the 0-based position of its first correct gallery item when the gallery is sorted by decreasing
similarity. It is computed by counting, not by sorting: ``rank = #{wrong items scored above the best correct one}``,
so every query contributes exactly one rank and recall at k can never exceed 100 % (the authors' ``retrieval.py``
located the true score by equality after sorting, and tied scores gave a query several hits; reference bug B20).

Ties between the best correct item and wrong items are resolved by ``ties``:

* ``"pessimistic"`` (default): every tied wrong item counts as ranked above the correct one. A collapsed model that
  maps everything to the same embedding then gets the worst rank, not a perfect score.
* ``"optimistic"``: tied wrong items count as ranked below (what sorting with the correct item first would give).

Instance-level retrieval (no labels): query ``i`` is correct only with gallery item ``i`` (the diagonal). Class-level
retrieval (labels given): every gallery item with the query's label is correct, and the rank is that of the highest
scored one; this is the protocol for data such as AV-digits, where the two modalities share only the class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checks import all_finite
from .errors import InvalidInputError

TIE_RULES = ("pessimistic", "optimistic")
DEFAULT_KS = (1, 5, 10)
_ROW_CHUNK = 1024

# Similarity pictures: cell sides (inches for matplotlib, pixels for Pillow) between a minimum that keeps a tick
# label legible and a maximum for a handful of items; the matrix aims at about _MATRIX_IN / _MATRIX_PX across.
_MIN_CELL_IN, _MAX_CELL_IN, _MATRIX_IN = 0.16, 0.8, 6.0
_MIN_CELL_PX, _MAX_CELL_PX, _MATRIX_PX, _MIN_BAR_PX, _BAR_PX = 14, 60, 480, 120, 18
_CHAR_IN, _LABEL_IN, _COLORBAR_IN, _TITLE_IN, _TICK_PT = 0.07, 0.5, 1.3, 0.6, 8
_NAME_LIMIT, _ANNOTATE_UP_TO = 24, 12


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"{name} must be a non-empty tensor of shape (N, D), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be floating point, got dtype {x.dtype}")
    if not all_finite(x):
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return x


def similarity_matrix(queries: torch.Tensor, gallery: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Cosine similarities (Q, G) in float64 between query rows (Q, D) and gallery rows (G, D).

    float64 keeps near-equal scores apart that float32 rounding would turn into ties. With ``normalize=False`` the
    rows are used as given (plain dot products).
    """
    queries = _as_matrix(queries, "queries").double()
    gallery = _as_matrix(gallery, "gallery").double()
    if queries.shape[1] != gallery.shape[1]:
        raise InvalidInputError(
            f"queries and gallery must have the same embedding size, got {queries.shape[1]} and {gallery.shape[1]}"
        )
    if normalize:
        queries, gallery = F.normalize(queries, dim=1), F.normalize(gallery, dim=1)
    return queries @ gallery.T


def _label_list(labels: Sequence | torch.Tensor, count: int, name: str) -> list:
    values = labels.flatten().tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(values) != count:
        raise InvalidInputError(f"{name} must have one label per row ({count}), got {len(values)}")
    return values


def _label_indices(
    query_labels: Sequence | torch.Tensor,
    gallery_labels: Sequence | torch.Tensor,
    num_queries: int,
    num_gallery: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both label lists as int64 indices of one shared vocabulary (labels may be ints, strings or any hashable)."""
    vocabulary: dict = {}
    encoded = []
    for labels, count, name in (
        (query_labels, num_queries, "query_labels"),
        (gallery_labels, num_gallery, "gallery_labels"),
    ):
        values = _label_list(labels, count, name)
        try:
            encoded.append(
                torch.tensor([vocabulary.setdefault(v, len(vocabulary)) for v in values], dtype=torch.int64)
            )
        except TypeError as error:
            raise InvalidInputError(f"{name} must hold hashable labels (ints or strings): {error}") from error
    return encoded[0], encoded[1]


def _correct_mask(
    rows: slice, num_gallery: int, query_labels: torch.Tensor | None, gallery_labels: torch.Tensor | None
) -> torch.Tensor:
    if query_labels is None:
        query_index = torch.arange(rows.start, rows.stop)
        return query_index[:, None] == torch.arange(num_gallery)[None, :]
    return query_labels[rows, None] == gallery_labels[None, :]


def ranks(
    similarity: torch.Tensor,
    query_labels: Sequence | torch.Tensor | None = None,
    gallery_labels: Sequence | torch.Tensor | None = None,
    ties: str = "pessimistic",
) -> torch.Tensor:
    """Exact 0-based rank (Q,) of the first correct gallery item for every query row of ``similarity`` (Q, G).

    Without labels query ``i`` matches gallery item ``i`` only (needs Q <= G); with labels any gallery item of the
    same label matches. ``ties`` is ``"pessimistic"`` or ``"optimistic"`` (see the module docstring).
    """
    if ties not in TIE_RULES:
        raise InvalidInputError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2 or similarity.numel() == 0:
        shape = tuple(similarity.shape) if isinstance(similarity, torch.Tensor) else type(similarity).__name__
        raise InvalidInputError(f"similarity must be a non-empty (queries, gallery) matrix, got {shape}")
    if torch.isnan(similarity).any():
        raise InvalidInputError("similarity contains NaN values")
    num_queries, num_gallery = similarity.shape
    if (query_labels is None) != (gallery_labels is None):
        raise InvalidInputError(
            "give both query_labels and gallery_labels (class-level) or neither (instance-level)"
        )
    if query_labels is None:
        if num_queries > num_gallery:
            raise InvalidInputError(
                f"instance-level retrieval pairs query i with gallery item i, but there are {num_queries} queries "
                f"and only {num_gallery} gallery items"
            )
        q_labels = g_labels = None
    else:
        q_labels, g_labels = _label_indices(query_labels, gallery_labels, num_queries, num_gallery)
    out = torch.empty(num_queries, dtype=torch.int64)
    for start in range(0, num_queries, _ROW_CHUNK):
        rows = slice(start, min(start + _ROW_CHUNK, num_queries))
        scores = similarity[rows].cpu()
        correct = _correct_mask(rows, num_gallery, q_labels, g_labels)
        no_match = ~correct.any(dim=1)
        if no_match.any():
            first = start + int(no_match.nonzero()[0, 0])
            raise InvalidInputError(
                f"query {first} has no correct item in the gallery (its label does not occur there)"
            )
        best = scores.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
        above = scores >= best if ties == "pessimistic" else scores > best
        out[rows] = (above & ~correct).sum(dim=1)
    return out


def summarize_ranks(rank: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall at each k in percent (``R@k``), median and mean rank (1-based, as the authors' MR) and the query count."""
    if rank.dim() != 1 or rank.numel() == 0:
        raise InvalidInputError(f"rank must be a non-empty 1-D tensor, got shape {tuple(rank.shape)}")
    for k in ks:
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"every k in ks must be a positive integer, got {k!r}")
    one_based = rank.double() + 1.0
    ordered = one_based.sort().values
    n = ordered.numel()
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    metrics = {f"R@{k}": 100.0 * (rank < k).double().mean().item() for k in ks}
    metrics.update(median_rank=median.item(), mean_rank=one_based.mean().item(), num_queries=n)
    return metrics


def retrieval_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: Sequence | torch.Tensor | None = None,
    gallery_labels: Sequence | torch.Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """R@k (percent), median rank and mean rank (1-based) of retrieving ``gallery`` rows with ``queries`` rows.

    Instance-level when no labels are given, class-level otherwise (see the module docstring).
    """
    similarity = similarity_matrix(queries, gallery)
    return summarize_ranks(ranks(similarity, query_labels, gallery_labels, ties=ties), ks)


def audio_visual_retrieval(
    audio: torch.Tensor,
    video: torch.Tensor,
    audio_labels: Sequence | torch.Tensor | None = None,
    video_labels: Sequence | torch.Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    ties: str = "pessimistic",
) -> dict[str, dict[str, float]]:
    """Both directions: ``video_to_audio`` (visual queries, audio gallery) and ``audio_to_video``.

    Without labels ``audio[i]`` and ``video[i]`` are the same clip (instance level). With ``audio_labels`` only, the
    rows are still paired clips and share those labels (class level). With both label lists the two sets may differ
    in size (class level, e.g. AV-digits: recordings and images of digits).
    """
    if video_labels is None:
        if audio.shape[0] != video.shape[0]:
            raise InvalidInputError(
                f"paired retrieval needs as many audio as video rows, got {audio.shape[0]} and {video.shape[0]}; "
                "give audio_labels and video_labels for class-level retrieval between sets of different sizes"
            )
        video_labels = audio_labels
    elif audio_labels is None:
        raise InvalidInputError("video_labels needs audio_labels too")
    similarity = similarity_matrix(video, audio)
    return {
        "video_to_audio": summarize_ranks(ranks(similarity, video_labels, audio_labels, ties=ties), ks),
        "audio_to_video": summarize_ranks(ranks(similarity.T, audio_labels, video_labels, ties=ties), ks),
    }


def format_table(results: dict[str, dict[str, float]], names: dict[str, str] | None = None) -> str:
    """A fixed-width text table of ``audio_visual_retrieval`` results, one line per direction.

    ``names`` prints a direction under another name (``{"video_to_audio": "image -> audio"}``); the keys of
    ``results`` stay as they are.
    """
    names = names or {}
    shown = {direction: names.get(direction, direction) for direction in results}
    width = max(16, max(len(name) for name in shown.values()) + 2)
    columns = [key for key in next(iter(results.values())) if key != "num_queries"]
    header = f"{'direction':<{width}}" + "".join(f"{name:>13}" for name in columns) + f"{'queries':>9}"
    lines = [header, "-" * len(header)]
    for direction, metrics in results.items():
        cells = "".join(f"{metrics[name]:>13.2f}" for name in columns)
        lines.append(f"{shown[direction]:<{width}}{cells}{int(metrics['num_queries']):>9}")
    return "\n".join(lines)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along a dark-blue -> red -> yellow ramp (the Pillow drawings' colours)."""
    stops = np.array(
        [[0, 0, 80], [40, 0, 160], [200, 20, 60], [255, 140, 0], [255, 255, 80]], dtype=np.float64
    )
    position = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def short_name(name: object, limit: int = _NAME_LIMIT) -> str:
    """``name`` as text of at most ``limit`` characters; a long one keeps its start and its end (the extension)."""
    text = str(name)
    if len(text) <= limit:
        return text
    tail = limit // 2
    return text[: limit - tail - 1] + "\u2026" + text[-tail:]


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _shown_items(count: int, max_items: int) -> list[int]:
    """At most ``max_items`` evenly spaced indices of ``count`` items (a class-sorted set keeps its blocks)."""
    return torch.linspace(0, count - 1, min(count, max_items)).round().long().unique().tolist()


def _tick_labels(labels: Sequence | None, shown: list[int], count: int, name: str) -> list[str]:
    """Shortened labels of the shown items; their 0-based numbers when no labels are given."""
    if labels is None:
        return [str(i) for i in shown]
    values = _label_list(labels, count, name)
    return [short_name(values[i]) for i in shown]


@dataclass(frozen=True)
class _Plot:
    """What a similarity picture shows: the (sub-sampled) scores, the tick labels, the axis names, the title."""

    scores: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    query_name: str
    gallery_name: str
    title: str

    @property
    def annotate(self) -> bool:
        """Small matrices print each score in its cell."""
        return max(self.scores.shape) <= _ANNOTATE_UP_TO


def plot_similarity(
    similarity: torch.Tensor,
    path: str | Path,
    title: str | None = None,
    query_name: str = "query",
    gallery_name: str = "gallery",
    max_items: int = 200,
    query_labels: Sequence | None = None,
    gallery_labels: Sequence | None = None,
) -> Path:
    """Save the similarity matrix (rows: queries, columns: gallery) as a labelled PNG heat map with a colour bar.

    ``query_labels`` / ``gallery_labels`` name the items on the ticks (file names, classes), shortened when long;
    without them the ticks are item numbers. The picture grows with the number of items so that 2 and 100 items
    are both readable; larger matrices show ``max_items`` evenly spaced rows and columns. Drawn with matplotlib
    (``pip install 'equiav[plot]'``) when it is installed, with Pillow otherwise.
    """
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2 or similarity.numel() == 0:
        raise InvalidInputError("similarity must be a non-empty (queries, gallery) matrix")
    rows = _shown_items(similarity.shape[0], max_items)
    cols = _shown_items(similarity.shape[1], max_items)
    scores = similarity.detach().cpu().double()[rows][:, cols].numpy()
    if not np.isfinite(scores).all():
        raise InvalidInputError("similarity contains NaN or infinite values")
    plot = _Plot(
        scores=scores,
        row_labels=_tick_labels(query_labels, rows, similarity.shape[0], "query_labels"),
        col_labels=_tick_labels(gallery_labels, cols, similarity.shape[1], "gallery_labels"),
        query_name=query_name,
        gallery_name=gallery_name,
        title=title or f"{query_name} -> {gallery_name} similarity",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    if plt is None:
        _draw_with_pillow(plot, path)
    else:
        _draw_with_matplotlib(plt, plot, path)
    return path


def _draw_with_matplotlib(plt, plot: _Plot, path: Path) -> None:
    """The heat map on axes sized from the item count and the longest tick label, colour bar on the right."""
    n_rows, n_cols = plot.scores.shape
    cell = min(_MAX_CELL_IN, max(_MIN_CELL_IN, _MATRIX_IN / max(n_rows, n_cols)))
    left = _LABEL_IN + _CHAR_IN * max(len(label) for label in plot.row_labels)
    bottom = _LABEL_IN + _CHAR_IN * max(len(label) for label in plot.col_labels)
    width, height = n_cols * cell, n_rows * cell
    fig_w, fig_h = left + width + _COLORBAR_IN, bottom + height + _TITLE_IN
    figure = plt.figure(figsize=(fig_w, fig_h))
    axes = figure.add_axes((left / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
    bar = figure.add_axes(((left + width + 0.2) / fig_w, bottom / fig_h, 0.2 / fig_w, height / fig_h))
    image = axes.imshow(plot.scores, cmap="viridis", aspect="auto", interpolation="nearest")
    figure.colorbar(image, cax=bar, label="cosine similarity")
    axes.set_xticks(range(n_cols), plot.col_labels, rotation=90, fontsize=_TICK_PT)
    axes.set_yticks(range(n_rows), plot.row_labels, fontsize=_TICK_PT)
    axes.set_xlabel(f"gallery: {plot.gallery_name}")
    axes.set_ylabel(f"query: {plot.query_name}")
    axes.set_title(plot.title)
    if plot.annotate:
        _annotate_cells(axes, plot.scores)
    figure.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)
    plt.close(figure)


def _annotate_cells(axes, scores: np.ndarray) -> None:
    """Write each score in its cell, dark on light cells and light on dark ones."""
    middle = (scores.min() + scores.max()) / 2
    for (row, col), value in np.ndenumerate(scores):
        color = "black" if value > middle else "white"
        axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=_TICK_PT, color=color)


def label_font(size: int):
    """Pillow's scalable default font (Pillow >= 10.1), or its fixed bitmap font on older versions."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _vertical_text(text: str, font, fill: str = "black"):
    """``text`` written bottom to top (for the y-axis name and the column ticks)."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width, height = _text_size(probe, text, font)
    label = Image.new("RGBA", (width + 4, height + 6), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((2, 0), text, fill=fill, font=font)
    return label.rotate(90, expand=True)


def _draw_with_pillow(plot: _Plot, path: Path) -> None:
    """The same picture without matplotlib: cells, tick labels, axis names, title and a colour bar with its scale."""
    from PIL import Image, ImageDraw

    n_rows, n_cols = plot.scores.shape
    cell = min(_MAX_CELL_PX, max(_MIN_CELL_PX, _MATRIX_PX // max(n_rows, n_cols)))
    font, small = label_font(14), label_font(min(12, max(8, cell - 2)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_w = max(_text_size(probe, label, small)[0] for label in plot.row_labels)
    col_h = max(_text_size(probe, label, small)[0] for label in plot.col_labels)
    left, top = 30 + row_w + 8, 40
    width, height = n_cols * cell, n_rows * cell
    bar_left = left + width + 20
    title_w = _text_size(probe, plot.title, font)[0]
    canvas_w = max(bar_left + 130, left + title_w + 10)
    canvas_h = max(top + height + 8 + col_h + 30, top + _MIN_BAR_PX + 10)
    canvas = Image.new("RGB", (canvas_w, canvas_h), "white")
    draw = ImageDraw.Draw(canvas)
    low, high = float(plot.scores.min()), float(plot.scores.max())
    scaled = (plot.scores - low) / max(high - low, 1e-12)
    cells = np.kron(heat_colors(scaled), np.ones((cell, cell, 1), dtype=np.uint8))
    canvas.paste(Image.fromarray(cells), (left, top))
    draw.text((left, 10), plot.title, fill="black", font=font)
    for i, label in enumerate(plot.row_labels):
        draw.text((left - 6, top + i * cell + cell // 2), label, fill="black", font=small, anchor="rm")
    for j, label in enumerate(plot.col_labels):
        tick = _vertical_text(label, small)
        canvas.paste(tick, (left + j * cell + (cell - tick.width) // 2, top + height + 6), tick)
    axis_x = f"gallery: {plot.gallery_name}"
    draw.text((left + width // 2, canvas.height - 6), axis_x, fill="black", font=font, anchor="ms")
    axis_y = _vertical_text(f"query: {plot.query_name}", font)
    canvas.paste(axis_y, (4, top + max(0, (height - axis_y.height) // 2)), axis_y)
    draw_colorbar(canvas, (bar_left, top, max(height, _MIN_BAR_PX)), (low, high), "cosine similarity", small)
    canvas.save(path)


def draw_colorbar(canvas, box: tuple[int, int, int], scale: tuple[float, float], name: str, font) -> None:
    """Draw on the Pillow image ``canvas`` a vertical ``heat_colors`` bar at ``box`` = (left, top, height), with
    its low, middle and high values of ``scale`` and its ``name``."""
    from PIL import Image, ImageDraw

    left, top, height = box
    low, high = scale
    ramp = np.linspace(1.0, 0.0, height)[:, None].repeat(_BAR_PX, axis=1)
    canvas.paste(Image.fromarray(heat_colors(ramp)), (left, top))
    draw = ImageDraw.Draw(canvas)
    for fraction in (0.0, 0.5, 1.0):
        y = top + round(fraction * (height - 1))
        value = high - fraction * (high - low)
        draw.line((left + _BAR_PX, y, left + _BAR_PX + 4, y), fill="black")
        draw.text((left + _BAR_PX + 7, y), f"{value:.3f}", fill="black", font=font, anchor="lm")
    label = _vertical_text(name, font)
    canvas.paste(label, (left + _BAR_PX + 60, top + max(0, (height - label.height) // 2)), label)


__all__ = [
    "audio_visual_retrieval",
    "draw_colorbar",
    "format_table",
    "heat_colors",
    "label_font",
    "plot_similarity",
    "ranks",
    "retrieval_metrics",
    "short_name",
    "similarity_matrix",
    "summarize_ranks",
]
