"""The model against the authors' outputs, and its public API."""

from __future__ import annotations

import copy

import pytest
import torch
from corpus import authors_layout

from equiav import CheckpointError, EquiAVConfig, EquiAVModel, InvalidInputError, UnknownModelError
from equiav.checks import all_finite
from equiav.layers import PatchEmbed, plain_attention_pays, run_blocks, sincos_2d

OUTPUT_KEYS = {
    "inter_audio": "z_a_inv",
    "inter_image": "z_v_inv",
    "equi_audio": "z_a_equi_t",
    "equi_image": "z_v_equi_t",
    "aug_audio": "z_a_aug",
    "aug_image": "z_v_aug",
}


def close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def official_model(official_dir):
    return EquiAVModel.from_pretrained(official_dir / "pretrain_checkpoint.pth", config="equiav-test")


@pytest.mark.parametrize("checkpoint", ["pretrain_checkpoint.pth", "pretrain_checkpoint_ddp_wrapped.pth"])
@pytest.mark.parametrize("three_channels", [False, True])
def test_forward_matches_authors(official_dir, parity, checkpoint, three_channels):
    model = EquiAVModel.from_pretrained(official_dir / checkpoint, config="equiav-test")
    a, a_aug = parity["input.a_fbank"], parity["input.a_aug_fbank"]
    if three_channels:
        a, a_aug = a[:, None].repeat(1, 3, 1, 1), a_aug[:, None].repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = model(
            a,
            parity["input.v"],
            a_aug,
            parity["input.v_aug"],
            parity["input.t_a"],
            parity["input.t_v"],
            parity["input.t_a_list"],
            parity["input.t_v_list"],
        )
    for field, key in OUTPUT_KEYS.items():
        close(getattr(out, field), parity[f"output.{key}"])


def test_tokens_and_encoders_match_authors(official_model, parity):
    with torch.no_grad():
        close(official_model.audio_tokens(parity["input.a_fbank"]), parity["debug.tokens_a"])
        close(official_model.image_tokens(parity["input.v"]), parity["debug.tokens_v"])
        close(
            official_model.encode_audio(parity["input.a_fbank"], parity["input.t_a_list"]),
            parity["output.z_a_feat"],
        )
        close(
            official_model.encode_image(parity["input.v"], parity["input.t_v_list"]),
            parity["output.z_v_feat"],
        )
        tokens = parity["debug.tokens_a"]
        emb = official_model.aug_encoder_a(parity["input.t_a_list"])
        close(emb, parity["debug.aug_emb_a_list"])
        close(official_model.cross_attn_a(tokens, emb), parity["debug.centroid_a"])


def test_shared_views_equal_per_sample_views(official_model, parity):
    views = parity["input.t_a_list"][0]
    fbank = parity["input.a_fbank"]
    with torch.no_grad():
        shared = official_model.encode_audio(fbank, views)
        per_sample = official_model.encode_audio(fbank, views.expand(3, -1, -1))
    close(shared, per_sample)


def test_position_embeddings_equal_checkpoint(official_model):
    cfg = official_model.config
    torch.testing.assert_close(
        official_model.pos_embed_a[0], sincos_2d(*cfg.audio_grid, cfg.embed_dim), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(
        official_model.pos_embed_v[0], sincos_2d(*cfg.image_grid, cfg.embed_dim), atol=1e-7, rtol=0
    )


def test_finetune_checkpoint_needs_backbone_only(official_dir, parity):
    path = official_dir / "finetune_multimodal_checkpoint.pth"
    with pytest.raises(CheckpointError, match="fine-tuning checkpoint"):
        EquiAVModel.from_pretrained(path, config="equiav-test")
    model = EquiAVModel.from_pretrained(path, config="equiav-test", backbone_only=True)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.blocks_a[1].attn.qkv.weight, raw["__M__.blocks_a.1.attn.qkv.weight"])
    torch.testing.assert_close(model.norm_v.bias, raw["__M__.norm_v.bias"])


ARCHITECTURE_FIELDS = (
    "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans", "audio_aug_dim", "visual_aug_dim",
    "aug_embed_dim", "cross_attn_heads", "cross_attn_head_dim", "cross_attn_mlp_ratio", "proj_hidden_dim",
    "intra_proj_dim", "inter_proj_dim", "num_mel_bins", "target_length", "image_size", "image_resize",
)  # fmt: skip


