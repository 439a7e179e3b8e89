"""Every script in examples/ runs on tiny data and prints or writes what it promises."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
DEMO = REPO_ROOT / "equiav" / "demo_data"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(command: list[str], cwd: Path, **env: str) -> str:
    """Run a command in ``cwd``; fail with its output unless it exits 0; return its stdout."""
    result = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _example(name: str, *args: object, cwd: Path) -> str:
    return _run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match[1])


def _write_digit_video(path: Path, image: np.ndarray, wav: Path) -> None:
    """A short video: the digit image (scaled to 64 x 64) as every frame, the spoken digit as its soundtrack."""
    import av

    audio, rate = soundfile.read(wav, dtype="int16")
    frame = np.pad(np.kron(image, np.ones((2, 2), np.uint8)), 4)
    rgb = np.repeat(frame[:, :, None], 3, axis=2)
    with av.open(str(path), "w") as container:
        video_stream = container.add_stream("mpeg4", rate=10)
        video_stream.width = video_stream.height = 64
        video_stream.pix_fmt = "yuv420p"
        audio_stream = container.add_stream("pcm_s16le", rate=rate)
        audio_stream.layout = "mono"
        for _ in range(max(2, int(10 * len(audio) / rate) + 1)):
            container.mux(video_stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(video_stream.encode())
        samples = av.AudioFrame.from_ndarray(audio[None], format="s16", layout="mono")
        samples.sample_rate = rate
        container.mux(audio_stream.encode(samples))
        container.mux(audio_stream.encode())


@pytest.fixture(scope="module")
def digit_videos(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder of videos: digits 0, 1, 2 (subfolders), five clips each (spoken by george + MNIST)."""
    data = shared_dir / "data"
    with np.load(data / "mnist" / "mnist_4k.npz") as mnist:
        images, labels = mnist["images"], mnist["labels"]
    root = tmp_path_factory.mktemp("digit_videos")
    for digit in range(3):
        (root / str(digit)).mkdir()
        for take in range(5):
            wav = data / "fsdd" / "recordings" / f"{digit}_george_{take}.wav"
            _write_digit_video(root / str(digit) / f"{digit}_{take}.mkv", images[labels == digit][take], wav)
    return root


# ------------------------------------------------------------------------------------------------ fast


def test_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    scripts = [p for p in EXAMPLES.rglob("*") if p.suffix in (".py", ".sh", ".sbatch")]
    assert len(scripts) == 9
    for script in scripts:
        assert f"`{script.relative_to(EXAMPLES)}`" in readme, script.name


def test_shell_scripts_parse_and_use_existing_pretraining_options() -> None:
    from equiav.training.pretrain import build_parser

    known = build_parser().format_help()
    for script in ("pretrain_on_your_videos.sh", "slurm/pretrain_multinode.sbatch"):
        path = EXAMPLES / script
        subprocess.run(["bash", "-n", str(path)], check=True)
        pretrain_part = path.read_text().rsplit("-m equiav.training.pretrain", 1)[1]
        options = set(re.findall(r"(--[a-z][a-z0-9.-]+)", pretrain_part.split("\n\n", 1)[0]))
        assert {"--data.kind", "--data.path", "--output-dir"} <= options
        for option in options:
            assert option in known, (script, option)


def test_embed_and_compare(tmp_path: Path) -> None:
    audio = [DEMO / "audio" / f"{digit}_us.wav" for digit in range(4)]
    images = [DEMO / "images" / f"{digit}_upright.png" for digit in range(4)]
    out = _example(
        "embed_and_compare.py", "--audio", *audio, "--image", *images, "--output", "sim.csv", cwd=tmp_path
    )
    rows = list(csv.reader((tmp_path / "sim.csv").open()))
    assert rows[0] == ["audio", *(p.name for p in images)]
    table = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    assert table.shape == (4, 4) and (np.abs(table) <= 1).all()
    assert (table.argmax(axis=1) == np.arange(4)).all()  # the packaged model matches these digits
    assert "0_us.wav sounds most like 0_upright.png" in out


def test_localize_sound_on_the_packaged_demo(tmp_path: Path) -> None:
    out = _example("localize_sound.py", "-o", "heat.png", "--display-size", "128", cwd=tmp_path)
    low = _number(r"cosine (-?[\d.]+) \.\.", out)
    high = _number(r"\.\. (-?[\d.]+)", out)
    assert -1 <= low <= high <= 1
    assert "heat map (4, 4)" in out
    from PIL import Image

    with Image.open(tmp_path / "heat.png") as picture:
        assert picture.width > 128 and picture.height > 128


