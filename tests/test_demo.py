"""The packaged model, the demo command and sound-source localization."""

from __future__ import annotations

import subprocess
import sys

import torch
from PIL import Image

from equiav import EquiAVModel, list_pretrained
from equiav.demo import demo_set
from equiav.retrieval import audio_visual_retrieval
from equiav.training.datasets.avdigits import avdigits_eval_set


def test_packaged_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "equiav-tiny-digits" in list_pretrained()
    model = EquiAVModel.from_pretrained("equiav-tiny-digits")
    assert model.config.name == "equiav-tiny-digits" and not model.training
    assert model.dtype == torch.float32


def test_packaged_model_matches_known_voices_to_unseen_handwriting(shared_dir, one_thread):
    """The shipped weights keep the numbers in MODEL_CARD.md: the four training speakers' clips against the held-out
    MNIST images, class-level zero-shot R@1 through encode_audio / encode_image (chance 0.10)."""
    model = EquiAVModel.from_pretrained("equiav-tiny-digits")
    speakers = ("george", "jackson", "theo", "yweweler")
    fbanks, images, audio_labels, image_labels = avdigits_eval_set(
        shared_dir, model.config, "val", val_speakers=speakers
    )
    assert len(fbanks) == 2000 and len(images) == 800
    with torch.no_grad():
        audio, image = model.encode_audio(fbanks), model.encode_image(images)
    result = audio_visual_retrieval(audio, image, audio_labels, image_labels)
    assert result["audio_to_video"]["R@1"] >= 97.0 and result["video_to_audio"]["R@1"] >= 91.5
    assert model.config.audio_normalization == "utterance"


def test_demo_set_is_complete():
    audio, audio_labels, images, image_labels = demo_set()
    assert sorted(set(audio_labels)) == list(range(10)) and sorted(set(image_labels)) == list(range(10))
    assert all(p.is_file() for p in audio + images) and len(audio) == len(images) == 30


def test_demo_command_end_to_end(tmp_path):
    png = tmp_path / "similarity.png"
    result = subprocess.run(
        [sys.executable, "-m", "equiav", "demo", "--output", str(png)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    recalls = [float(line.split()[2]) for line in lines if line.startswith("R@1 = ")]
    assert len(recalls) == 2 and min(recalls) >= 0.8, recalls  # the goal in MODEL_CARD.md, both directions
    assert sum(line.rstrip().endswith(("hit", "miss")) for line in lines) == 60
    with Image.open(png) as image:
        assert image.size[0] > 30 * 12 and image.size[1] > 30 * 12


def test_localize_scores_patches_like_the_inter_head(tmp_path):
    model = EquiAVModel.from_pretrained("equiav-tiny-digits")
    cfg = model.config
    audio = torch.randn(2, cfg.target_length, cfg.num_mel_bins)
    image = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        heat = model.localize(audio, image)
        sound = torch.nn.functional.normalize(model.encode_audio(audio), dim=-1)
        tokens = model.image_tokens(image)
        row, col = 1, 2
        patch = tokens[:, row * cfg.image_grid[1] + col]
        expected = torch.nn.functional.cosine_similarity(model.pred_v_inter(patch), sound, dim=-1)
    assert heat.shape == (2, *cfg.image_grid)
    torch.testing.assert_close(heat[:, row, col], expected, rtol=1e-5, atol=1e-5)

    audio_file, _, image_file, _ = (items[0] for items in demo_set())
    out = tmp_path / "heat.png"
    subprocess.run([sys.executable, "-m", "equiav", "localize", str(audio_file), str(image_file), "-o", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    with Image.open(out) as picture:  # the 384-pixel overlay, a title above it and a colour bar beside it
        assert picture.width > 384 + 100 and picture.height > 384