@pytest.mark.parametrize(
    ("sizes", "told"),
    [
        # 2 heads of 64: what the shapes cannot tell (heads, mel bins) matches the defaults for this width.
        (dict(embed_dim=128, num_heads=2, depth=3, mlp_ratio=2.0, aug_embed_dim=48, cross_attn_head_dim=16,
              cross_attn_mlp_ratio=1.0, proj_hidden_dim=96, intra_proj_dim=24, inter_proj_dim=40, image_size=96,
              image_resize=96, target_length=256), {}),
        # 3 heads of 32, 8-pixel patches, 64 mel bins: the heads and mel bins must be told. (The authors' code always
        # builds its cross-attention with 8 heads, which the loader assumes; only their width shows in the shapes.)
        (dict(embed_dim=96, num_heads=3, depth=2, patch_size=8, proj_hidden_dim=64, intra_proj_dim=16,
              inter_proj_dim=16, image_size=64, image_resize=64, num_mel_bins=64, target_length=96),
         dict(num_heads=3, num_mel_bins=64)),
        # A base config given whole (as equiav's own checkpoints store one) also keeps its preprocessing.
        (dict(embed_dim=64, num_heads=4, depth=1, image_size=64, image_resize=72, target_length=64), "config"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("prefix", ["__M__.", "module."])
def test_checkpoints_of_other_sizes_load_with_the_architecture_their_shapes_give(
    tmp_path, sizes, told, prefix
):
    """An authors' checkpoint of any size, not only the released one's, loads from its tensor shapes (plus what
    shapes cannot tell, passed as overrides) and computes exactly what the model that wrote it computes."""
    config = EquiAVConfig(**sizes)
    torch.manual_seed(0)
    source = EquiAVModel(config).eval()
    path = tmp_path / "checkpoint.pth"
    torch.save(authors_layout(source.state_dict(), prefix), path)
    loaded = EquiAVModel.from_pretrained(path, **({"config": config} if told == "config" else told)).eval()
    assert {f: getattr(loaded.config, f) for f in ARCHITECTURE_FIELDS} == {
        f: getattr(config, f) for f in ARCHITECTURE_FIELDS
    }
    generator = torch.Generator().manual_seed(1)
    fbank = torch.randn(2, config.target_length, config.num_mel_bins, generator=generator)
    pixels = torch.randn(2, 3, config.image_size, config.image_size, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_audio(fbank), source.encode_audio(fbank), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode_image(pixels), source.encode_image(pixels), rtol=0, atol=0)
        torch.testing.assert_close(loaded.audio_tokens(fbank), source.audio_tokens(fbank), rtol=0, atol=0)


def test_strict_loading_lists_problems(official_dir, tmp_path):
    state = torch.load(official_dir / "pretrain_checkpoint.pth", map_location="cpu", weights_only=True)
    del state["__M__.pred_a_inter.fc1.weight"]
    state["__M__.surprise.weight"] = torch.zeros(3)
    state["__M__.norm_a.weight"] = torch.zeros(5)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        EquiAVModel.from_pretrained(path, config="equiav-test")
    message = str(info.value)
    assert (
        "pred_a_inter.fc1.weight" in message and "surprise.weight" in message and "norm_a.weight" in message
    )
    assert str(path) in message


def test_save_and_reload_round_trip(official_model, parity, tmp_path):
    official_model.save_pretrained(tmp_path / "converted")
    assert (tmp_path / "converted" / "config.json").is_file()
    reloaded = EquiAVModel.from_pretrained(tmp_path / "converted")
    assert reloaded.config == official_model.config
    torch.testing.assert_close(reloaded.audio_views, official_model.audio_views, rtol=0, atol=0)
    with torch.no_grad():
        a = parity["input.a_fbank"]
        torch.testing.assert_close(reloaded.encode_audio(a), official_model.encode_audio(a), rtol=0, atol=0)


def test_default_views_are_fixed_and_in_distribution():
    cfg = EquiAVConfig.from_preset("equiav-test")
    first, second = EquiAVModel(cfg), EquiAVModel(cfg)
    torch.testing.assert_close(first.audio_views, second.audio_views, rtol=0, atol=0)
    assert first.audio_views.shape == (cfg.num_views, 24) and first.visual_views.shape == (cfg.num_views, 18)
    assert torch.all(first.audio_views[:, 7] == 1) and torch.all(first.visual_views[:, 0] == 1)
    other = EquiAVModel(cfg.replace(view_seed=1))
    assert not torch.equal(other.audio_views, first.audio_views)


def test_encode_is_deterministic(official_model, parity):
    with torch.no_grad():
        a = parity["input.a_fbank"]
        torch.testing.assert_close(
            official_model.encode_audio(a), official_model.encode_audio(a), rtol=0, atol=0
        )


def test_view_draw_changes_embedding_little(official_model, parity):
    """Two draws of the 16 views give nearly the same embedding: the cost of fixing them is small."""
    from equiav.training.augment import AudioAugmenter

    sampler = AudioAugmenter.for_config(official_model.config)
    with torch.no_grad():
        a = parity["input.a_fbank"]
        first = official_model.encode_audio(a, sampler.sample_vectors(16, torch.Generator().manual_seed(1)))
        second = official_model.encode_audio(a, sampler.sample_vectors(16, torch.Generator().manual_seed(2)))
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=-1)
    assert cosine.min() > 0.999


def test_bad_shapes_and_dtypes_are_reported():
    model = EquiAVModel("equiav-test").eval()
    with pytest.raises(InvalidInputError, match="1024, 128"):
        model.encode_audio(torch.zeros(2, 1000, 128))
    with pytest.raises(InvalidInputError, match="dtype"):
        model.encode_audio(torch.zeros(2, 1024, 128, dtype=torch.int64))
    with pytest.raises(InvalidInputError, match="224"):
        model.encode_image(torch.zeros(2, 3, 200, 200))
    with pytest.raises(InvalidInputError, match="NaN"):
        model.encode_audio(torch.full((1, 1024, 128), float("nan")))
    with pytest.raises(InvalidInputError, match="NaN"):
        model.encode_image(torch.full((1, 3, 224, 224), float("inf")))
    with pytest.raises(InvalidInputError, match="views"):
        model.encode_image(torch.zeros(1, 3, 224, 224), views=torch.zeros(16, 24))


@pytest.mark.parametrize(
    ("channels", "height", "width", "patch"),
    [(3, 224, 224, 16), (3, 128, 1024, 16), (3, 30, 37, 8), (2, 16, 96, 8)],
)
def test_patch_projection_equals_the_strided_convolution(channels, height, width, patch):
    torch.manual_seed(0)
    embed = PatchEmbed(patch, channels, 32)
    x = torch.randn(2, channels, height, width)
    single = torch.randn(2, 1, height, width)
    with torch.no_grad():
        expected = embed.proj(x).flatten(2).transpose(1, 2)
        expected_single = embed.proj(single.expand(-1, channels, -1, -1)).flatten(2).transpose(1, 2)
        assert embed(x).shape == (2, (height // patch) * (width // patch), 32)
        close(embed(x), expected)
        close(embed.forward_single_channel(single), expected_single)
        low = embed.to(torch.bfloat16)(x.bfloat16()).float()
    assert torch.nn.functional.cosine_similarity(low, expected, dim=-1).min() > 0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_finite_finds_every_nan_and_infinity(dtype):
    big = torch.finfo(dtype).max
    x = torch.tensor([[0.0, -1.5, big], [-big, 2.0, 3.0]], dtype=dtype)
    assert all_finite(x) and all_finite(x[:0]) and all_finite(x.t())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for index in ((0, 0), (1, 2)):
            y = x.clone()
            y[index] = bad
            assert not all_finite(y) and not all_finite(y.t()), (bad, index)


def test_unknown_names():
    with pytest.raises(UnknownModelError, match="equiav-base"):
        EquiAVModel.from_pretrained("no-such-model")
    with pytest.raises(UnknownModelError, match="without packaged weights"):
        EquiAVModel.from_pretrained("equiav-base")


def test_gradients_reach_every_trained_parameter():
    model = EquiAVModel("equiav-tiny")
    cfg = model.config
    from equiav.training.augment import AudioAugmenter, VisualAugmenter

    g = torch.Generator().manual_seed(0)
    t_a = AudioAugmenter.for_config(cfg).sample_vectors(2, g)
    t_v = VisualAugmenter.for_config(cfg).sample_vectors(2, g)
    audio = torch.randn(2, cfg.target_length, cfg.num_mel_bins)
    image = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    out = model(audio, image, audio.flip(1), image.flip(3), t_a, t_v)
    sum(v.square().sum() for v in vars(out).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_bfloat16_model_runs():
    model = EquiAVModel("equiav-tiny").eval()
    cfg = model.config
    audio = torch.randn(2, cfg.target_length, cfg.num_mel_bins)
    with torch.no_grad():
        reference = model.encode_audio(audio)
        model.to(torch.bfloat16)
        low = model.encode_audio(audio)
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.float(), reference, dim=-1).min() > 0.99


def test_plain_attention_is_chosen_only_where_it_pays():
    x = torch.zeros(1, 512, 768, dtype=torch.bfloat16)
    with torch.no_grad():
        assert plain_attention_pays(x, 12) and plain_attention_pays(x.half(), 12)
        assert not plain_attention_pays(x.float(), 12)  # float32: the fused kernel is faster
        assert not plain_attention_pays(x.expand(2, -1, -1), 12)  # 12 MiB of attention weights
        assert plain_attention_pays(torch.zeros(8, 197, 768, dtype=torch.bfloat16), 12)
    assert not plain_attention_pays(x, 12)  # autograd on: training keeps the fused kernel


def test_blocks_give_the_same_tokens_either_way_and_keep_their_setting():
    torch.manual_seed(0)
    model = EquiAVModel("equiav-tiny").eval()
    blocks = model.blocks_a
    low = copy.deepcopy(blocks).to(torch.bfloat16)
    x = torch.randn(2, 128, model.config.embed_dim)
    with torch.no_grad():
        assert plain_attention_pays(x.bfloat16(), blocks[0].attn.num_heads)
        plain = run_blocks(low, x.bfloat16()).float()
        assert all(block.attn.fused_attn for block in low)  # put back after the call
        reference = run_blocks(blocks, x)  # float32 takes the fused kernel
    cosine = torch.nn.functional.cosine_similarity(plain, reference, dim=-1)
    assert cosine.min() > 0.999


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = EquiAVModel("equiav-tiny").train()
    cfg = model.config
    audio = torch.randn(2, cfg.target_length, cfg.num_mel_bins)
    image = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(audio, image)
        (out.inter_audio.square().sum() + out.inter_image.square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)
