"""Retrieval metrics against brute-force sorting loops (ties included), and the retrieval evaluation command."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from equiav.config import EquiAVConfig
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


# ------------------------------------------------------------------------------------------------- evaluate command


def _retrieval_worker(rank: int, port: int, args: list[str], out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from equiav.training.evaluate import main

    main([*args, "--output", str(Path(out) / f"rank{rank}.json")])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_avdigits_retrieval_command_matches_direct_computation_and_two_processes(
    shared_dir, tmp_path, one_thread
):
    from equiav.model import EquiAVModel
    from equiav.training.datasets import avdigits_eval_set
    from equiav.training.evaluate import main

    args = ["retrieval", "--model", "equiav-tiny-digits", "--random-init", "--avdigits", str(shared_dir / "data"),
            "--no-progress", "--batch-size", "128"]  # fmt: skip
    main([*args, "--output", str(tmp_path / "one.json"), "--plot", str(tmp_path / "sim.png")])
    one = json.loads((tmp_path / "one.json").read_text())
    assert (one["level"], one["num_audio"], one["num_video"]) == ("class", 500, 800)

    torch.manual_seed(0)
    model = EquiAVModel("equiav-tiny-digits").eval()
    fbanks, images, audio_labels, image_labels = avdigits_eval_set(shared_dir / "data", model.config, "val")
    with torch.no_grad():
        audio = torch.nn.functional.normalize(model.encode_audio(fbanks), dim=-1)
        video = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    direct = audio_visual_retrieval(audio, video, audio_labels, image_labels)
    for direction in ("video_to_audio", "audio_to_video"):
        for key, value in direct[direction].items():
            assert one[direction][key] == pytest.approx(value, abs=1e-9), (direction, key)
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "sim.png").read_bytes()[:4] == b"\x89PNG"

    mp.spawn(_retrieval_worker, args=(_free_port(), args, str(tmp_path)), nprocs=2, join=True)
    two = json.loads((tmp_path / "rank0.json").read_text())
    assert not (tmp_path / "rank1.json").exists()  # only the main process reports
    for direction in ("video_to_audio", "audio_to_video"):
        for key, value in one[direction].items():
            assert two[direction][key] == pytest.approx(value, abs=1e-9), (direction, key)


def test_avdigits_retrieval_scores_a_folder_of_new_speakers(shared_dir, tmp_path, one_thread) -> None:
    """A folder holding only unseen speakers is scored by naming them; the default speaker's absence is reported."""
    from equiav.errors import DatasetError
    from equiav.training.datasets import avdigits_eval_set
    from equiav.training.evaluate import main

    recordings = tmp_path / "new" / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for digit in range(10):
        for take in range(2):
            source = shared_dir / "data" / "fsdd" / "recordings" / f"{digit}_theo_{take}.wav"
            for speaker in ("nicolas", "lucas"):
                (recordings / f"{digit}_{speaker}_{take}.wav").write_bytes(source.read_bytes())
    (tmp_path / "new" / "mnist").mkdir()
    (tmp_path / "new" / "mnist" / "mnist_4k.npz").write_bytes(
        (shared_dir / "data" / "mnist" / "mnist_4k.npz").read_bytes()
    )
    root = tmp_path / "new"

    args = ["retrieval", "--model", "equiav-tiny-digits", "--avdigits", str(root), "--no-progress"]
    main([*args, "--val-speakers", "nicolas", "lucas", "--output", str(tmp_path / "new.json")])
    result = json.loads((tmp_path / "new.json").read_text())
    assert (result["num_audio"], result["val_speakers"]) == (40, ["nicolas", "lucas"])
    assert (
        result["audio_to_video"]["R@1"] > 50.0
    )  # theo's takes under new names: the packaged model knows them
    with pytest.raises(SystemExit):
        main(args)
    with pytest.raises(DatasetError, match=r"validation speaker\(s\) \['theo'\] have no recordings"):
        avdigits_eval_set(root, EquiAVConfig.from_preset("equiav-tiny-digits"), "val")
    with pytest.raises(DatasetError, match="no training speaker is left"):
        avdigits_eval_set(
            root, EquiAVConfig.from_preset("equiav-tiny-digits"), "train", val_speakers=("nicolas", "lucas")
        )


def test_manifest_retrieval_uses_the_middle_frame(shared_dir, tmp_path, one_thread) -> None:
    """Instance level over an authors'-style manifest whose clips have only frame_5 (B6: frame 10 does not exist)."""
    from PIL import Image

    from equiav.training.evaluate import main

    recordings = sorted((shared_dir / "data" / "fsdd" / "recordings").glob("*_theo_0.wav"))[:6]
    rows = []
    for i, wav in enumerate(recordings):
        (tmp_path / "frames" / "frame_5").mkdir(parents=True, exist_ok=True)
        pixels = np.full((40, 40, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "frames" / "frame_5" / f"clip{i}.jpg")
        rows.append(
            {"video_id": f"clip{i}", "wav": str(wav), "video_path": "frames", "labels": f"/m/{i % 2}"}
        )
    manifest = tmp_path / "retrieval.json"
    manifest.write_text(json.dumps({"data": rows}))
    base = [
        "retrieval",
        "--model",
        "equiav-tiny-digits",
        "--random-init",
        "--manifest",
        str(manifest),
        "--no-progress",
    ]
    main([*base, "--output", str(tmp_path / "instance.json")])
    result = json.loads((tmp_path / "instance.json").read_text())
    assert (result["frame"], result["level"], result["num_audio"]) == (5, "instance", 6)
    assert result["audio_to_video"]["R@10"] == 100.0  # 6 clips: every rank is below 10
    main([*base, "--class-level", "--output", str(tmp_path / "class.json")])
    assert json.loads((tmp_path / "class.json").read_text())["audio_to_video"]["R@5"] == 100.0
    with pytest.raises(SystemExit, match="frame_3"):
        main([*base, "--frame", "3", "--output", str(tmp_path / "x.json")])
