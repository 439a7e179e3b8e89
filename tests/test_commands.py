"""What every command shares: one-line errors (tracebacks on request), ``--threads``, shipped configs, torch.hub."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from equiav import CheckpointError, EquiAVModel, InvalidInputError, cli, demo, localize
from equiav.console import error_line, show_progress
from equiav.errors import ConfigError
from equiav.threads import default_threads, thread_limit
from equiav.training import ablate, evaluate, finetune, prepare, pretrain, probe
from equiav.training.options import list_configs

MISSING_FILE_COMMANDS = {
    "demo": ["-m", "equiav", "demo", "--audio", "missing.wav", "--image", "missing.png"],
    "localize": ["-m", "equiav", "localize", "missing.wav", "missing.png"],
    "embed": ["-m", "equiav", "embed", "missing.wav", "-o", "out.npy"],
    "pretrain": ["-m", "equiav.training.pretrain", "--config", "missing.json"],
    "finetune": ["-m", "equiav.training.finetune", "--config", "missing.json"],
    "evaluate": ["-m", "equiav.training.evaluate", "retrieval", "--model", "missing-dir/", "--avdigits", "x"],
    "probe": ["-m", "equiav.training.probe", "--model", "equiav-tiny-digits", "--avdigits", "missing"],
    "ablate": ["-m", "equiav.training.ablate", "--grid", "table4", "--config", "missing.json"],
}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **env},
    )


@pytest.mark.parametrize("name", sorted(MISSING_FILE_COMMANDS))
def test_a_missing_file_is_one_line_naming_it(name, tmp_path):
    result = _run(MISSING_FILE_COMMANDS[name], tmp_path, EQUIAV_DEBUG="")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "missing" in lines[0]


def test_debug_flag_and_environment_show_the_traceback(tmp_path):
    flag = _run([*MISSING_FILE_COMMANDS["demo"], "--debug"], tmp_path, EQUIAV_DEBUG="")
    env = _run(MISSING_FILE_COMMANDS["pretrain"], tmp_path, EQUIAV_DEBUG="1")
    assert flag.returncode != 0 and "Traceback" in flag.stderr and "AudioDecodeError" in flag.stderr
    assert env.returncode != 0 and "Traceback" in env.stderr and "ConfigError" in env.stderr


def test_main_functions_still_raise_for_callers():
    with pytest.raises(ConfigError, match="missing.json"):
        pretrain.main(["--config", "missing.json"])
    line = error_line("equiav demo", FileNotFoundError("x.wav:\n not found"))
    assert line.startswith("equiav demo: FileNotFoundError: x.wav: not found") and "\n" not in line


def test_every_command_takes_threads_and_debug(capsys):
    texts = {}
    for name, main in {"demo": demo.main, "localize": localize.main, "probe": probe.main}.items():
        with pytest.raises(SystemExit):
            main(["--help"])
        texts[name] = capsys.readouterr().out
    top = cli.build_parser()
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("embed", "similarity", "info", "convert"):
        texts[name] = subparsers[name].format_help()
    eval_parsers = next(
        a for a in evaluate.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    texts.update({f"eval {name}": parser.format_help() for name, parser in eval_parsers.items()})
    prepare_parsers = next(
        a for a in prepare._parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    texts.update({f"prepare {name}": parser.format_help() for name, parser in prepare_parsers.items()})
    texts["pretrain"] = pretrain.build_parser().format_help()
    texts["finetune"] = finetune.build_parser().format_help()
    texts["ablate"] = ablate.build_parser().format_help()
    for name, text in texts.items():
        assert "--threads" in text and "--debug" in text, name
    assert pretrain.config_from_args(["--config", "avdigits-tiny", "--threads", "3"])[0].threads == 3
    with pytest.raises(ConfigError, match="--threads"):
        pretrain.config_from_args(["--config", "avdigits-tiny", "--threads", "0"])


def _record_threads(model: EquiAVModel) -> list[int]:
    seen: list[int] = []
    encode = model.encode_audio

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return encode(*args, **kwargs)

    model.encode_audio = recording
    return seen


def test_embed_threads_default_to_one_for_small_models_and_restore_the_setting():
    model = EquiAVModel.from_pretrained("equiav-tiny-digits")
    seen = _record_threads(model)
    clip = torch.randn(8000) * 0.1
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.embed_audio(clip, sample_rate=16000)
        model.embed_audio(clip, sample_rate=16000, num_threads=2)
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert default_threads(128) == 1 and default_threads(768) == torch.get_num_threads()
    with pytest.raises(InvalidInputError, match="num_threads"):
        model.embed_image(torch.rand(3, 32, 32), num_threads=0)
    with thread_limit(1, 768) as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_progress_bar_rule_is_shared():
    assert show_progress(True, 1) and not show_progress(False, 5)
    assert not show_progress(None, 1)  # one batch: never a bar
    assert show_progress(None, 2) == sys.stderr.isatty()


def test_shipped_configs_by_name_and_relative_paths_from_the_file(tmp_path, monkeypatch):
    assert list_configs() == ["audioset-base", "avdigits-tiny", "avdigits-tiny-all"]
    shipped = resources.files("equiav.training") / "configs" / "avdigits_tiny.json"
    assert shipped.is_file()
    assert json.loads((REPO_ROOT / "configs" / "avdigits_tiny.json").read_text()) == json.loads(
        shipped.read_text()
    )
    monkeypatch.chdir(tmp_path)
    by_name, _ = pretrain.config_from_args(["--config", "avdigits-tiny"])
    by_path, _ = pretrain.config_from_args(["--config", str(REPO_ROOT / "configs" / "avdigits_tiny.json")])
    data = (REPO_ROOT.parent / "shared" / "data").resolve()
    assert Path(by_name.data.path).resolve() == Path(by_path.data.path).resolve() == data
    assert by_name.max_steps == 2000 and by_name.optim.lr == 3e-4 and by_name.seed == 2
    given, _ = pretrain.config_from_args(["--config", "avdigits-tiny", "--data.path", "mine"])
    assert given.data.path == "mine"  # the command line is taken from the working directory
    with pytest.raises(ConfigError, match="avdigits-tiny"):
        pretrain.config_from_args(["--config", "no-such-config"])
    assert "own folder" in " ".join(pretrain.build_parser().format_help().split())


def test_torch_hub_base_without_checkpoint_is_refused():
    with pytest.raises(CheckpointError, match="pretrained=False"):
        torch.hub.load(str(REPO_ROOT), "equiav_base", source="local")
