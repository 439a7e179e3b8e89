"""The model card ``save_pretrained`` writes: Hub metadata, no template placeholders, a usage snippet that runs."""

from __future__ import annotations

import re
import stat

import numpy as np
import soundfile as sf
from huggingface_hub import ModelCard
from PIL import Image

from equiav import EquiAVClassifier, EquiAVModel
from equiav.classifier import ClassifierConfig
from equiav.model_card import REPO_ID


def _usage(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def _small_files(folder) -> None:
    sf.write(
        folder / "clip.wav", (np.random.default_rng(0).standard_normal(8000) * 0.1).astype("float32"), 16000
    )
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        folder / "frame.png"
    )


def test_embedding_model_card_runs_on_the_written_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "saved"
    EquiAVModel.from_pretrained("equiav-tiny-digits").save_pretrained(out)
    text = (out / "README.md").read_text()
    assert "More Information Needed" not in text and "pushed to the Hub" not in text
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "equiav" and card.data.license == "mit"
    assert card.data.pipeline_tag == "feature-extraction" and "audio-visual" in card.data.tags
    assert "equiav-tiny-digits" in text and "16 mel bins" in text
    _small_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(_usage(text).replace(REPO_ID, str(out)), {})
    assert "tensor" in capsys.readouterr().out
    mode = stat.S_IMODE((out / "model.safetensors").stat().st_mode)
    assert mode == stat.S_IMODE((out / "config.json").stat().st_mode)


def test_classifier_card_names_its_task_and_runs(tmp_path, monkeypatch, capsys):
    config = ClassifierConfig(
        backbone="equiav-tiny-digits", num_classes=3, mode="audio", label_names=["a", "b", "c"]
    )
    out = tmp_path / "clf"
    EquiAVClassifier(config).save_pretrained(out)
    text = (out / "README.md").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "audio-classification" and "More Information Needed" not in text
    _small_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(_usage(text).replace(REPO_ID, str(out)), {})
    assert re.search(r"\('[abc]', ", capsys.readouterr().out)
