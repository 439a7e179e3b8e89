"""Embedding a corpus (folder, manifest, tar shards over HTTP; parts, resume, bad files) and FAISS search over it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from http_server import serve

from equiav.corpus import EmbedConfig, embed_corpus, list_corpus, load_embeddings
from equiav.errors import AudioDecodeError, DatasetError, IndexMismatchError
from equiav.model import EquiAVModel
from equiav.search import Searcher, SearchIndex, build_faiss, choose_kind

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = REPO_ROOT / "equiav" / "demo_data"
QUIET = EmbedConfig(batch_size=4, shard_size=3, max_bad_fraction=0.5, progress=False)


@pytest.fixture(scope="module")
def model() -> EquiAVModel:
    torch.set_num_threads(1)
    return EquiAVModel.from_pretrained("equiav-tiny-digits").eval()


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    (folder / "sounds").mkdir(parents=True)
    for digit in range(4):
        shutil.copy(DEMO / "audio" / f"{digit}_us.wav", folder / "sounds")
        shutil.copy(DEMO / "images" / f"{digit}_upright.png", folder)
    (folder / "sounds" / "broken.wav").write_bytes((DEMO / "audio" / "5_us.wav").read_bytes()[:100])
    return folder


def _embed(model, spec, output, **kwargs):
    return embed_corpus(
        model, list_corpus(spec), output, model_name="equiav-tiny-digits", options=QUIET, **kwargs
    )


def test_folder_embeds_in_parts_lists_bad_files_and_equals_one_part(
    model, corpus: Path, tmp_path: Path
) -> None:
    whole = _embed(model, corpus, tmp_path / "one")
    assert whole.index["total"] == 8 and whole.index["bad"] == 1
    assert whole.index["bad_items"][0]["id"] == "sounds/broken.wav"
    assert "AudioDecodeError" in whole.index["bad_items"][0]["reason"]
    first = _embed(model, corpus, tmp_path / "two", part=1, num_parts=2)
    assert first.index is None  # part 0 not done yet
    second = _embed(model, corpus, tmp_path / "two", part=0, num_parts=2)
    assert second.index["total"] == 8
    for modality in ("audio", "image"):
        one, _ = load_embeddings(tmp_path / "one", modality)
        two, _ = load_embeddings(tmp_path / "two", modality)
        assert sorted(one.ids) == sorted(two.ids) and len(one.ids) == 4
        order = [two.ids.index(item) for item in one.ids]
        torch.testing.assert_close(two.vectors[order], one.vectors, atol=1e-5, rtol=0)
    reference = model.embed_audio(str(corpus / "sounds" / "2_us.wav"))[0]
    audio, _ = load_embeddings(tmp_path / "one", "audio")
    torch.testing.assert_close(
        audio.vectors[audio.ids.index("sounds/2_us.wav")], reference, atol=1e-5, rtol=0
    )
    with pytest.raises(DatasetError, match="already holds embeddings"):
        _embed(model, corpus, tmp_path / "one")


def test_a_killed_job_resumes_without_redoing_finished_shards(
    model, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from equiav import corpus as corpus_module

    calls: list[int] = []
    killed: list[bool] = []
    real = corpus_module._embed_items

    def dies_on_second_shard(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus_module, "_embed_items", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _embed(model, corpus, tmp_path / "emb")
    written = (tmp_path / "emb" / "emb-000000.safetensors").stat().st_mtime_ns
    calls.clear()
    report = _embed(model, corpus, tmp_path / "emb")
    assert len(calls) == 2  # shards 1 and 2 of 3
    assert (tmp_path / "emb" / "emb-000000.safetensors").stat().st_mtime_ns == written
    assert report.index["total"] == 8


def test_tar_shards_over_http_embed_like_files(model, corpus: Path, tmp_path: Path) -> None:
    shards = tmp_path / "tars"
    shards.mkdir()
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "broken.wav")
    for number in range(2):
        with tarfile.open(shards / f"media-{number}.tar", "w") as tar:
            for path in files[number::2]:
                tar.add(path, arcname=path.name.replace("_", "-", 1))
    with open(shards / "media-2.tar", "wb") as handle:  # cut off in its second member
        handle.write((shards / "media-0.tar").read_bytes()[:2000])
    with serve(shards) as base:
        report = _embed(model, f"{base}/media-{{0..2}}.tar", tmp_path / "emb")
    assert report.index["shards"][2]["count"] == 1 and report.index["bad"] == 1  # the member before the cut
    assert "media-2.tar" in report.index["bad_items"][0]["id"]
    audio, _ = load_embeddings(tmp_path / "emb", "audio")
    reference = model.embed_audio(str(corpus / "sounds" / "1_us.wav"))[0]
    torch.testing.assert_close(audio.vectors[audio.ids.index("1-us")], reference, atol=1e-5, rtol=0)


def test_search_is_cross_modal_exact_and_refuses_other_models_and_bad_queries(
    model, corpus: Path, tmp_path: Path
) -> None:
    _embed(model, corpus, tmp_path / "emb")
    searcher = Searcher(tmp_path / "emb", model)
    hits = searcher.search(DEMO / "audio" / "2_gb.wav", k=4)
    assert [hit.id for hit in hits][0] == "2_upright.png" and len(hits) == 4
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    images, _ = load_embeddings(tmp_path / "emb", "image")
    query = model.embed_audio(str(DEMO / "audio" / "2_gb.wav"))[0]
    exact = (images.vectors @ query).numpy()
    assert hits[0].score == pytest.approx(float(exact.max()), abs=1e-5)
    back = searcher.search(DEMO / "images" / "1_broad.png", k=2)
    assert back[0].id == "sounds/1_us.wav"
    same = searcher.search(DEMO / "images" / "1_broad.png", target="image", k=1)
    assert same[0].id == "1_upright.png"
    assert (tmp_path / "emb" / "search-image.faiss").exists()  # saved for the next query

    other = EquiAVModel.from_pretrained("equiav-tiny-digits")
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        Searcher(tmp_path / "emb", other)
    broken = tmp_path / "query.wav"
    broken.write_bytes(b"RIFF0000WAVEfmt nonsense")
    with pytest.raises(AudioDecodeError, match="query.wav"):
        searcher.search(broken)


def test_approximate_indexes_find_the_exact_neighbours_of_clustered_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 32))
    vectors = centres[rng.integers(0, 50, 20000)] + 0.3 * rng.standard_normal((20000, 32))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[:50] + 0.01
    _, exact = build_faiss(vectors, "flat").search(queries, 10)
    for kind in ("ivf", "hnsw"):
        _, found = build_faiss(vectors, kind).search(queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
        assert recall > 0.9, (kind, recall)
    assert choose_kind(1000) == "flat" and choose_kind(2_000_000) == "ivf"
    index = SearchIndex(build_faiss(vectors[:5], "flat"), list("abcde"), "audio", {})
    assert index.search(vectors[2], k=2)[0][0].id == "c"


def test_cli_builds_and_searches_with_json_output(corpus: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    build = [sys.executable, "-m", "equiav", "index", "build", str(corpus), "--output", str(tmp_path / "emb"),
             "--shard-size", "4", "--max-bad-fraction", "0.5", "--no-progress"]  # fmt: skip
    result = subprocess.run(build, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 unreadable" in result.stdout
    query = str(DEMO / "audio" / "3_scot.wav")
    search = [sys.executable, "-m", "equiav", "search", str(tmp_path / "emb"), query, "-k", "2", "--json"]
    result = subprocess.run(search, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    hits = json.loads(result.stdout)[query]
    assert hits[0]["id"] == "3_upright.png" and len(hits) == 2
    missing = [sys.executable, "-m", "equiav", "search", str(tmp_path / "nothing"), query]
    result = subprocess.run(missing, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "embeddings.json" in result.stderr


@pytest.mark.slow
def test_torchrun_two_processes_embed_like_one(corpus: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "equiav", "index", "build", str(corpus), "--output", str(tmp_path / "emb"), "--shard-size", "3",
               "--max-bad-fraction", "0.5", "--no-progress"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((tmp_path / "emb" / "embeddings.json").read_text())
    assert index["total"] == 8 and index["bad"] == 1
    assert sorted(p.name for p in (tmp_path / "emb" / "parts").iterdir()) == [
        "part-00000-of-00002.json",
        "part-00001-of-00002.json",
    ]
