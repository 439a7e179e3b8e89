"""Zero-shot cross-modal retrieval metrics: similarity matrices, exact ranks, recall at k and median rank.

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
from pathlib import Path

import torch
import torch.nn.functional as F

from .checks import all_finite
from .errors import InvalidInputError

TIE_RULES = ("pessimistic", "optimistic")
DEFAULT_KS = (1, 5, 10)
_ROW_CHUNK = 1024


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


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A fixed-width text table of ``audio_visual_retrieval`` results, one line per direction."""
    columns = [key for key in next(iter(results.values())) if key != "num_queries"]
    header = f"{'direction':<16}" + "".join(f"{name:>13}" for name in columns) + f"{'queries':>9}"
    lines = [header, "-" * len(header)]
    for direction, metrics in results.items():
        cells = "".join(f"{metrics[name]:>13.2f}" for name in columns)
        lines.append(f"{direction:<16}{cells}{int(metrics['num_queries']):>9}")
    return "\n".join(lines)


def plot_similarity(
    similarity: torch.Tensor,
    path: str | Path,
    title: str | None = None,
    query_name: str = "query",
    gallery_name: str = "gallery",
    max_items: int = 200,
) -> Path:
    """Save the similarity matrix as a PNG heat map; larger matrices show ``max_items`` evenly spaced rows and
    columns (so a class-sorted set keeps its block structure).

    Needs matplotlib (``pip install 'equiav[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_similarity needs matplotlib; install it with `pip install 'equiav[plot]'` (or `pip install matplotlib`)"
        ) from error
    if not isinstance(similarity, torch.Tensor) or similarity.dim() != 2:
        raise InvalidInputError("similarity must be a (queries, gallery) matrix")
    rows = torch.linspace(0, similarity.shape[0] - 1, min(similarity.shape[0], max_items)).round().long()
    cols = torch.linspace(0, similarity.shape[1] - 1, min(similarity.shape[1], max_items)).round().long()
    shown = similarity.detach().cpu()[rows][:, cols].float().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 5))
    image = axes.imshow(shown, cmap="viridis", aspect="auto", interpolation="nearest")
    figure.colorbar(image, ax=axes, label="cosine similarity")
    axes.set_xlabel(gallery_name)
    axes.set_ylabel(query_name)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


__all__ = [
    "audio_visual_retrieval",
    "format_table",
    "plot_similarity",
    "ranks",
    "retrieval_metrics",
    "similarity_matrix",
    "summarize_ranks",
]
