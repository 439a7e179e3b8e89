"""Entry points: conversion, MAE initialization, torch.hub, the console script."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from equiav import CheckpointError, EquiAVModel
from equiav.convert import load_mae_weights


def test_convert_command_writes_loadable_directory(official_dir, parity, tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "equiav.convert", str(official_dir / "pretrain_checkpoint.pth"), str(out),
         "--preset", "equiav-test"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "model.safetensors" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["embed_dim"] == 64 and config["num_heads"] == 4 and config["depth"] == 2
    model = EquiAVModel.from_pretrained(out)
    with torch.no_grad():
        z = model.encode_audio(parity["input.a_fbank"], parity["input.t_a_list"])
    torch.testing.assert_close(z, parity["output.z_a_feat"], rtol=1e-5, atol=1e-5)


def test_mae_weights_initialize_both_towers(tmp_path):
    model = EquiAVModel("equiav-test")
    reference = EquiAVModel("equiav-test").state_dict()
    mae = {"cls_token": torch.zeros(1, 1, 64), "pos_embed": torch.zeros(1, 197, 64)}
    for key, value in reference.items():
        if key.startswith(("patch_embed_a.", "blocks_a.", "norm_a.")):
            head, _, rest = key.partition(".")
            mae[f"{head[:-2]}.{rest}"] = torch.randn_like(value)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": mae}, path)
    loaded = load_mae_weights(model, path)
    assert "blocks_v.1.attn.qkv.weight" in loaded and "norm_a.weight" in loaded
    for tower in ("a", "v"):
        torch.testing.assert_close(
            model.get_parameter(f"blocks_{tower}.0.mlp.fc1.weight"), mae["blocks.0.mlp.fc1.weight"]
        )
        torch.testing.assert_close(
            model.get_parameter(f"patch_embed_{tower}.proj.weight"), mae["patch_embed.proj.weight"]
        )
    mae["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError, match="blocks_a.0.attn.qkv.weight"):
        load_mae_weights(model, mae)


def test_torch_hub_local_entry_points(official_dir):
    model = torch.hub.load(
        str(REPO_ROOT), "equiav", name_or_path="equiav-tiny", pretrained=False, source="local"
    )
    assert isinstance(model, EquiAVModel) and model.config.name == "equiav-tiny"
    loaded = torch.hub.load(
        str(REPO_ROOT), "equiav", name_or_path=str(official_dir / "pretrain_checkpoint.pth"), config="equiav-test",
        source="local",
    )  # fmt: skip
    assert loaded.config.embed_dim == 64 and not loaded.training


def test_pickle_checkpoint_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": Exploit()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        EquiAVModel.from_pretrained(path)
    assert not (tmp_path / "pwned").exists()


def test_safetensors_with_wrong_tensors_is_rejected(tmp_path):
    model = EquiAVModel("equiav-tiny")
    model.save_pretrained(tmp_path / "m")
    weights = load_file(tmp_path / "m" / "model.safetensors")
    weights.pop("norm_v.bias")
    weights["extra.weight"] = torch.zeros(2)
    weights["norm_a.weight"] = torch.zeros(3)
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        EquiAVModel.from_pretrained(tmp_path / "m")
    assert all(k in str(info.value) for k in ("norm_v.bias", "extra.weight", "norm_a.weight"))


def test_cli_info_and_embed(tmp_path):
    model = EquiAVModel("equiav-tiny")
    model.save_pretrained(tmp_path / "tiny")
    info = subprocess.run([sys.executable, "-m", "equiav", "info", str(tmp_path / "tiny")], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "parameters" in info.stdout and "equiav-tiny" in info.stdout

    import soundfile
    from PIL import Image

    rng = np.random.default_rng(0)
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, (0.3 * np.sin(np.arange(16000) / 8.0)).astype(np.float32), 16000)
    png = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(png)
    out = tmp_path / "emb.safetensors"
    subprocess.run([sys.executable, "-m", "equiav", "embed", str(wav), str(png), "-o", str(out), "--model",
                    str(tmp_path / "tiny")], check=True, capture_output=True)  # fmt: skip
    saved = load_file(out)
    with torch.no_grad():
        expected_audio = model.eval().embed_audio(str(wav))
        expected_image = model.embed_image(str(png))
    torch.testing.assert_close(saved["audio"], expected_audio, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved["image"], expected_image, rtol=1e-5, atol=1e-6)
    packed = tmp_path / "packed.safetensors"
    subprocess.run([sys.executable, "-m", "equiav", "embed", str(wav), str(png), "-o", str(packed), "--model",
                    str(tmp_path / "tiny"), "--pack"], check=True, capture_output=True)  # fmt: skip
    for key, value in load_file(packed).items():
        torch.testing.assert_close(value, saved[key], rtol=1e-5, atol=1e-6)


def test_cli_reports_errors_cleanly(tmp_path):
    missing = tmp_path / "missing.wav"
    result = subprocess.run([sys.executable, "-m", "equiav", "embed", str(missing), "-o", str(tmp_path / "x.npy"),
                             "--model", "equiav-nope"], capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0
    assert "UnknownModelError" in result.stderr and "Traceback" not in result.stderr
