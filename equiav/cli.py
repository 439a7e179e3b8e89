"""The ``equiav`` command line: ``embed``, ``similarity``, ``convert``, ``info``, ``demo``, ``localize``, and the
commands other packages register (``eval`` from ``equiav.training``).

A package adds a subcommand with an entry point in the ``equiav.commands`` group whose object is a ``Command``, e.g.
in its ``pyproject.toml``::

    [project.entry-points."equiav.commands"]
    eval = "equiav.training.evaluate:COMMAND"

``equiav eval ARGS...`` then calls that command's ``main(ARGS)``, which parses the rest of the command line itself.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from .console import add_runtime_arguments, run_main, set_threads, show_progress

COMMAND_GROUP = "equiav.commands"

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v"}


def modality_of(path: Path) -> str:
    suffix = path.suffix.lower()
    for name, suffixes in (("audio", AUDIO_SUFFIXES), ("image", IMAGE_SUFFIXES), ("video", VIDEO_SUFFIXES)):
        if suffix in suffixes:
            return name
    raise SystemExit(f"equiav: cannot tell the modality of {path} from its extension; pass --modality")


def _load_model(args: argparse.Namespace):
    import torch

    from .model import EquiAVModel

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = EquiAVModel.from_pretrained(args.model, device=args.device, dtype=dtype, revision=args.revision)
    args.threads = set_threads(args.threads, model.config.embed_dim)
    return model.pack_for_cpu() if args.pack else model


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="equiav-tiny-digits", help="registered name, directory, checkpoint or hub id"
    )
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to pin")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--pack",
        action="store_true",
        help="on a CPU, prepack the linear weights for oneDNN: faster, one more copy of those weights in memory",
    )
    add_runtime_arguments(parser)


def _embed_files(model, paths: list[Path], modality: str | None, batch_size: int, windows: str, threads: int):
    """Embeddings of files grouped by modality, in input order within each group; a progress bar by the rule of
    ``equiav.console.show_progress`` (more than one batch, on a terminal)."""
    import torch
    from tqdm.auto import tqdm

    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(modality or modality_of(path), []).append(path)
    results: dict[str, tuple[list[Path], torch.Tensor]] = {}
    for kind, files in groups.items():
        rows = []
        bar = tqdm(
            range(0, len(files), batch_size),
            desc=f"embedding {kind}",
            unit="batch",
            disable=not show_progress(None, -(-len(files) // batch_size)),
        )
        for start in bar:
            chunk = files[start : start + batch_size]
            if kind == "audio":
                rows.append(model.embed_audio([str(p) for p in chunk], windows=windows, num_threads=threads))
            elif kind == "image":
                rows.append(model.embed_image([str(p) for p in chunk], num_threads=threads))
            else:
                video = model.embed_video([str(p) for p in chunk], windows=windows, num_threads=threads)
                results.setdefault("video_audio", ([], []))
                results["video_audio"][0].extend(chunk)
                results["video_audio"][1].append(video.audio)
                rows.append(video.image)
        key = "video_image" if kind == "video" else kind
        results[key] = (files, torch.cat(rows))
    if "video_audio" in results:
        files, parts = results["video_audio"]
        results["video_audio"] = (files, torch.cat(parts))
    return results


def cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np
    from safetensors.torch import save_file

    model = _load_model(args)
    paths = [Path(p) for p in args.inputs]
    results = _embed_files(model, paths, args.modality, args.batch_size, args.windows, args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".npy":
        if len(results) != 1:
            raise SystemExit(
                "equiav: .npy output holds one modality; use a .safetensors output for mixed inputs"
            )
        ((files, embeddings),) = results.values()
        np.save(output, embeddings.float().numpy())
        output.with_suffix(".json").write_text(json.dumps([str(f) for f in files], indent=1))
        print(
            f"wrote {tuple(embeddings.shape)} embeddings to {output} (file order in {output.with_suffix('.json')})"
        )
    elif output.suffix == ".safetensors":
        tensors = {key: emb.float().contiguous() for key, (_, emb) in results.items()}
        metadata = {
            f"{key}_files": json.dumps([str(f) for f in files]) for key, (files, _) in results.items()
        }
        save_file(tensors, str(output), metadata=metadata)
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
        print(f"wrote {shapes} to {output}")
    else:
        raise SystemExit(f"equiav: output must end in .npy or .safetensors, got {output}")


def cmd_similarity(args: argparse.Namespace) -> None:
    model = _load_model(args)
    audio = model.embed_audio(args.audio, windows=args.windows, num_threads=args.threads)
    image = model.embed_image(args.image, num_threads=args.threads)
    similarity = (audio @ image.T).float()
    width = max(len(Path(p).name) for p in args.image) + 2
    print(" " * 28 + "".join(Path(p).name.rjust(width) for p in args.image))
    for path, row in zip(args.audio, similarity):
        print(Path(path).name[:26].ljust(28) + "".join(f"{v:.3f}".rjust(width) for v in row.tolist()))
    if args.plot:
        from .retrieval import plot_similarity

        plot_similarity(
            similarity,
            args.plot,
            title="audio -> image similarity",
            query_name="audio",
            gallery_name="images",
            query_labels=[Path(p).name for p in args.audio],
            gallery_labels=[Path(p).name for p in args.image],
        )
        print(f"wrote {args.plot}")


def cmd_info(args: argparse.Namespace) -> None:
    import torch

    from . import __version__
    from .config import list_models
    from .hub import list_pretrained

    print(f"equiav {__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    print(f"presets: {', '.join(list_models())}")
    print(f"packaged weights: {', '.join(list_pretrained()) or 'none'}")
    if args.model:
        from .config import EquiAVConfig
        from .model import EquiAVModel

        if args.model in list_models() and args.model not in list_pretrained():
            model = EquiAVModel(EquiAVConfig.from_preset(args.model))
        else:
            model = EquiAVModel.from_pretrained(args.model, revision=args.revision)
        total = sum(p.numel() for p in model.parameters())
        print(f"model {args.model}: {total:,} parameters")
        print(model.config.to_json())


@dataclass(frozen=True)
class Command:
    """A subcommand registered in the ``equiav.commands`` entry-point group: its one-line ``help`` and its
    ``main(argv)``, which parses and runs the arguments after the command name."""

    help: str
    main: Callable[[list[str] | None], None]


# Library modules that parse their own arguments: (module with a ``main(argv)``, help).
DELEGATES = {
    "demo": ("equiav.demo", "zero-shot audio<->image retrieval demo with the packaged model"),
    "localize": ("equiav.localize", "sound-source localization heat map over an image"),
}


def registered_commands() -> dict[str, EntryPoint]:
    """Entry points of the ``equiav.commands`` group by command name (built-in names cannot be taken)."""
    return {point.name: point for point in entry_points(group=COMMAND_GROUP) if point.name not in DELEGATES}


def load_command(point: EntryPoint) -> Command:
    """The ``Command`` an entry point names."""
    command = point.load()
    if not isinstance(command, Command):
        raise SystemExit(
            f"equiav: entry point {point.name} = {point.value} of group {COMMAND_GROUP} is a "
            f"{type(command).__name__}, not an equiav.cli.Command"
        )
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equiav", description="EquiAV audio-visual embeddings from the command line."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed audio, image or video files into a .npy or .safetensors file")
    embed.add_argument("inputs", nargs="+", help="files; the modality is taken from the extension")
    embed.add_argument("-o", "--output", required=True, help="output file (.npy or .safetensors)")
    embed.add_argument(
        "--modality", choices=["audio", "image", "video"], default=None, help="override the extension"
    )
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument(
        "--windows", choices=["crop", "sliding"], default="crop", help="long audio: crop or average windows"
    )
    _add_model_arguments(embed)
    embed.set_defaults(func=cmd_embed)

    sim = sub.add_parser("similarity", help="cosine similarities between audio files and images")
    sim.add_argument("--audio", nargs="+", required=True)
    sim.add_argument("--image", nargs="+", required=True)
    sim.add_argument("--windows", choices=["crop", "sliding"], default="crop")
    sim.add_argument("--plot", default=None, help="also write the matrix as a PNG")
    _add_model_arguments(sim)
    sim.set_defaults(func=cmd_similarity)

    from . import convert

    conv = sub.add_parser("convert", help="convert an authors' checkpoint to config.json + model.safetensors")
    convert.add_arguments(conv)
    add_runtime_arguments(conv)
    conv.set_defaults(func=convert.run)

    info = sub.add_parser(
        "info", help="versions, presets, packaged weights; with a model, its size and config"
    )
    info.add_argument("model", nargs="?", default=None)
    info.add_argument("--revision", default=None)
    add_runtime_arguments(info)
    info.set_defaults(func=cmd_info)

    for name, point in sorted(registered_commands().items()):
        sub.add_parser(name, help=load_command(point).help, add_help=False)
    for name, (_, help_text) in DELEGATES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def run(argv: list[str]) -> None:
    """Parse ``argv`` and run the command; errors propagate (``main`` turns them into one line)."""
    if argv and argv[0] in DELEGATES:
        importlib.import_module(DELEGATES[argv[0]][0]).main(argv[1:])
        return
    registered = registered_commands()
    if argv and argv[0] in registered:
        load_command(registered[argv[0]]).main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads, 0)
    args.func(args)


def main(argv: list[str] | None = None) -> None:
    """The ``equiav`` program: ``run`` with one-line errors (``--debug`` or EQUIAV_DEBUG=1: the traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    known = set(DELEGATES) | set(registered_commands()) | {"embed", "similarity", "convert", "info"}
    prog = f"equiav {argv[0]}" if argv and argv[0] in known else "equiav"
    run_main(run, prog, argv)


if __name__ == "__main__":
    main()
