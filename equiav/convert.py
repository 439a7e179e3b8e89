"""Converting the authors' checkpoints to the saved format (``config.json`` + ``model.safetensors``).

Command line: ``equiav convert CHECKPOINT OUTPUT_DIR`` or ``python -m equiav.convert CHECKPOINT OUTPUT_DIR``. The
state-dict functions this module used to hold live in ``equiav.state_dicts`` and are re-exported here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import EquiAVConfig
from .hub import load_official_checkpoint
from .model import EquiAVModel
from .state_dicts import (
    check_state_dict,
    clean_official_state_dict,
    infer_config,
    is_finetune_state_dict,
    load_mae_weights,
    mae_to_equiav,
    read_checkpoint,
    read_checkpoint_and_config,
    strip_prefixes,
)


def convert_checkpoint(
    source: str | Path, output_dir: str | Path, config: EquiAVConfig | None = None, **overrides: Any
) -> Path:
    """Turn an authors' pretraining checkpoint into a directory with ``config.json`` + ``model.safetensors``."""
    model = load_official_checkpoint(EquiAVModel, source, config=config, **overrides)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="equiav convert",
        description="Convert an authors' EquiAV checkpoint (.pth) into a hub-ready directory (config.json + model.safetensors).",
    )
    add_arguments(parser)
    run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the authors' checkpoint file (__M__.-prefixed state dict)")
    parser.add_argument("output_dir", help="directory to write config.json and model.safetensors to")
    parser.add_argument(
        "--preset", default=None, help="preset whose settings fill what the shapes cannot tell"
    )
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads of the towers (default dim/64)"
    )
    parser.add_argument(
        "--num-mel-bins", type=int, default=None, help="mel bins of the audio input (default 128)"
    )


def run(args: argparse.Namespace) -> None:
    base = EquiAVConfig.from_preset(args.preset) if args.preset else None
    overrides = {}
    if args.num_heads:
        overrides["num_heads"] = args.num_heads
    if args.num_mel_bins:
        overrides["num_mel_bins"] = args.num_mel_bins
    out = convert_checkpoint(args.checkpoint, args.output_dir, config=base, **overrides)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")


__all__ = [
    "add_arguments",
    "check_state_dict",
    "clean_official_state_dict",
    "convert_checkpoint",
    "infer_config",
    "is_finetune_state_dict",
    "load_mae_weights",
    "mae_to_equiav",
    "main",
    "read_checkpoint",
    "read_checkpoint_and_config",
    "run",
    "strip_prefixes",
]


if __name__ == "__main__":
    main()
