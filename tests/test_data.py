"""Pretraining data: manifests, videos, shards and AV-digits on tiny inputs; draws, vectors, bad files, splits."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch.utils.data import DataLoader

from equiav.audio import load_fbank, waveform_to_fbank
from equiav.config import EquiAVConfig
from equiav.errors import ConfigError, DatasetError
from equiav.image import load_image, preprocess_image
from equiav.training.augment import AudioAugmenter, VisualAugmenter
from equiav.training.datasets import (
    AVDigitsDataset,
    BadItem,
    BadItemTracker,
    DataConfig,
    ManifestDataset,
    ShardDataset,
    VideoDataset,
    avdigits_eval_set,
    build_dataset,
    collate_items,
    extraction_crop,
    frame_times,
)
from equiav.training.datasets.avdigits import split_images
from equiav.training.datasets.items import pil_to_unit_tensor, warp_frequency
from equiav.training.datasets.shards import audio_settings
from equiav.training.finetune import LabelledDataset
from equiav.training.prepare import main as prepare_main
from equiav.video import probe_video, read_video_audio, read_video_frames

TINY = EquiAVConfig.from_preset("equiav-tiny")
FRAMES = 3
VIEWS = 4
SHORT_VIDEO = "big_buck_bunny_432_433.webm"
LABELS = [("0", "/m/dog", "Dog"), ("1", "/m/cat", "Cat"), ("2", "/m/car", "Car")]


def _write_clip(root: Path, video_id: str, seed: int) -> None:
    """A 0.6 s tone with noise as 16 kHz WAV and FRAMES random 80x60 JPEG frames, in the authors' layout."""
    rng = np.random.default_rng(seed)
    time = np.arange(9600) / 16000
    audio = 0.3 * np.sin(2 * np.pi * (300 + 150 * seed) * time) + 0.01 * rng.standard_normal(time.size)
    (root / "audio").mkdir(exist_ok=True)
    soundfile.write(root / "audio" / f"{video_id}.wav", audio.astype(np.float32), 16000)
    for k in range(FRAMES):
        (root / f"frame_{k}").mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"frame_{k}" / f"{video_id}.jpg", quality=95)


def _write_manifest(root: Path, labels: list[str], name: str = "train.json") -> Path:
    entries = []
    for number, label in enumerate(labels):
        video_id = f"clip{number}"
        _write_clip(root, video_id, number)
        entries.append(
            {"video_id": video_id, "wav": f"audio/{video_id}.wav", "video_path": ".", "labels": label}
        )
    path = root / name
    path.write_text(json.dumps({"data": entries}))
    return path


@pytest.fixture()
def manifest(tmp_path: Path) -> Path:
    return _write_manifest(tmp_path, ["/m/dog", "/m/cat,/m/car", ""])


@pytest.fixture()
def label_csv(tmp_path: Path) -> Path:
    path = tmp_path / "class_labels_indices.csv"
    path.write_text("index,mid,display_name\n" + "".join(f"{i},{m},{n}\n" for i, m, n in LABELS))
    return path


def _config(kind: str, path: Path, **changes) -> DataConfig:
    return DataConfig(kind=kind, path=str(path), frame_count=FRAMES, num_views=VIEWS, **changes)


def _frames_of(manifest: Path, video_id: str) -> list[Image.Image]:
    return [load_image(manifest.parent / f"frame_{k}" / f"{video_id}.jpg") for k in range(FRAMES)]


