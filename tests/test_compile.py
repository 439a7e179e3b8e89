"""``EquiAVModel.compile_for_cpu``: one graph per encoder, the eager model's embeddings, the eager model's input checks."""

from __future__ import annotations

import copy

import pytest
import torch

from equiav import EquiAVConfig, EquiAVModel
from equiav.errors import InvalidInputError


def _inputs(config: EquiAVConfig, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    fbank = torch.randn(batch, config.target_length, config.num_mel_bins, generator=generator)
    pixels = torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)
    return fbank, pixels


def test_encoders_trace_as_single_graphs_after_the_input_checks(one_thread):
    """The input checks (which read values) run before the compiled part, so each encoder is one graph."""
    torch.manual_seed(0)
    model = EquiAVModel(EquiAVConfig.from_preset("equiav-test")).eval()
    fbank, pixels = _inputs(model.config)
    with torch.no_grad():
        audio = torch._dynamo.explain(model._encode_audio)(fbank, model.audio_views)
        image = torch._dynamo.explain(model._encode_image)(pixels, model.visual_views)
    assert (audio.graph_count, audio.graph_break_count) == (1, 0)
    assert (image.graph_count, image.graph_break_count) == (1, 0)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_embeddings_and_checks_its_inputs(one_thread):
    torch.manual_seed(0)
    eager = EquiAVModel(EquiAVConfig.from_preset("equiav-test")).eval()
    compiled = copy.deepcopy(eager).train().compile_for_cpu()
    assert not compiled.training
    fbank, pixels = _inputs(eager.config)
    with torch.inference_mode():
        expected = eager.encode_audio(fbank), eager.encode_image(pixels)
        got = compiled.encode_audio(fbank), compiled.encode_image(pixels)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled.state_dict()["pos_embed_a"], eager.state_dict()["pos_embed_a"])
    broken = fbank.clone()
    broken[0, 3, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        compiled.encode_audio(broken)
    with pytest.raises(InvalidInputError, match="shape"):
        compiled.encode_image(pixels[:, :, :-1])
