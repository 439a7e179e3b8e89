"""Evaluation commands: zero-shot audio-visual retrieval, classifier scoring and the linear probe.

``python -m equiav.training.evaluate retrieval --model NAME_OR_PATH (--manifest FILE | --avdigits ROOT) ...``
(also ``equiav eval retrieval ...``):

* Embeddings are the model's inter-modal embeddings, L2-normalized, from its fixed centroid views, so two runs give
  the same numbers (the authors drew 16 fresh random augmentation vectors per clip on every run; reference A8).
* Manifest clips use the middle frame, ``frame_{frame_count // 2}`` (frame 5 of the usual 10), as the authors' test
  split does; their retrieval script asked for ``frame_10``, which the frame extraction never writes (bug B6).
* Ranks are exact and count ties pessimistically (``equiav.retrieval``; bug B20). Instance level for manifests (a
  clip's own audio or frame is the only hit) unless ``--class-level``; class level for AV-digits (any recording or
  image of the same digit is a hit).
* Under ``torchrun`` every rank embeds its own contiguous share of the items; the embeddings are gathered in item
  order before scoring, so the result equals a single process's.

``classify`` scores a fine-tuned classifier (mAP / accuracy) and ``probe`` runs the linear probe
(``equiav.training.probe``). Each writes a JSON file with ``--output`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..classifier import EquiAVClassifier
from ..cli import Command
from ..config import EquiAVConfig
from ..console import add_runtime_arguments, debugging, model_width, run_main, set_threads
from ..errors import DatasetError, EquiAVError
from ..retrieval import DEFAULT_KS, TIE_RULES, audio_visual_retrieval, format_table, similarity_matrix
from .classification import LabelledDataset, evaluate_classifier
from .datasets import DataConfig, avdigits_eval_set, build_dataset, read_manifest
from .distributed import DistributedContext, gather_in_order, setup_distributed, shard, teardown_distributed
from .loading import load_backbone
from .probe import add_probe_arguments, run_probe


class ManifestClips(Dataset):
    """Audio filterbank and one frame of every clip of an authors' manifest, without augmentation."""

    def __init__(self, manifest: str | Path, config: EquiAVConfig, frame: int) -> None:
        self.entries = read_manifest(manifest)
        self.config = config
        self.frame = frame

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from ..audio import load_fbank
        from ..image import load_image, preprocess_image

        entry = self.entries[index]
        try:
            fbank = load_fbank(entry.wav, self.config)
            image = preprocess_image(load_image(entry.frame(self.frame)), self.config)
        except (EquiAVError, OSError) as error:
            raise DatasetError(f"manifest clip {index} ({entry.video_id}): {error}") from error
        return {"index": torch.tensor(index), "audio": fbank, "image": image}


class _Rows(Dataset):
    """Rows of preloaded tensors with their global indices."""

    def __init__(self, inputs: torch.Tensor, indices: range) -> None:
        self.inputs, self.indices = inputs, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        index = self.indices[position]
        return {"index": torch.tensor(index), "input": self.inputs[index]}


def _progress(loader: DataLoader, ctx: DistributedContext, what: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"embedding {what}", unit="batch", disable=not (enabled and ctx.is_main))


