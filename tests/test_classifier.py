"""EquiAVClassifier: the authors' fine-tuned checkpoints reproduce their logits; every mode and head; save / load."""

from __future__ import annotations

import pytest
import torch
from corpus import authors_layout

from equiav import EquiAVModel
from equiav.classifier import (
    ClassifierConfig,
    EquiAVClassifier,
    canonical_mode,
    load_label_names,
    read_label_file,
)
from equiav.config import EquiAVConfig
from equiav.errors import CheckpointError, ConfigError, InvalidInputError

FIXTURES = {
    "multimodal": ("finetune_multimodal_checkpoint.pth", "audio_visual", "linear"),
    "audio_only": ("finetune_audio_only_checkpoint.pth", "audio", "mlp"),
    "video_only": ("finetune_video_only_checkpoint.pth", "visual", "linear"),
}
TINY = EquiAVConfig.from_preset("equiav-tiny-digits", depth=1)


def _tiny(mode: str, head: str, classes: int = 5, **kw) -> EquiAVClassifier:
    torch.manual_seed(0)
    return EquiAVClassifier(ClassifierConfig(backbone=TINY, num_classes=classes, mode=mode, head=head, **kw))


def _inputs(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(batch, TINY.target_length, TINY.num_mel_bins, generator=g)
    image = torch.randn(batch, 3, TINY.image_size, TINY.image_size, generator=g)
    return audio, image


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_authors_finetune_checkpoints_reproduce_logits(name: str, official_dir, parity) -> None:
    file, mode, head = FIXTURES[name]
    # Shapes cannot tell multimodal from video_only in this fixture (embed_dim 64 == 2 x 32), so the mode is given.
    model = EquiAVClassifier.from_pretrained(official_dir / file, mode=mode, num_heads=4)
    assert (model.config.mode, model.config.head, model.config.num_classes) == (mode, head, 7)
    assert not model.training
    with torch.no_grad():
        logits = model(audio=parity["input.a_fbank"], image=parity["input.v"])
        three_channel = model(
            audio=parity["input.a_fbank"][:, None].repeat(1, 3, 1, 1), image=parity["input.v"]
        )
    expected = parity[f"ft.{name}.logits"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(three_channel, expected, rtol=1e-5, atol=1e-5)


def test_single_modality_checkpoints_need_only_their_input(official_dir, parity) -> None:
    audio_model = EquiAVClassifier.from_pretrained(official_dir / FIXTURES["audio_only"][0], num_heads=4)
    assert audio_model.config.mode == "audio"  # unambiguous: the mlp head takes 32 features
    assert not hasattr(audio_model, "blocks_v")
    visual_model = EquiAVClassifier.from_pretrained(
        official_dir / FIXTURES["video_only"][0], mode="visual", num_heads=4
    )
    with torch.no_grad():
        torch.testing.assert_close(audio_model(audio=parity["input.a_fbank"]), parity["ft.audio_only.logits"])
        torch.testing.assert_close(visual_model(image=parity["input.v"]), parity["ft.video_only.logits"])
    with pytest.raises(InvalidInputError, match="needs audio"):
        audio_model(image=parity["input.v"])


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_authors_finetune_checkpoints_of_other_sizes(tmp_path, head: str) -> None:
    """A fine-tuned checkpoint of another size in the authors' layout (both towers, 128 wide, 96-px images, 256
    audio frames) loads from its shapes alone: sizes, mode, head and classes, and the writer's logits exactly."""
    backbone = EquiAVConfig(
        embed_dim=128,
        num_heads=2,
        depth=2,
        image_size=96,
        image_resize=96,
        target_length=256,
        inter_proj_dim=48,
    )
    config = ClassifierConfig(
        backbone=backbone, num_classes=5, mode="audio_visual", head=head, head_hidden_dim=40
    )
    torch.manual_seed(0)
    source = EquiAVClassifier(config).eval()
    path = tmp_path / "finetuned.pth"
    torch.save(authors_layout(source.state_dict()), path)
    loaded = EquiAVClassifier.from_pretrained(path)
    assert loaded.config.backbone == backbone
    assert (loaded.config.mode, loaded.config.head, loaded.config.num_classes) == ("audio_visual", head, 5)
    g = torch.Generator().manual_seed(1)
    audio, image = torch.randn(2, 256, 128, generator=g), torch.randn(2, 3, 96, 96, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(loaded(audio, image), source(audio, image), rtol=0, atol=0)


def test_ambiguous_or_wrong_mode_is_an_error(official_dir) -> None:
    path = official_dir / FIXTURES["multimodal"][0]
    with pytest.raises(CheckpointError, match="pass mode"):
        EquiAVClassifier.from_pretrained(path, num_heads=4)
    with pytest.raises(CheckpointError, match="takes 64 features"):
        EquiAVClassifier.from_pretrained(path, mode="audio", num_heads=4)


def test_pretraining_checkpoint_is_not_a_classifier(official_dir) -> None:
    with pytest.raises(CheckpointError, match="mlp_head"):
        EquiAVClassifier.from_pretrained(official_dir / "pretrain_checkpoint.pth", num_heads=4)


@pytest.mark.parametrize("mode", ["audio_visual", "audio", "visual"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_every_mode_and_head_runs_and_trains(mode: str, head: str) -> None:
    """Including audio + linear and visual + mlp, which crash in the authors' code (B7)."""
    model = _tiny(mode, head, head_hidden_dim=16)
    expected_in = {
        "audio_visual": 2 * TINY.inter_proj_dim,
        "audio": TINY.inter_proj_dim,
        "visual": TINY.embed_dim,
    }
    assert model.mlp_head[0].in_features == expected_in[mode]
    audio, image = _inputs()
    model.train()
    logits = model(audio=audio, image=image)
    assert logits.shape == (4, 5)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for _, p in model.head_parameters())
    assert all(p.grad is not None for _, p in model.backbone_parameters() if p.requires_grad)


def test_drop_path_is_active_in_training_only() -> None:
    model = _tiny("audio", "linear", drop_path=0.5)
    audio, _ = _inputs()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(audio=audio), model(audio=audio))
        model.train()
        torch.manual_seed(1)
        first = model(audio=audio)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(audio=audio))


def test_from_backbone_copies_the_towers() -> None:
    torch.manual_seed(3)
    backbone = EquiAVModel(TINY)
    model = EquiAVClassifier.from_backbone(backbone, num_classes=3, mode="audio_visual")
    audio, image = _inputs(2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.audio_tokens(audio), backbone.audio_tokens(audio), rtol=0, atol=0)
        torch.testing.assert_close(model.image_tokens(image), backbone.image_tokens(image), rtol=0, atol=0)


def test_save_and_load_round_trip(tmp_path) -> None:
    model = _tiny("audio_visual", "mlp", classes=3, head_hidden_dim=8, label_names=["cat", "dog", "bird"])
    model.train()
    audio, image = _inputs()
    model(audio=audio, image=image)  # moves the BatchNorm running statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path / "clf")
    loaded = EquiAVClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.config.to_dict() == model.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(audio=audio, image=image), model(audio=audio, image=image), rtol=0, atol=0
        )
    top = loaded.predict(audio=audio, image=image, top_k=2)
    with torch.no_grad():
        probs = model(audio=audio, image=image).sigmoid()
    assert len(top) == 4 and len(top[0]) == 2
    assert top[0][0][0] == ["cat", "dog", "bird"][int(probs[0].argmax())]
    assert top[0][0][1] == pytest.approx(float(probs[0].max()), abs=1e-6)


def test_label_files(tmp_path) -> None:
    csv_file = tmp_path / "class_labels_indices.csv"
    csv_file.write_text('index,mid,display_name\n1,/m/b,"Dog, bark"\n0,/m/a,Speech\n')
    assert read_label_file(csv_file) == (["/m/a", "/m/b"], ["Speech", "Dog, bark"])
    text = tmp_path / "names.txt"
    text.write_text("zero\none\n\n")
    assert load_label_names(text) == ["zero", "one"]
    model = _tiny("visual", "linear", classes=2)
    model.set_label_names(load_label_names(text))
    _, image = _inputs(1)
    assert model.predict(image=image, top_k=1)[0][0][0] in ("zero", "one")
    with pytest.raises(InvalidInputError, match="2 classes"):
        model.set_label_names(["a", "b", "c"])


def test_bad_configs() -> None:
    assert canonical_mode("multimodal") == "audio_visual" and canonical_mode("video_only") == "visual"
    with pytest.raises(ConfigError, match="mode"):
        ClassifierConfig(backbone=TINY, num_classes=2, mode="text")
    with pytest.raises(ConfigError, match="head"):
        ClassifierConfig(backbone=TINY, num_classes=2, head="conv")
    with pytest.raises(ConfigError, match="label_names"):
        ClassifierConfig(backbone=TINY, num_classes=2, label_names=["a"])
    with pytest.raises(InvalidInputError, match="audio must have shape"):
        _tiny("audio", "linear")(audio=torch.zeros(2, 10, 10))
