"""Turn the authors' EquiAV checkpoint into a shareable directory (config.json + model.safetensors).

    python examples/convert_and_share.py EquiAV_pretrained.pth equiav-base-audioset/
    python examples/convert_and_share.py EquiAV_pretrained.pth equiav-base-audioset/ --push me/equiav-base-audioset

The directory loads with ``EquiAVModel.from_pretrained("equiav-base-audioset/")`` without executing any code
(safetensors). The script checks that the converted model embeds exactly as the original file, then shows the
``push_to_hub`` call; it only uploads with --push (after ``hf auth login``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from equiav import EquiAVConfig, EquiAVModel
from equiav.convert import convert_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the authors' pretraining checkpoint (.pth)")
    parser.add_argument("output_dir", type=Path, help="directory to write")
    parser.add_argument(
        "--preset",
        default=None,
        help="preset for what tensor shapes cannot tell (default: the paper's model; equiav-test for the "
        "authors' small test checkpoints)",
    )
    parser.add_argument("--push", metavar="REPO_ID", help="upload to this Hugging Face Hub repository")
    parser.add_argument("--private", action="store_true", help="make the uploaded repository private")
    return parser.parse_args()


@torch.no_grad()
def main() -> None:
    args = parse_args()
    config = EquiAVConfig.from_preset(args.preset) if args.preset else None

    # Sizes (width, depth, input lengths) are read off the tensor shapes; heads and mel bins come from the preset
    # or from keyword overrides, e.g. convert_checkpoint(path, out, num_heads=12, num_mel_bins=128).
    out = convert_checkpoint(args.checkpoint, args.output_dir, config=config)
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'}")

    # Same weights, same embeddings: compare the original file and the converted directory on one random input.
    original = EquiAVModel.from_pretrained(str(args.checkpoint), config=config).eval()
    converted = EquiAVModel.from_pretrained(out).eval()
    c = converted.config
    fbank = torch.randn(1, c.target_length, c.num_mel_bins, generator=torch.Generator().manual_seed(0))
    pixels = torch.randn(1, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(1))
    difference = max(
        float((original.encode_audio(fbank) - converted.encode_audio(fbank)).abs().max()),
        float((original.encode_image(pixels) - converted.encode_image(pixels)).abs().max()),
    )
    print(f"largest embedding difference between the .pth and the directory: {difference:.2e}")

    if args.push:
        url = converted.push_to_hub(args.push, private=args.private or None)  # None: the account's default
        print(f"pushed to {url}")
    else:
        print("to share it (needs `hf auth login`), run again with --push REPO_ID, which calls:")
        print(f'    EquiAVModel.from_pretrained("{out}").push_to_hub("REPO_ID")')


if __name__ == "__main__":
    main()