def _assert_same_items(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _assert_vectors_describe_views(item: dict, raw_image: Image.Image) -> None:
    """The augmented views are exactly the augmenters applied with the parameters decoded from the vectors."""
    audio = AudioAugmenter.for_config(TINY)
    torch.testing.assert_close(item["audio_aug"], audio.apply(item["audio"], audio.decode(item["t_audio"])))
    visual = VisualAugmenter.for_config(TINY)
    mean = torch.tensor(TINY.image_mean).view(3, 1, 1)
    std = torch.tensor(TINY.image_std).view(3, 1, 1)
    expected = (visual.apply(pil_to_unit_tensor(raw_image), visual.decode(item["t_image"])) - mean) / std
    torch.testing.assert_close(item["image_aug"], expected)


def test_manifest_item_shapes_views_and_vectors(manifest: Path) -> None:
    dataset = build_dataset(_config("manifest", manifest, roll_audio=False), TINY, "train")
    assert isinstance(dataset, ManifestDataset) and len(dataset) == 3
    item = dataset[1]
    shapes = {key: tuple(value.shape) for key, value in item.items()}
    assert shapes == {
        "audio": (128, 128), "image": (3, 64, 64), "audio_aug": (128, 128), "image_aug": (3, 64, 64),
        "t_audio": (24,), "t_image": (18,), "t_audio_views": (VIEWS, 24), "t_image_views": (VIEWS, 18),
        "index": (), "label": (),
    }  # fmt: skip
    assert item["index"].item() == 1 and item["label"].item() == -1
    # The original audio is the authors' filterbank of the file; the image one of the frames, resized and cropped.
    assert torch.equal(item["audio"], load_fbank(manifest.parent / "audio" / "clip1.wav", TINY))
    frames = _frames_of(manifest, "clip1")
    matches = [
        k for k, frame in enumerate(frames) if torch.equal(preprocess_image(frame, TINY), item["image"])
    ]
    assert len(matches) == 1
    _assert_vectors_describe_views(item, frames[matches[0]])
    # The centroid vectors are fresh draws, not copies of the view's vector.
    assert not torch.equal(item["t_audio_views"][0], item["t_audio_views"][1])


def test_validation_uses_middle_frame_and_ignores_epoch(manifest: Path) -> None:
    val = ManifestDataset(_config("manifest", manifest, val_path=str(manifest)), TINY, "val")
    first = val[2]
    val.set_epoch(5)
    _assert_same_items(first, val[2])
    frames = _frames_of(manifest, "clip2")
    assert torch.equal(first["image"], preprocess_image(frames[FRAMES // 2], TINY))
    # No roll in validation: the audio is the file's filterbank as it is.
    assert torch.equal(first["audio"], load_fbank(manifest.parent / "audio" / "clip2.wav", TINY))
    _assert_vectors_describe_views(first, frames[FRAMES // 2])
    with pytest.raises(ConfigError, match="val_path"):
        build_dataset(_config("manifest", manifest), TINY, "val")


def test_training_audio_is_rolled_in_time(manifest: Path) -> None:
    dataset = ManifestDataset(_config("manifest", manifest), TINY, "train")
    reference = load_fbank(manifest.parent / "audio" / "clip0.wav", TINY)
    shifts = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        audio = dataset[0]["audio"]
        shifts += [n for n in range(128) if torch.equal(torch.roll(reference, n, dims=0), audio)]
    assert len(shifts) == 3 and len(set(shifts)) > 1


def test_items_are_functions_of_seed_epoch_index(manifest: Path) -> None:
    config = _config("manifest", manifest)
    first, second = ManifestDataset(config, TINY, "train"), ManifestDataset(config, TINY, "train")
    _assert_same_items(first[0], second[0])
    second.set_epoch(1)
    assert not torch.equal(first[0]["t_audio"], second[0]["t_audio"])
    first.set_epoch(1)
    _assert_same_items(first[0], second[0])
    other_seed = ManifestDataset(config.replace(seed=1), TINY, "train")
    assert not torch.equal(other_seed[0]["t_image_views"], first[0]["t_image_views"])


def test_independent_aug_frame_and_faithful_audio(manifest: Path) -> None:
    dataset = ManifestDataset(_config("manifest", manifest, independent_aug_frame=True), TINY, "train")
    frames = _frames_of(manifest, "clip0")
    visual = VisualAugmenter.for_config(TINY)
    mean, std = torch.tensor(TINY.image_mean).view(3, 1, 1), torch.tensor(TINY.image_std).view(3, 1, 1)
    pairs = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        item = dataset[0]
        first = next(k for k, f in enumerate(frames) if torch.equal(preprocess_image(f, TINY), item["image"]))
        params = visual.decode(item["t_image"])
        augmented = [(visual.apply(pil_to_unit_tensor(f), params) - mean) / std for f in frames]
        second = min(range(FRAMES), key=lambda k: (augmented[k] - item["image_aug"]).abs().max())
        torch.testing.assert_close(augmented[second], item["image_aug"])
        pairs.add((first, second))
    assert any(first != second for first, second in pairs)
    faithful = ManifestDataset(_config("manifest", manifest, faithful_augment=True), TINY, "train")[0]
    assert faithful["audio_aug"].shape == (3, 128, 128) and faithful["audio"].shape == (128, 128)


def test_label_csv_gives_multi_hot_labels(manifest: Path, label_csv: Path, tmp_path: Path) -> None:
    dataset = ManifestDataset(_config("manifest", manifest, label_csv=str(label_csv)), TINY, "train")
    labels = torch.stack([dataset[i]["labels"] for i in range(3)])
    assert torch.equal(labels, torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0]]))
    (tmp_path / "other").mkdir()
    unknown = _write_manifest(tmp_path / "other", ["/m/zebra"])
    with pytest.raises(DatasetError, match="/m/zebra"):
        ManifestDataset(_config("manifest", unknown, label_csv=str(label_csv)), TINY, "train")


def test_bad_files_become_bad_items_and_stop_the_run(manifest: Path, caplog) -> None:
    document = json.loads(manifest.read_text())
    (manifest.parent / "audio" / "notes.wav").write_text("these are not audio samples\n")
    document["data"][1]["wav"] = "audio/notes.wav"
    document["data"][2]["wav"] = "audio/missing.wav"
    document["data"].append({"video_id": "noframes", "wav": "audio/clip0.wav", "video_path": "elsewhere"})
    manifest.write_text(json.dumps(document))
    dataset = ManifestDataset(_config("manifest", manifest), TINY, "train")
    items = [dataset[i] for i in range(4)]
    assert [isinstance(item, BadItem) for item in items] == [False, True, True, True]
    assert items[1].path.endswith("notes.wav") and items[2].path.endswith("missing.wav")
    assert "frame_" in items[3].reason and items[3].index == 3

    batch = collate_items(items)
    assert batch["index"].tolist() == [0] and len(batch["bad"]) == 3
    assert collate_items(items[1:]) == {"bad": items[1:]}

    patient = BadItemTracker(max_fraction=0.5, min_items=10)
    with caplog.at_level(logging.WARNING, logger="equiav.data"):
        patient.update(batch)
    assert patient.seen == 4 and patient.bad == 3
    assert "notes.wav" in caplog.text and "missing.wav" in caplog.text
    with pytest.raises(DatasetError, match=r"3 of 4 items \(75.00%\).*50.00%.*missing\.wav"):
        patient.close()
    strict = BadItemTracker(max_fraction=0.5, min_items=4)
    with pytest.raises(DatasetError, match="notes.wav"):
        strict.update(batch)
    lenient = BadItemTracker(max_fraction=0.8, min_items=0)
    lenient.update(batch)
    lenient.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_unexpected_error_names_the_file_in_and_out_of_workers(
    manifest: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """An exception that is not a decode error (a bug, a third-party decoder's RuntimeError) is not skipped: the
    loader raises ``DatasetError`` naming the file being read, also when a worker process raised it."""
    read = ManifestDataset.decode

    def broken_decode(self: ManifestDataset, index: int, generator: torch.Generator):
        if index == 1:
            raise RuntimeError("decoder exploded")
        return read(self, index, generator)

    monkeypatch.setattr(ManifestDataset, "decode", broken_decode)
    dataset = ManifestDataset(_config("manifest", manifest), TINY, "train")
    path = dataset.item_path(1)
    assert path.endswith("clip1.wav") and not isinstance(dataset[0], BadItem)
    with pytest.raises(DatasetError, match="decoder exploded") as direct:
        dataset[1]
    assert str(direct.value).startswith(f"{path}: reading item 1 of the train split failed with RuntimeError")
    assert isinstance(direct.value.__cause__, RuntimeError)

    loader = DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate_items)
    with pytest.raises(DatasetError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert f"{path}: reading item 1" in message and "RuntimeError: decoder exploded" in message
    assert ("DataLoader worker process 0" in message) == (workers == 1)


def test_fine_tuning_and_shard_items_name_the_file_of_an_unexpected_error(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    base = ManifestDataset(_config("manifest", manifest), TINY, "train")
    monkeypatch.setattr(ManifestDataset, "decode", explode)
    with pytest.raises(DatasetError, match="RuntimeError: decoder exploded") as caught:
        LabelledDataset(base, 3, train=True)[2]
    assert str(caught.value).startswith(f"{base.item_path(2)}: reading item 2 of the train split")

    meta = {
        "format": "equiav-shards",
        "shards": [{"file": "s0.tar", "count": 2}],
        "audio": audio_settings(TINY),
    }
    (tmp_path / "shards.json").write_text(json.dumps(meta))
    shards = ShardDataset(_config("shards", tmp_path), TINY, "train")
    monkeypatch.setattr(ShardDataset, "_read_item", explode)
    with pytest.raises(
        DatasetError, match=r"^s0\.tar#1: reading item 1 of the train split failed with Runtime"
    ):
        shards._item(1, "s0.tar#1", {}, 0)


def test_frequency_warp_matches_a_per_bin_interpolation() -> None:
    fbank = torch.randn(7, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(warp_frequency(fbank, 1.0), fbank)
    for factor in (0.85, 1.2):
        expected = torch.empty_like(fbank)
        for b in range(16):
            source = min(max(b / factor, 0.0), 15.0)
            low = int(source)
            high = min(low + 1, 15)
            expected[:, b] = fbank[:, low] + (source - low) * (fbank[:, high] - fbank[:, low])
        assert torch.allclose(warp_frequency(fbank, factor), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="audio_freq_warp"):
        DataConfig(kind="avdigits", path="x", audio_freq_warp=1.5)


def test_data_loader_workers_reproduce_items_across_epochs(shared_dir: Path) -> None:
    dataset = AVDigitsDataset(_config("avdigits", shared_dir), TINY, "train")
    loader = DataLoader(
        torch.utils.data.Subset(dataset, [3, 700, 1499]),
        batch_size=3,
        num_workers=2,
        persistent_workers=True,
        collate_fn=collate_items,
    )
    seen = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        batch = next(iter(loader))
        direct = collate_items([dataset[i] for i in (3, 700, 1499)])
        for key, value in direct.items():
            assert key == "bad" or torch.equal(batch[key], value), key
        seen.append(batch["t_audio"])
    assert not torch.equal(seen[0], seen[1])


def test_avdigits_split_by_speaker_and_pairs_same_digit(shared_dir: Path) -> None:
    config = _config("avdigits", shared_dir / "data" / "fsdd")
    train, val = AVDigitsDataset(config, TINY, "train"), AVDigitsDataset(config, TINY, "val")
    train_speakers = {r.speaker for r in train.source.recordings}
    assert {r.speaker for r in val.source.recordings} == {"theo"} and "theo" not in train_speakers
    assert len(train) == 50 * 10 * len(train_speakers) and len(val) == 500

    archive = np.load(shared_dir / "data" / "mnist" / "mnist_4k.npz")
    mnist_images, mnist_labels = archive["images"], archive["labels"].astype(np.int64)
    train_pools = split_images(mnist_labels, 0.2, 0, "train")
    val_pools = split_images(mnist_labels, 0.2, 0, "val")
    for digit in range(10):
        assert not set(train_pools[digit]) & set(val_pools[digit])
        assert len(train_pools[digit]) + len(val_pools[digit]) == 400 and len(val_pools[digit]) == 80
    for dataset, pools in ((train, train_pools), (val, val_pools)):
        for index in (0, 137, len(dataset) - 1):
            item = dataset[index]
            digit = int(dataset.source.recordings[index].path.name[0])
            assert item["label"].item() == digit
            candidates = np.flatnonzero(mnist_labels == digit)
            matches = [
                i for i in candidates if torch.equal(preprocess_image(mnist_images[i], TINY), item["image"])
            ]
            assert matches and set(matches) <= set(pools[digit].tolist())
    # Shards of the validation split store the deterministic partner where validation reads it (the middle frame).
    raw = val.raw_sample(137)
    assert raw.meta["label"] == val[137]["label"].item() and len(raw.frames) == FRAMES
    stored = Image.open(io.BytesIO(raw.frames[FRAMES // 2][1]))
    assert torch.equal(preprocess_image(stored, TINY), val[137]["image"])


def test_avdigits_eval_set(shared_dir: Path) -> None:
    fbanks, images, audio_labels, image_labels = avdigits_eval_set(shared_dir, TINY, per_digit=3)
    assert fbanks.shape == (30, 128, 128) and images.shape == (30, 3, 64, 64)
    assert torch.equal(audio_labels, torch.arange(10).repeat_interleave(3))
    assert torch.equal(image_labels, torch.arange(10).repeat_interleave(3))
    recordings = shared_dir / "data" / "fsdd" / "recordings"
    assert torch.equal(fbanks[4], load_fbank(recordings / "1_theo_1.wav", TINY))
    archive = np.load(shared_dir / "data" / "mnist" / "mnist_4k.npz")
    first_val_nine = split_images(archive["labels"].astype(np.int64), 0.2, 0, "val")[9][0]
    assert torch.equal(images[27], preprocess_image(archive["images"][first_val_nine], TINY))
    with pytest.raises(DatasetError, match="nobody"):
        avdigits_eval_set(shared_dir, TINY, val_speakers=("nobody",))


def test_frame_times_follow_cav_mae(shared_dir: Path) -> None:
    info = {"has_video": True, "fps": 25.0, "num_frames": 300, "duration": 12.0}
    expected = [(index + 0.5) / 25 for index in (0, 24, 49, 74, 99, 124, 149, 174, 199, 224)]
    assert frame_times(info, 10, 10.0) == pytest.approx(expected)
    video = shared_dir / "data" / "av" / SHORT_VIDEO
    ours = read_video_frames(video, times=frame_times(probe_video(video), 4, 10.0))
    theirs = read_video_frames(video, num_frames=4, position="cav-mae")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, theirs))


def _video_csv(tmp_path: Path, shared_dir: Path) -> Path:
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    csv = tmp_path / "videos.csv"
    csv.write_text(f"path,labels\n{shared_dir / 'data' / 'av' / SHORT_VIDEO},/m/dog\n{broken},\n")
    return csv


def test_videos_decoded_on_the_fly_match_extracted_manifest(tmp_path: Path, shared_dir: Path) -> None:
    csv = _video_csv(tmp_path, shared_dir)
    videos = VideoDataset(_config("videos", csv, val_path=str(csv)), TINY, "val")
    item, bad = videos[0], videos[1]
    assert isinstance(bad, BadItem) and bad.path.endswith("broken.mp4")
    path = videos.entries[0].path
    times = [frame_times(probe_video(path), FRAMES, 10.0)[FRAMES // 2]]
    [frame] = read_video_frames(path, times=times, short_side=224)
    assert torch.equal(item["image"], preprocess_image(extraction_crop(frame), TINY))
    # Scaling inside FFmpeg instead of Pillow's resize of the full 1280 x 720 frame: about a level of 255 apart.
    [full] = read_video_frames(path, times=times)
    pillow = preprocess_image(extraction_crop(full), TINY)
    assert (pillow - item["image"]).abs().mean() * 0.226 * 255 < 2.0
    # Only the soundtrack's start is decoded; its mean no longer counts (per-frame DC removal cancels it).
    whole = waveform_to_fbank(read_video_audio(path), 16000, TINY)
    assert (whole - item["audio"]).abs().max() < 1e-3

    out = tmp_path / "extracted"
    args = ["extract", "--videos", str(csv), "--output", str(out), "--frames", str(FRAMES)]
    assert prepare_main(args) == 1  # one of two videos is broken: above the default 1% limit
    manifest = json.loads((out / "manifest.json").read_text())["data"]
    assert [row["video_id"] for row in manifest] == ["big_buck_bunny_432_433"] and manifest[0][
        "labels"
    ] == "/m/dog"
    assert load_image(out / "frame_2" / "big_buck_bunny_432_433.jpg").size == (224, 224)
    assert soundfile.info(manifest[0]["wav"]).samplerate == 16000
    extracted = ManifestDataset(_config("manifest", out / "manifest.json", val_path=str(out / "manifest.json")),
                                TINY, "val")[0]  # fmt: skip
    for key in ("t_audio", "t_image", "t_audio_views", "t_image_views"):
        assert torch.equal(extracted[key], item[key])
    assert (extracted["audio"] - item["audio"]).abs().mean() < 0.01  # 16-bit WAV rounding only
    assert (extracted["image"] - item["image"]).abs().mean() < 0.05  # JPEG rounding only


def test_shards_round_trip_with_equal_counts_per_rank(tmp_path: Path, label_csv: Path) -> None:
    manifest = _write_manifest(tmp_path, ["/m/dog", "/m/cat", "", "/m/car", "/m/dog,/m/cat"])
    out = tmp_path / "shards"
    args = ["shards", "--source", "manifest", "--input", str(manifest), "--output", str(out), "--shard-size", "2",
            "--frames", str(FRAMES), "--model", "equiav-tiny", "--label-csv", str(label_csv)]  # fmt: skip
    assert prepare_main(args) == 0
    index = json.loads((out / "shards.json").read_text())
    assert [s["count"] for s in index["shards"]] == [2, 2, 1] and index["labels"] == "multi"

    config = _config("shards", out, val_path=str(out))
    reference = ManifestDataset(_config("manifest", manifest, label_csv=str(label_csv)), TINY, "train")
    per_rank = []
    for rank in range(2):
        shards = ShardDataset(config, TINY, "train", rank=rank, world_size=2)
        loader = DataLoader(shards, batch_size=1, num_workers=2, collate_fn=collate_items)
        batches = list(loader)
        assert len(batches) == shards.batches_per_rank(1, num_workers=2) == 2 == len(shards)
        per_rank.append([int(b["index"]) for b in batches])
        for batch in batches:
            expected = reference[int(batch["index"])]
            for key in (
                "image",
                "image_aug",
                "t_audio",
                "t_image",
                "t_audio_views",
                "t_image_views",
                "labels",
            ):
                assert torch.equal(batch[key][0], expected[key]), key
            assert (batch["audio"][0] - expected["audio"]).abs().max() < 2e-3  # float16 storage
    assert not set(per_rank[0]) & set(per_rank[1])

    subset = ShardDataset(_config("shards", out / "shard-{000000..000001}.tar"), TINY, "train")
    assert len(subset) == 4 and len(list(subset)) == 4
    with pytest.raises(DatasetError, match="target_length"):
        ShardDataset(config, EquiAVConfig.from_preset("equiav-test"), "train")
    with pytest.raises(
        DatasetError, match="audio_normalization dataset \\(shards\\) vs utterance \\(model\\)"
    ):
        ShardDataset(config, TINY.replace(audio_normalization="utterance"), "train")
    index_file = out / "shards.json"
    index = json.loads(index_file.read_text())
    del index["audio"]["audio_normalization"]  # an index written before the field existed
    index_file.write_text(json.dumps(index))
    assert len(ShardDataset(config, TINY, "train")) == 5


def test_shard_plan_covers_each_sample_once(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    counts = [2, 2, 1, 3]
    shards = [{"file": f"s{i}.tar", "count": c} for i, c in enumerate(counts)]
    meta = {"format": "equiav-shards", "shards": shards, "audio": audio_settings(TINY)}
    (out / "shards.json").write_text(json.dumps(meta))
    dataset = ShardDataset(_config("shards", out), TINY, "train")
    for world in range(1, 5):
        for workers in range(1, 4):
            taken = []
            for rank in range(world):
                starts = np.cumsum([0] + counts)
                rank_samples = [int(starts[shard]) + position
                                for worker in range(workers)
                                for shard, lo, hi in dataset.plan(3, rank, world, worker, workers)
                                for position in range(lo, hi)]  # fmt: skip
                assert len(rank_samples) == sum(counts) // world
                taken += rank_samples
            assert len(set(taken)) == len(taken) == (sum(counts) // world) * world


def test_truncated_shard_keeps_counts_equal(tmp_path: Path) -> None:
    manifest = _write_manifest(tmp_path, ["", "", "", ""])
    out = tmp_path / "shards"
    args = ["shards", "--source", "manifest", "--input", str(manifest), "--output", str(out), "--shard-size", "2",
            "--frames", str(FRAMES), "--model", "equiav-tiny"]  # fmt: skip
    assert prepare_main(args) == 0
    shard = out / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1500])
    items = []
    for rank in range(2):
        dataset = ShardDataset(_config("shards", out), TINY, "train", rank=rank, world_size=2)
        rank_items = list(dataset)
        assert len(rank_items) == 2
        items += rank_items
    bad = [item for item in items if isinstance(item, BadItem)]
    assert len(bad) == 2 and all("shard-000001.tar" in item.path for item in bad)
