"""torch.hub entry points: ``torch.hub.load("equiav/equiav", "equiav_tiny_digits")`` or ``source="local"``."""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "numpy", "PIL", "soundfile"]


def equiav(name_or_path: str = "equiav-tiny-digits", pretrained: bool = True, **kwargs):
    """An EquiAV model: weights from a registered name, directory, checkpoint or hub id; or a preset, untrained."""
    from equiav import EquiAVModel

    if pretrained:
        return EquiAVModel.from_pretrained(name_or_path, **kwargs)
    return EquiAVModel(name_or_path).eval()


def equiav_tiny_digits(pretrained: bool = True, **kwargs):
    """The small demo model trained on spoken and handwritten digits (weights ship with the package)."""
    return equiav("equiav-tiny-digits", pretrained=pretrained, **kwargs)


def equiav_base(checkpoint: str | None = None, pretrained: bool = True, **kwargs):
    """The paper's ViT-B/16 model with weights from ``checkpoint`` (a converted directory, the authors' .pth or a hub
    id). Its weights are not packaged, so a call without ``checkpoint`` is refused unless it asks for random weights
    with ``pretrained=False``: a silently untrained model would give meaningless embeddings."""
    from equiav import CheckpointError

    if checkpoint is not None:
        return equiav(checkpoint, pretrained=True, config="equiav-base", **kwargs)
    if pretrained:
        raise CheckpointError(
            "equiav_base: no weights are packaged for equiav-base; pass checkpoint= (a converted directory, the "
            "authors' .pth or a hub id), or pretrained=False for an untrained model with random weights"
        )
    return equiav("equiav-base", pretrained=False)
