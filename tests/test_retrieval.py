"""Retrieval metrics against brute-force sorting loops (ties included), and the retrieval evaluation command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from equiav.errors import InvalidInputError
from equiav.retrieval import (
    audio_visual_retrieval,
    format_table,
    ranks,
    retrieval_metrics,
    similarity_matrix,
    summarize_ranks,
)

# ------------------------------------------------------------------------------------------------- brute force


def _brute_rank(row: list[float], correct: list[bool], ties: str) -> int:
    """Sort the gallery by decreasing score; tied wrong items go first (pessimistic) or last (optimistic)."""
    wrong_first = ties == "pessimistic"
    order = sorted(range(len(row)), key=lambda j: (-row[j], correct[j] if wrong_first else not correct[j]))
    return next(position for position, j in enumerate(order) if correct[j])


def _brute_ranks(sim: torch.Tensor, q_labels=None, g_labels=None, ties="pessimistic") -> list[int]:
    out = []
    for i in range(sim.shape[0]):
        if q_labels is None:
            correct = [j == i for j in range(sim.shape[1])]
        else:
            correct = [g_labels[j] == q_labels[i] for j in range(sim.shape[1])]
        out.append(_brute_rank(sim[i].tolist(), correct, ties))
    return out


def _brute_recall(rank: list[int], k: int) -> float:
    hits = 0
    for r in rank:
        if r < k:
            hits += 1
    return 100.0 * hits / len(rank)


# ------------------------------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("seed", range(4))
def test_instance_ranks_match_brute_force_with_ties(seed: int, ties: str) -> None:
    g = torch.Generator().manual_seed(seed)
    sim = torch.randint(-3, 4, (13, 17), generator=g).double()  # few distinct values: many ties
    assert ranks(sim, ties=ties).tolist() == _brute_ranks(sim, ties=ties)


@pytest.mark.parametrize("ties", ["pessimistic", "optimistic"])
@pytest.mark.parametrize("seed", range(4))
def test_class_ranks_match_brute_force_with_ties(seed: int, ties: str) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    sim = torch.randint(-2, 3, (20, 15), generator=g).double()
    q_labels = torch.randint(0, 4, (20,), generator=g).tolist()
    g_labels = [j % 4 for j in range(15)]
    assert ranks(sim, q_labels, g_labels, ties=ties).tolist() == _brute_ranks(sim, q_labels, g_labels, ties)


def test_string_labels_equal_integer_labels() -> None:
    g = torch.Generator().manual_seed(7)
    sim = torch.randn(9, 11, generator=g)
    names = ["zero", "one", "two"]
    q, gl = [i % 3 for i in range(9)], [i % 3 for i in range(11)]
    assert torch.equal(ranks(sim, q, gl), ranks(sim, [names[i] for i in q], [names[i] for i in gl]))


def test_at_most_one_hit_per_query_and_collapsed_model_is_worst() -> None:
    """Identical embeddings tie everywhere: the pessimistic rule gives the last rank, never several hits (B20)."""
    emb = torch.ones(6, 4)
    rank = ranks(similarity_matrix(emb, emb))
    assert rank.tolist() == [5] * 6
    assert ranks(similarity_matrix(emb, emb), ties="optimistic").tolist() == [0] * 6
    metrics = summarize_ranks(rank, ks=(1, 5, 10))
    assert metrics["R@1"] == 0.0 and metrics["R@10"] == 100.0


def test_summary_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 10):
        rank = torch.randint(0, 12, (n,), generator=g)
        metrics = summarize_ranks(rank, ks=(1, 3, 5))
        assert metrics["median_rank"] == pytest.approx(float(np.median(rank.numpy())) + 1)
        assert metrics["mean_rank"] == pytest.approx(float(rank.double().mean()) + 1)
        for k in (1, 3, 5):
            assert metrics[f"R@{k}"] == pytest.approx(_brute_recall(rank.tolist(), k))
        assert metrics["num_queries"] == n


def test_retrieval_metrics_on_random_embeddings() -> None:
    g = torch.Generator().manual_seed(11)
    gallery = torch.randn(30, 8, generator=g)
    queries = gallery + 0.8 * torch.randn(30, 8, generator=g)
    sim = (
        torch.nn.functional.normalize(queries.double(), dim=1)
        @ torch.nn.functional.normalize(gallery.double(), dim=1).T
    )
    expected = _brute_ranks(sim)
    metrics = retrieval_metrics(queries, gallery, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert metrics[f"R@{k}"] == pytest.approx(_brute_recall(expected, k))
    assert metrics["median_rank"] == pytest.approx(float(np.median(expected)) + 1)


def test_audio_visual_directions() -> None:
    """video_to_audio uses visual rows as queries; audio_to_video the transpose."""
    g = torch.Generator().manual_seed(5)
    audio, video = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    labels = [i % 3 for i in range(12)]
    out = audio_visual_retrieval(audio, video, labels)
    assert out["video_to_audio"] == retrieval_metrics(video, audio, labels, labels)
    assert out["audio_to_video"] == retrieval_metrics(audio, video, labels, labels)
    table = format_table(out)
    assert "video_to_audio" in table and "R@10" in table
    unpaired = audio_visual_retrieval(audio, video[:7], labels, labels[:7])
    assert unpaired["audio_to_video"] == retrieval_metrics(audio, video[:7], labels, labels[:7])
    assert unpaired["video_to_audio"]["num_queries"] == 7
    with pytest.raises(InvalidInputError, match="paired"):
        audio_visual_retrieval(audio, video[:7])


def test_bad_inputs_raise() -> None:
    with pytest.raises(InvalidInputError, match="queries"):
        similarity_matrix(torch.ones(3), torch.ones(3, 2))
    with pytest.raises(InvalidInputError, match="same embedding size"):
        similarity_matrix(torch.ones(3, 4), torch.ones(3, 2))
    with pytest.raises(InvalidInputError, match="only 2 gallery"):
        ranks(torch.zeros(3, 2))
    with pytest.raises(InvalidInputError, match="no correct item"):
        ranks(torch.zeros(2, 2), [0, 5], [0, 1])
    with pytest.raises(InvalidInputError, match="ties"):
        ranks(torch.zeros(2, 2), ties="average")
    with pytest.raises(InvalidInputError, match="both"):
        ranks(torch.zeros(2, 2), [0, 1], None)


def test_plot_similarity_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from equiav.retrieval import plot_similarity

    path = plot_similarity(torch.rand(5, 5), tmp_path / "sim.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_serializable() -> None:
    out = audio_visual_retrieval(torch.randn(4, 3), torch.randn(4, 3))
    assert json.loads(json.dumps(out)) == out
