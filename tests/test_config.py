from __future__ import annotations

import json

import pytest

from equiav import ConfigError, EquiAVConfig, UnknownModelError, list_models


def test_base_preset_is_the_paper_model():
    cfg = EquiAVConfig.from_preset("equiav-base")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (768, 12, 12, 16)
    assert (cfg.audio_aug_dim, cfg.visual_aug_dim, cfg.aug_embed_dim) == (24, 18, 256)
    assert (cfg.cross_attn_heads, cfg.cross_attn_head_dim) == (8, 64)
    assert (cfg.proj_hidden_dim, cfg.intra_proj_dim, cfg.inter_proj_dim) == (2048, 512, 512)
    assert (cfg.target_length, cfg.num_mel_bins, cfg.sample_rate) == (1024, 128, 16000)
    assert (cfg.audio_mean, cfg.audio_std, cfg.layer_norm_eps, cfg.num_views) == (-4.346, 4.332, 1e-5, 16)
    assert cfg.num_audio_patches == 512 and cfg.num_image_patches == 196


def test_list_models_has_presets():
    names = list_models()
    assert {"equiav-base", "equiav-test", "equiav-tiny", "equiav-tiny-digits"} <= set(names)
    for name in names:
        assert EquiAVConfig.from_preset(name).name == name


def test_json_round_trip(tmp_path):
    cfg = EquiAVConfig.from_preset("equiav-tiny", view_seed=3)
    path = tmp_path / "config.json"
    cfg.save(path)
    assert EquiAVConfig.load(path) == cfg
    assert EquiAVConfig.from_json(cfg.to_json()) == cfg


def test_bad_configs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="embd_dim"):
        EquiAVConfig.from_dict({"embd_dim": 5})
    with pytest.raises(ConfigError, match="num_heads"):
        EquiAVConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ConfigError, match="depth"):
        EquiAVConfig(depth=0)
    with pytest.raises(ConfigError, match="audio_normalization.*dataset, utterance.*'per-clip'"):
        EquiAVConfig(audio_normalization="per-clip")
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=str(broken)):
        EquiAVConfig.load(broken)
    broken.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        EquiAVConfig.load(broken)
    with pytest.raises(UnknownModelError, match="equiav-base"):
        EquiAVConfig.from_preset("nope")