@torch.no_grad()
def embed_rows(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    modality: str,
    ctx: DistributedContext,
    batch_size: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalized inter embeddings of preloaded audio filterbanks or images, each rank doing its share."""
    encode = model.encode_audio if modality == "audio" else model.encode_image
    loader = DataLoader(
        _Rows(inputs, shard(inputs.shape[0], ctx.rank, ctx.world_size)), batch_size=batch_size
    )
    indices, rows = [], []
    for batch in _progress(loader, ctx, modality, progress):
        rows.append(F.normalize(encode(batch["input"].to(ctx.device)).float(), dim=-1))
        indices.append(batch["index"].to(ctx.device))
    return _gathered(indices, rows, model, ctx)


def _gathered(
    indices: list[torch.Tensor], rows: list[torch.Tensor], model, ctx: DistributedContext
) -> torch.Tensor:
    dim = model.config.inter_proj_dim
    local_idx = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int64, device=ctx.device)
    local = torch.cat(rows) if rows else torch.zeros(0, dim, device=ctx.device)
    return gather_in_order(local_idx, local)[1].cpu()


@torch.no_grad()
def embed_manifest(
    model: torch.nn.Module,
    clips: ManifestClips,
    ctx: DistributedContext,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(audio, image) L2-normalized embeddings (N, D) of every manifest clip, in manifest order."""
    subset = torch.utils.data.Subset(clips, list(shard(len(clips), ctx.rank, ctx.world_size)))
    loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
    indices, audio, image = [], [], []
    for batch in _progress(loader, ctx, "clips", progress):
        audio.append(F.normalize(model.encode_audio(batch["audio"].to(ctx.device)).float(), dim=-1))
        image.append(F.normalize(model.encode_image(batch["image"].to(ctx.device)).float(), dim=-1))
        indices.append(batch["index"].to(ctx.device))
    return _gathered(indices, audio, model, ctx), _gathered(indices, image, model, ctx)


def manifest_labels(clips: ManifestClips) -> list[str]:
    """One label per clip for class-level retrieval; a clip without exactly one label is an error."""
    labels = []
    for index, entry in enumerate(clips.entries):
        parts = [p.strip() for p in (entry.labels or "").split(",") if p.strip()]
        if len(parts) != 1:
            raise DatasetError(
                f"class-level retrieval needs exactly one label per clip; manifest entry {index} ({entry.video_id}) "
                f"has {parts or 'none'}"
            )
        labels.append(parts[0])
    return labels


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    """Embed, score, print and save; returns the result dictionary (on every rank)."""
    ctx = setup_distributed(args.device)
    try:
        model = load_backbone(
            args.model,
            random_init=args.random_init,
            seed=args.seed,
            preset=args.preset,
            num_heads=args.num_heads,
        ).to(ctx.device)
        config = model.config
        info: dict[str, Any] = {"model": args.model, "random_init": args.random_init, "ties": args.ties}
        if args.avdigits:
            fbanks, images, audio_labels, image_labels = avdigits_eval_set(
                args.avdigits, config, args.split, val_speakers=tuple(args.val_speakers),
                val_fraction_images=args.val_fraction_images,
            )  # fmt: skip
            audio = embed_rows(model, fbanks, "audio", ctx, args.batch_size, args.progress)
            video = embed_rows(model, images, "image", ctx, args.batch_size, args.progress)
            labels = (audio_labels, image_labels)
            item_names = (
                [f"digit {d}" for d in audio_labels.tolist()],
                [f"digit {d}" for d in image_labels.tolist()],
            )
            info.update(
                data=str(args.avdigits), split=args.split, level="class", val_speakers=args.val_speakers
            )
        else:
            frame = args.frame if args.frame is not None else args.frame_count // 2
            clips = ManifestClips(args.manifest, config, frame)
            audio, video = embed_manifest(model, clips, ctx, args.batch_size, args.num_workers, args.progress)
            labels = (manifest_labels(clips),) * 2 if args.class_level else (None, None)
            item_names = ([entry.video_id for entry in clips.entries],) * 2
            info.update(
                data=str(args.manifest), frame=frame, level="class" if args.class_level else "instance"
            )
        result = {**info, "num_audio": audio.shape[0], "num_video": video.shape[0]}
        result.update(audio_visual_retrieval(audio, video, labels[0], labels[1], ks=args.ks, ties=args.ties))
        if ctx.is_main:
            _report(result, args, audio, video, item_names)
        return result
    finally:
        teardown_distributed()


def visual_name(result: dict[str, Any]) -> str:
    """What the visual items of a retrieval result are: AV-digits scores images, a manifest one frame per video.
    The result's keys say ``video`` for both (kept for compatibility); printed text and plots use this name."""
    return "video frame" if "frame" in result else "image"


def _report(
    result: dict[str, Any],
    args: argparse.Namespace,
    audio: torch.Tensor,
    video: torch.Tensor,
    item_names: tuple[list[str], list[str]],
) -> None:
    """Print the table, write the JSON and the plot; ``item_names`` (audio, visual) label the plot's ticks."""
    visual = visual_name(result)
    directions = {k: result[k] for k in ("video_to_audio", "audio_to_video")}
    names = {"video_to_audio": f"{visual} -> audio", "audio_to_video": f"audio -> {visual}"}
    print(
        f"{result['level']}-level retrieval, {result['num_audio']} audio / {result['num_video']} {visual} items"
    )
    print(format_table(directions, names))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")
    if args.plot:
        _plot(result, args.plot, audio, video, item_names)


def _plot(
    result: dict[str, Any],
    path: str,
    audio: torch.Tensor,
    video: torch.Tensor,
    item_names: tuple[list[str], list[str]],
) -> None:
    """The visual-to-audio similarity matrix as a PNG, items named by their digit (AV-digits) or clip id."""
    from ..retrieval import plot_similarity

    visual = visual_name(result)
    plot_similarity(
        similarity_matrix(video, audio),
        path,
        title=f"{visual} -> audio similarity ({result['level']} level)",
        query_name=f"{visual}s",
        gallery_name="audio",
        query_labels=item_names[1],
        gallery_labels=item_names[0],
    )
    print(f"wrote {path}")


def add_model_arguments(
    parser: argparse.ArgumentParser,
    model_help: str = "registered name, directory, hub repo id or authors' .pth",
    progress: bool = True,
) -> None:
    """Options of every evaluation command: the model, its device and the batching."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument(
        "--preset", default=None, help="preset that fills what an authors' checkpoint cannot tell"
    )
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (authors' checkpoints)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    if progress:
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="show a progress bar (--no-progress)",
        )
    add_runtime_arguments(parser)


def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", help="authors' manifest JSON (video_id, wav, video_path, labels)")
    data.add_argument("--avdigits", help="AV-digits root (the shared data folder); class-level retrieval")
    parser.add_argument("--split", default="val", choices=["train", "val"], help="AV-digits split")
    parser.add_argument(
        "--val-speakers",
        nargs="+",
        default=list(DataConfig.val_speakers),
        metavar="NAME",
        help="AV-digits speakers held out for validation (default: %(default)s); name yours to score other recordings",
    )
    parser.add_argument(
        "--val-fraction-images",
        type=float,
        default=DataConfig.val_fraction_images,
        help="share of each digit's images held out for validation (default %(default)s, as in pretraining)",
    )
    parser.add_argument("--frame-count", type=int, default=10, help="frames per clip in the manifest layout")
    parser.add_argument("--frame", type=int, default=None, help="frame index (default: frame_count // 2)")
    parser.add_argument(
        "--class-level", action="store_true", help="manifest: a hit is any clip with the same label"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="recall cut-offs")
    parser.add_argument("--ties", default="pessimistic", choices=TIE_RULES, help="how tied scores are ranked")
    parser.add_argument(
        "--random-init", action="store_true", help="randomly initialized preset (chance reference)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init")
    parser.add_argument("--output", default=None, help="write the results as JSON")
    parser.add_argument(
        "--plot",
        default=None,
        help="write the image (AV-digits) or frame (manifest) to audio similarities as a PNG",
    )


def add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``equiav eval classify``: score a classifier on the validation split of a data set."""
    add_model_arguments(
        parser, model_help="classifier directory, hub repo or authors' fine-tuning .pth", progress=False
    )
    parser.add_argument(
        "--mode", default=None, help="mode of an authors' checkpoint when its shapes are ambiguous"
    )
    parser.add_argument("--data-kind", default="avdigits", choices=["avdigits", "manifest", "videos"])
    parser.add_argument(
        "--data", required=True, help="AV-digits root, or the evaluation manifest / video list"
    )
    parser.add_argument(
        "--label-csv", default=None, help="class_labels_indices.csv (manifest and video data)"
    )
    parser.add_argument(
        "--task", default=None, choices=["multi_label", "single_label"], help="default: the model's"
    )
    parser.add_argument("--output", default=None, help="write the metrics as JSON")


def run_classify(args: argparse.Namespace) -> dict[str, float]:
    ctx = setup_distributed(args.device)
    try:
        overrides = {"num_heads": args.num_heads} if args.num_heads else {}
        model = EquiAVClassifier.from_pretrained(args.model, mode=args.mode, config=args.preset, **overrides)
        model.to(ctx.device)
        multi_label = model.config.multi_label if args.task is None else args.task == "multi_label"
        data = DataConfig(kind=args.data_kind, path=args.data, val_path=args.data, label_csv=args.label_csv)
        base = build_dataset(data, model.config.backbone, "val")
        dataset = LabelledDataset(base, model.config.num_classes, train=False)
        metrics = evaluate_classifier(
            model,
            dataset,
            ctx,
            multi_label=multi_label,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        if ctx.is_main:
            print(" ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if args.output:
                Path(args.output).write_text(json.dumps({"model": args.model, **metrics}, indent=2) + "\n")
        return metrics
    finally:
        teardown_distributed()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiav eval", description="Evaluate EquiAV models.")
    sub = parser.add_subparsers(dest="command", required=True)
    retrieval = sub.add_parser("retrieval", help="zero-shot video<->audio retrieval: R@1/5/10, median rank")
    add_retrieval_arguments(retrieval)
    retrieval.set_defaults(func=run_retrieval)
    classify = sub.add_parser("classify", help="score a fine-tuned classifier (mAP / accuracy)")
    add_classify_arguments(classify)
    classify.set_defaults(func=run_classify)
    probe = sub.add_parser("probe", help="linear probe on frozen features")
    add_probe_arguments(probe)
    probe.set_defaults(func=run_probe)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m equiav.training.evaluate`` and ``equiav eval``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "batch_size", 1) < 1:
        raise SystemExit("equiav eval: --batch-size must be at least 1")
    set_threads(args.threads, model_width(args.model))
    try:
        args.func(args)
    except EquiAVError as error:
        if debugging():
            raise
        raise SystemExit(f"equiav eval: {type(error).__name__}: {error}") from None


COMMAND = Command(help="evaluation (e.g. `equiav eval retrieval ...`)", main=main)


if __name__ == "__main__":
    run_main(main, "python -m equiav.training.evaluate")