def test_convert_and_share_the_authors_test_checkpoint(official_dir: Path, tmp_path: Path) -> None:
    out = _example(
        "convert_and_share.py", official_dir / "pretrain_checkpoint.pth", "converted", "--preset", "equiav-test",
        cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["embed_dim"] == 64
    assert _number(r"directory: ([\d.e+-]+)", out) < 1e-6
    assert 'push_to_hub("REPO_ID")' in out and "pushed" not in out


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_search_your_videos_finds_a_clip_by_its_own_soundtrack(shared_dir: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in (shared_dir / "data" / "av").iterdir():
        (videos / clip.name).symlink_to(clip)
    out = _example(
        "search_your_videos.py", videos, "--query", videos / "nasa_13013.mp4", "--target", "audio", "--index",
        "index", cwd=tmp_path,
    )  # fmt: skip
    assert "embedded 3 files" in out
    _, name, score = re.search(r"^ +1 +(\S+) +([\d.-]+)$", out, re.MULTILINE)[0].split()
    assert name == "nasa_13013.mp4" and float(score) > 0.99
    sound = shared_dir / "data" / "fsdd" / "recordings" / "3_theo_1.wav"
    again = _example(
        "search_your_videos.py", videos, "--query", sound, "--index", "index", "-k", "2", cwd=tmp_path
    )
    assert "embedded" not in again  # the index is reused
    scores = [float(score) for score in re.findall(r"^ +\d +\S+ +([\d.-]+)$", again, re.MULTILINE)]
    assert len(scores) == 2 and all(-1 <= s <= 1 for s in scores) and scores[0] >= scores[1]


@pytest.mark.slow
def test_zero_shot_retrieval_beats_chance(shared_dir: Path, tmp_path: Path) -> None:
    out = _example(
        "zero_shot_retrieval.py", shared_dir / "data", "--limit", "3", "--output", "r.json", "--plot", "s.png",
        cwd=tmp_path,
    )  # fmt: skip
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["audio_to_video"]["num_queries"] == 30 and results["video_to_audio"]["num_queries"] == 30
    for metrics in results.values():
        assert 30 <= metrics["R@1"] <= metrics["R@5"] <= 100  # chance is about 10
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "audio -> image" in out


@pytest.mark.slow
def test_linear_probe_on_a_speaker_split(shared_dir: Path, tmp_path: Path) -> None:
    recordings = shared_dir / "data" / "fsdd" / "recordings"
    for split, speakers, takes in (("train", ("george", "jackson"), 3), ("test", ("theo",), 2)):
        for digit in range(10):
            folder = tmp_path / split / str(digit)
            folder.mkdir(parents=True)
            for speaker in speakers:
                for take in range(takes):
                    name = f"{digit}_{speaker}_{take}.wav"
                    (folder / name).symlink_to(recordings / name)
    out = _example("linear_probe.py", "train", "--test-dir", "test", cwd=tmp_path)
    assert "10 classes, 50 train / 10 val / 20 test files" in out
    assert 30 <= _number(r"test accuracy ([\d.]+) %", out) <= 100


@pytest.mark.slow
def test_localize_sound_over_a_video_frame(shared_dir: Path, tmp_path: Path) -> None:
    video = shared_dir / "data" / "av" / "big_buck_bunny_432_433.webm"
    out = _example("localize_sound.py", "--video", video, "-o", "video.png", cwd=tmp_path)
    assert (tmp_path / "video.png").is_file()
    assert -1 <= _number(r"cosine (-?[\d.]+) \.\.", out) <= 1


@pytest.mark.slow
def test_finetune_classifier_on_a_labelled_video_folder(digit_videos: Path, tmp_path: Path) -> None:
    out = _example(
        "finetune_classifier.py", digit_videos, "--output-dir", "run", "--max-steps", "3", "--batch-size", "4",
        "--num-workers", "0", cwd=tmp_path,
    )  # fmt: skip
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "data" / "labels.csv").read_text().splitlines()[1:] == ["0,0,0", "1,1,1", "2,2,2"]
    validation = json.loads(re.search(r"^validation: (.*)$", out, re.MULTILINE)[1])
    assert validation["num_items"] == 3 and 0 <= validation["acc"] <= 100
    predictions = re.findall(r"(\d)/\d_4\.mkv: predicted (\S+) \(([\d.]+)\)", out)
    assert [truth for truth, _, _ in predictions] == ["0", "1", "2"]
    assert all(label in ("0", "1", "2") and 0 < float(score) <= 1 for _, label, score in predictions)


@pytest.mark.slow
def test_pretrain_on_your_videos_script(digit_videos: Path, tmp_path: Path) -> None:
    sizes = dict(
        PYTHON=sys.executable, OUT="out", MODEL="equiav-tiny", MAX_STEPS="2", BATCH_SIZE="2", NPROC="1",
        FRAMES="2", SHARD_SIZE="8", PREPARE_WORKERS="1", NUM_WORKERS="0",
    )  # fmt: skip
    command = ["bash", str(EXAMPLES / "pretrain_on_your_videos.sh"), str(digit_videos), "--device", "cpu",
               "--data.num-views", "4", "--no-progress", "--no-tensorboard"]  # fmt: skip
    out = _run(command, tmp_path, **sizes)
    assert json.loads((tmp_path / "out" / "shards" / "shards.json").read_text())["total"] == 15
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    last = [line for line in lines if line["split"] == "train"][-1]
    assert last["step"] == 2 and np.isfinite(last["loss"])
    assert "loaded out/run/final: 0_0.mkv -> audio (1, 64), image (1, 64)" in out
