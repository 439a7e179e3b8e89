"""The Hub model card (``README.md``) that ``save_pretrained`` and ``push_to_hub`` write beside the weights.

It replaces huggingface_hub's generic template (which says the model "has been pushed to the Hub" and leaves
"[More Information Needed]" placeholders) with what equiav knows: the architecture from the config, the Hub
metadata, and a usage snippet that runs on the written folder (``REPO_ID`` stands for the folder or hub id).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .config import EquiAVConfig

REPO_ID = "REPO_ID"
PAPER = "https://arxiv.org/abs/2403.09502"
PIPELINE_TAGS = {"audio": "audio-classification", "visual": "image-classification"}

EMBEDDING_USAGE = f"""```python
import equiav

model = equiav.EquiAVModel.from_pretrained("{REPO_ID}")  # this folder or its hub id
audio = model.embed_audio(["clip.wav"])  # (1, D), L2-normalized
images = model.embed_image(["frame.png"])  # (1, D)
print(audio @ images.T)  # cosine similarity
```"""

CLASSIFIER_USAGE = f"""```python
import equiav

classifier = equiav.EquiAVClassifier.from_pretrained("{REPO_ID}")  # this folder or its hub id
print(classifier.predict({{inputs}}, top_k=3))  # [(label name, score), ...] per input
```"""


def _architecture(config: EquiAVConfig) -> str:
    return (
        f"two ViT towers ({config.embed_dim}-d, {config.depth} blocks, {config.num_heads} heads, patch "
        f"{config.patch_size}); audio: {config.target_length} frames x {config.num_mel_bins} mel bins of "
        f"{config.sample_rate} Hz mono; images: {config.image_size} x {config.image_size}"
    )


def _metadata(tags: list[str], pipeline_tag: str | None, datasets: list[str] | None) -> ModelCardData:
    return ModelCardData(
        library_name="equiav",
        license="mit",
        tags=tags,
        pipeline_tag=pipeline_tag,
        datasets=datasets,
    )


def embedding_card(config: EquiAVConfig, datasets: list[str] | None = None) -> ModelCard:
    """The card of an ``EquiAVModel``: audio and image embeddings in one space."""
    text = "\n\n".join(
        [
            f"# EquiAV: {config.name}",
            f"An [EquiAV]({PAPER}) audio-visual model (Kim et al., ICML 2024) saved with "
            "[equiav](https://github.com/equiav/equiav): audio and images embedded in one space, for zero-shot "
            "retrieval, linear probes, fine-tuning and sound-source localization.",
            f"Architecture: {_architecture(config)}.",
            "## Usage\n\n`pip install equiav`, then:\n\n" + EMBEDDING_USAGE,
        ]
    )
    return _card(
        text, _metadata(["audio-visual", "contrastive-learning", "equiav"], "feature-extraction", datasets)
    )


def classifier_card(
    config: EquiAVConfig, mode: str, label_names: list[str] | None, datasets: list[str] | None = None
) -> ModelCard:
    """The card of an ``EquiAVClassifier`` in ``mode`` ("audio", "visual" or "audio_visual")."""
    inputs = {"audio": 'audio=["clip.wav"]', "visual": 'image=["frame.png"]'}
    usage = CLASSIFIER_USAGE.replace("{inputs}", inputs.get(mode, 'audio=["clip.wav"], image=["frame.png"]'))
    labels = f"{len(label_names)} labels" if label_names else "no label names (scores by class index)"
    text = "\n\n".join(
        [
            f"# EquiAV classifier: {config.name}, {mode.replace('_', '-')}",
            f"A classifier on [EquiAV]({PAPER}) towers (Kim et al., ICML 2024) saved with "
            f"[equiav](https://github.com/equiav/equiav): {mode.replace('_', '-')} input, {labels}.",
            f"Architecture: {_architecture(config)}.",
            "## Usage\n\n`pip install equiav`, then:\n\n" + usage,
        ]
    )
    tags = ["audio-visual", "equiav", *([PIPELINE_TAGS[mode]] if mode in PIPELINE_TAGS else [])]
    return _card(text, _metadata(tags, PIPELINE_TAGS.get(mode), datasets))


def _card(text: str, data: ModelCardData) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}\n")


def card_for(model: Any, datasets: list[str] | None = None) -> ModelCard:
    """The card of an ``EquiAVModel`` or ``EquiAVClassifier`` (by its config)."""
    config = model.config
    if hasattr(config, "num_classes"):
        return classifier_card(config.backbone, config.mode, config.label_names, datasets)
    return embedding_card(config, datasets)
