"""Prepacked linear weights for CPU inference: the same outputs, the plain path wherever packing does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equiav import EquiAVConfig, EquiAVModel
from equiav.classifier import ClassifierConfig, EquiAVClassifier
from equiav.packing import PackedLinear, pack_linear_layers, packable_dtypes, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture(scope="module")
def models() -> tuple[EquiAVModel, EquiAVModel]:
    torch.manual_seed(0)
    plain = EquiAVModel(EquiAVConfig.from_preset("equiav-test")).eval()
    return plain, copy.deepcopy(plain).pack_for_cpu()


def inputs(config: EquiAVConfig, batch: int = 2, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(1)
    fbank = torch.randn(batch, config.target_length, config.num_mel_bins, generator=generator)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    return fbank.to(dtype), pixels.to(dtype)


def packed_layers(model: nn.Module) -> list[PackedLinear]:
    return [module for module in model.modules() if isinstance(module, PackedLinear)]


def test_every_linear_layer_is_packed_and_shares_its_parameters(models) -> None:
    plain, packed = models
    layers = packed_layers(packed)
    assert len(layers) == sum(type(m) is nn.Linear for m in plain.modules()) > 40
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert packed.state_dict().keys() == plain.state_dict().keys()
    model = EquiAVModel(EquiAVConfig.from_preset("equiav-test"))
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    model.pack_for_cpu()
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == before


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_packed_model_gives_the_plain_models_embeddings(models, dtype, tolerance) -> None:
    plain, packed = (copy.deepcopy(m).to(dtype) for m in models)
    fbank, pixels = inputs(plain.config, dtype=dtype)
    with torch.inference_mode():
        expected = plain.encode_audio(fbank), plain.encode_image(pixels), plain.audio_tokens(fbank)
        got = packed.encode_audio(fbank), packed.encode_image(pixels), packed.audio_tokens(fbank)
    ran = [layer._packed is not None for layer in packed_layers(packed.blocks_a)]
    # The packed path ran, or, for bfloat16 on a CPU without oneDNN's bfloat16 kernels, the plain path did.
    assert all(ran) if dtype in packable_dtypes() else not any(ran)
    for a, b in zip(got, expected):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=tolerance, atol=tolerance)


def test_packed_weight_follows_changes_of_the_weight() -> None:
    torch.manual_seed(0)
    layer = PackedLinear.from_linear(nn.Linear(48, 40))
    x = torch.randn(5, 7, 48)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        first = layer._packed[1]
        layer.weight.mul_(-2.0)  # in place, as an optimizer step
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        assert layer._packed[1] is not first
        other = nn.Linear(48, 40)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))
        layer.weight = nn.Parameter(torch.randn(40, 48))  # replaced
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def test_training_autocast_and_other_dtypes_use_the_plain_weight() -> None:
    torch.manual_seed(0)
    layer = PackedLinear.from_linear(nn.Linear(32, 16))
    x = torch.randn(4, 32, requires_grad=True)
    out = layer(x)
    assert layer._packed is None and torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16 and layer._packed is None
    half = PackedLinear.from_linear(nn.Linear(32, 16).half())
    with torch.no_grad():
        assert (
            half(x.half()).dtype == torch.float16 and half._packed is None
        )  # only float32 and bfloat16 pack
        layer(x)
    assert layer._packed is not None
    layer.to(torch.bfloat16)  # moving or casting drops the packed copy
    assert layer._packed is None and layer.weight.dtype == torch.bfloat16


def test_packed_model_saves_copies_and_reloads(models, tmp_path) -> None:
    plain, packed = models
    fbank, _ = inputs(plain.config)
    with torch.inference_mode():
        expected = packed.encode_audio(fbank)
    packed.save_pretrained(tmp_path / "saved")
    reloaded = EquiAVModel.from_pretrained(tmp_path / "saved").pack_for_cpu()
    duplicate = copy.deepcopy(packed)
    assert all(layer._packed is None for layer in packed_layers(duplicate))  # never copied, remade on demand
    with torch.inference_mode():
        torch.testing.assert_close(reloaded.encode_audio(fbank), expected, rtol=0, atol=0)
        torch.testing.assert_close(duplicate.encode_audio(fbank), expected, rtol=0, atol=0)


def test_without_onednn_packing_warns_and_changes_nothing(monkeypatch) -> None:
    import equiav.packing

    monkeypatch.setattr(equiav.packing, "packing_available", lambda: False)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="lacks oneDNN"):
        assert pack_linear_layers(model) == 0
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]


def test_packed_classifier_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    config = ClassifierConfig(backbone=EquiAVConfig.from_preset("equiav-test"), num_classes=4, head="mlp")
    plain = EquiAVClassifier(config).eval()
    packed = copy.deepcopy(plain).pack_for_cpu()
    fbank, pixels = inputs(config.backbone)
    with torch.inference_mode():
        torch.testing.assert_close(packed(fbank, pixels), plain(fbank, pixels), rtol=1e-5, atol=1e-5)
    assert all(layer._packed is not None for layer in packed_layers(packed.mlp_head))
