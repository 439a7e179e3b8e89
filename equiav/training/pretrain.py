"""EquiAV pretraining: ``python -m equiav.training.pretrain --config run.json [--option value ...]``.

The pretraining task on the shared :class:`~equiav.training.trainer.Trainer`: the model is an
:class:`~equiav.model.EquiAVModel`, each micro-batch goes through the model and
:class:`~equiav.training.losses.EquiAVLoss`, validation measures the loss on the validation split and, for
AV-digits, class-level zero-shot retrieval, and the export is ``final/`` (``save_pretrained``, loadable with
``EquiAVModel.from_pretrained``). Everything else (processes, optimizer, precision, checkpoints and exact resume,
logging) is the trainer's; see :mod:`equiav.training.trainer`.

Runs alone (one process) or under ``torchrun`` (DDP: NCCL on GPUs, gloo on CPU, several nodes through torchrun's
rendezvous). Exact resume: items are a function of (seed, epoch, index) and the sampler order of (seed, epoch), so a
resumed run starts the epoch's index list at the saved position without reading the skipped items, and with
``deterministic`` on CPU it ends with the same weights as an uninterrupted run. (Tar shards are streamed; their
skipped batches are read and dropped.)

Configuration: the fields of :class:`PretrainConfig`, from a JSON file (``--config``) overridden by command-line
options; nested fields are ``--data.path``, ``--optim.lr``, ... and booleans take ``--flag`` / ``--no-flag``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..config import EquiAVConfig
from ..console import add_runtime_arguments, run_main, set_threads
from ..errors import ConfigError
from ..model import EquiAVModel
from ..retrieval import retrieval_metrics
from ..state_dicts import load_mae_weights
from .datasets import DataConfig, avdigits_eval_set, build_dataset
from .distributed import mean_over_ranks
from .losses import EquiAVLoss, Stage
from .options import add_options, config_from_layers, config_help, read_config_file
from .run_config import OptimConfig, RunConfig
from .trainer import (
    KILL_AT_STEP_ENV,
    KILL_RANK_ENV,
    DataStream,
    Trainer,
    TrainingTask,
    fault_kill_step,
    run_training,
)

log = logging.getLogger("equiav.pretrain")

MODEL_INPUTS = (
    "audio",
    "image",
    "audio_aug",
    "image_aug",
    "t_audio",
    "t_image",
    "t_audio_views",
    "t_image_views",
)
LOSS_FIELDS = (
    "total",
    "inter",
    "intra_audio",
    "intra_visual",
    "acc_inter",
    "acc_intra_audio",
    "acc_intra_visual",
)
LOGGED_NAMES = ("loss", "loss_inter", "loss_intra_audio", "loss_intra_visual", "acc_inter", "acc_intra_audio",
                "acc_intra_visual")  # fmt: skip


# --------------------------------------------------------------------------------------------------- configuration


@dataclass
class LossConfig:
    """The EquiAV objective (Eq. 16).

    * ``inter_weight``: weight of the inter-modal loss (authors 1/3; the paper's lambda is 1, reference B10).
    * ``intra_audio_weight``: weight of the audio intra-modal equivariant loss.
    * ``intra_visual_weight``: weight of the visual intra-modal equivariant loss.
    * ``inter_temperature``: temperature of the inter-modal loss.
    * ``intra_temperature``: temperature of the intra-modal losses.
    * ``intra_variant``: ``with_positive`` (Eq. 9-10, the paper's choice) or ``equimod`` (EquiMod's Eq. A).
    * ``faithful``: gather the inter-modal negatives across ranks without gradient, as the authors did (B13).
    """

    inter_weight: float = 1 / 3
    intra_audio_weight: float = 1 / 3
    intra_visual_weight: float = 1 / 3
    inter_temperature: float = 0.07
    intra_temperature: float = 0.07
    intra_variant: Literal["with_positive", "equimod"] = "with_positive"
    faithful: bool = False


@dataclass
class ObjectiveConfig:
    """The paper's ablations (section 4.2) as options; the defaults are its final configuration. The first three are
    saved in the model's config, so a model trained with them loads and embeds the same way with ``from_pretrained``.

    * ``intra_space``: ``equivariant`` (the paper: the predictor maps the original's embedding and the augmentation
      vector onto the augmented view's) or ``invariant`` (no predictor in the intra branch: the original's and the
      augmented view's embeddings are the positive pair); Table 4.
    * ``inter_embedding``: what the inter-modal loss and the inference embeddings use (Table 4): ``centroid`` (the
      paper: the mean of the predictions for ``data.num_views`` augmentation vectors), ``predicted`` (the prediction
      for the augmented view's vector; one fixed view at inference), ``original`` (the original input's embedding) or
      ``augmented`` (the augmented input's embedding in training; the original's at inference).
    * ``predictor``: transformation predictor (Table 6): ``attention`` (the paper's cross-attention), ``linear``
      (EquiMod: a linear layer on the concatenated embedding and augmentation embedding) or ``hypernetwork``
      (SIE-style: the augmentation embedding predicts the weights of a low-rank linear map of the embedding).
    * ``strategy``: ``joint`` (the paper: every loss at every step), ``two_stage`` (the intra-modal losses, then the
      inter-modal loss) or ``alternating`` (intra-modal and inter-modal updates on alternate steps); Table 7.
    * ``switch_fraction``: with ``two_stage``, the fraction of the steps trained on the intra-modal losses.
    """

    intra_space: Literal["equivariant", "invariant"] = "equivariant"
    inter_embedding: Literal["centroid", "predicted", "original", "augmented"] = "centroid"
    predictor: Literal["attention", "linear", "hypernetwork"] = "attention"
    strategy: Literal["joint", "two_stage", "alternating"] = "joint"
    switch_fraction: float = 0.5

    def stage(self, step: int, total_steps: int) -> Stage:
        """Which terms of the loss optimizer step ``step`` (0-based) of ``total_steps`` trains."""
        if self.strategy == "two_stage":
            return "intra" if step < round(self.switch_fraction * total_steps) else "inter"
        if self.strategy == "alternating":
            return "intra" if step % 2 == 0 else "inter"
        return "joint"


MODEL_FIELDS_OF_OBJECTIVE = ("intra_space", "inter_embedding", "predictor")


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """Everything a pretraining run needs (besides the options of every run, ``RunConfig``).

    * ``data``: the training data (see ``DataConfig``); ``data.kind`` and ``data.path`` are required.
    * ``loss``: loss weights, temperatures and variants.
    * ``objective``: the paper's ablation variants (intra-modal space, inter-modal embedding, predictor, strategy).
    * ``mae_init``: MAE ViT weights (a ``.pth`` or ``.safetensors``) that initialize both towers, as the paper does;
      used on a fresh start only.
    * ``val_batches``: validation micro-batches per evaluation for the loss (0: the whole validation split).
    * ``zero_shot_eval``: with AV-digits, also measure class-level zero-shot R@1 (audio to image and back) on the
      held-out speakers and images at each validation.
    * ``find_unused_parameters``: DDP's option; every parameter gets a gradient in EquiAV's forward, so it is off.
    """

    data: DataConfig
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    mae_init: str | None = None
    output_dir: str = "runs/pretrain"
    val_batches: int = 0
    zero_shot_eval: bool = True

    extra_minimums = {"val_batches": 0}

    def validate(self) -> None:
        clash = sorted(set(self.model_overrides) & set(MODEL_FIELDS_OF_OBJECTIVE))
        if clash:
            raise ConfigError(f"option --model-overrides: set {clash} with the --objective.* options instead")
        if not 0.0 < self.objective.switch_fraction < 1.0:
            raise ConfigError(
                f"option --objective.switch-fraction must be in (0, 1), got {self.objective.switch_fraction}"
            )
        super().validate()

    def model_config(self) -> EquiAVConfig:
        """The preset with ``model_overrides`` and the model fields of ``objective`` applied."""
        objective = {name: getattr(self.objective, name) for name in MODEL_FIELDS_OF_OBJECTIVE}
        return super().model_config().replace(**objective)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m equiav.training.pretrain",
        description="Pretrain an EquiAV model. Options override the values of --config; run alone or under torchrun.",
    )
    parser.add_argument("--config", metavar="PATH_OR_NAME", help=config_help())
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit without training",
    )
    add_runtime_arguments(parser, threads=False)
    add_options(parser, PretrainConfig)
    return parser


def config_from_args(argv: list[str] | None = None) -> tuple[PretrainConfig, argparse.Namespace]:
    """Parse the command line: defaults < ``--config`` file < options given on the command line."""
    args = build_parser().parse_args(argv)
    values = read_config_file(args.config) if args.config else {}
    return config_from_layers(PretrainConfig, values, args, skip=("config", "print_config", "debug")), args


# --------------------------------------------------------------------------------------------------- task


class PretrainTask(TrainingTask):
    """EquiAV's objective (Eq. 16) on an :class:`EquiAVModel` built from the run's preset and overrides."""

    logged_names = LOGGED_NAMES
    input_keys = MODEL_INPUTS

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg, cfg.data)
        self.model_config = cfg.model_config()
        self._eval_set: tuple[torch.Tensor, ...] | None = None
        data = cfg.data
        self._scores_retrieval = cfg.zero_shot_eval and data.kind == "avdigits" and bool(data.val_speakers)
        # Invariant intra-modal pairs with an inter-modal embedding that needs no prediction leave the predictor idle.
        self.has_unused_parameters = self.model_config.intra_space == "invariant" and (
            self.model_config.inter_embedding in ("original", "augmented")
        )

    def build_model(self, ctx) -> EquiAVModel:
        return EquiAVModel(self.model_config)

    def train_dataset(self):
        return build_dataset(self.cfg.data, self.model_config, "train")

    def setup(self, trainer: Trainer) -> None:
        loss = self.cfg.loss
        self.criterion = EquiAVLoss(
            loss.inter_weight, loss.intra_audio_weight, loss.intra_visual_weight,
            inter_temperature=loss.inter_temperature, intra_temperature=loss.intra_temperature,
            intra_variant=loss.intra_variant, faithful=loss.faithful,
        )  # fmt: skip
        self.val_data = self._val_stream(trainer)
        if self.cfg.zero_shot_eval and self.cfg.data.kind == "avdigits" and not self._scores_retrieval:
            log.warning(
                "no zero-shot retrieval at validation: data.val_speakers is empty (every speaker trains)"
            )

    def _val_stream(self, trainer: Trainer) -> DataStream | None:
        try:
            dataset = build_dataset(self.cfg.data, self.model_config, "val")
        except ConfigError as error:
            log.warning("no validation loss: %s", error)
            return None
        stream = DataStream(
            dataset, batch_size=trainer.batch_size, num_workers=self.cfg.num_workers, seed=self.cfg.seed,
            ctx=trainer.ctx, shuffle=False, persistent=False,
        )  # fmt: skip
        return stream if stream.batches_per_epoch > 0 else None

    def on_fresh_start(self, model: torch.nn.Module) -> None:
        if self.cfg.mae_init:
            loaded = load_mae_weights(model, self.cfg.mae_init)
            log.info("initialized %d tensors of both towers from %s", len(loaded), self.cfg.mae_init)

    def loss(self, model, inputs, trainer):
        stage = self.cfg.objective.stage(trainer.position.step, trainer.total_steps)
        losses = self.criterion(model(**inputs), stage)
        return losses.total, torch.stack([getattr(losses, name).detach().float() for name in LOSS_FIELDS])

    def validate(self, trainer: Trainer) -> dict[str, float]:
        """Validation loss over the val split (all ranks) and, for AV-digits, class-level zero-shot R@1 (rank 0)."""
        metrics: dict[str, float] = {}
        if self.val_data is not None:
            batches = self.val_data.epoch(0)
            limit = self.cfg.val_batches or self.val_data.batches_per_epoch
            totals, used = torch.zeros(len(LOSS_FIELDS), device=trainer.ctx.device), 0
            for _ in range(min(limit, self.val_data.batches_per_epoch)):
                inputs = trainer.uniform_batch(next(batches))
                if inputs is None:
                    continue
                with trainer.autocast():
                    losses = self.criterion(trainer.model(**inputs))
                totals += torch.stack([getattr(losses, name).float() for name in LOSS_FIELDS])
                used += 1
            if used:
                metrics.update(zip(LOGGED_NAMES, mean_over_ranks(totals / used)))
        if self._scores_retrieval and trainer.ctx.is_main:
            metrics.update(self.avdigits_retrieval(trainer))
        return metrics

    def avdigits_retrieval(self, trainer: Trainer) -> dict[str, float]:
        """Class-level zero-shot R@1 (fraction) on the held-out speakers and images, both directions."""
        if self._eval_set is None:
            data = self.cfg.data
            self._eval_set = avdigits_eval_set(
                data.path, self.model_config, "val", val_speakers=data.val_speakers,
                val_fraction_images=data.val_fraction_images, image_split_seed=data.image_split_seed,
            )  # fmt: skip
        fbanks, images, audio_labels, image_labels = self._eval_set
        model, device = trainer.model, trainer.ctx.device
        audio = embed_in_batches(model.encode_audio, fbanks, 256, device, trainer.autocast)
        image = embed_in_batches(model.encode_image, images, 256, device, trainer.autocast)
        a2i = retrieval_metrics(audio, image, audio_labels, image_labels, ks=(1,))
        i2a = retrieval_metrics(image, audio, image_labels, audio_labels, ks=(1,))
        return {"r1_audio_to_image": a2i["R@1"] / 100, "r1_image_to_audio": i2a["R@1"] / 100}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"model_config": self.model_config.to_dict()}


@torch.no_grad()
def embed_in_batches(
    encode, inputs: torch.Tensor, batch_size: int, device: torch.device, autocast
) -> torch.Tensor:
    """L2-normalized float32 embeddings of ``inputs`` through ``encode`` (``encode_audio`` / ``encode_image``)."""
    parts = []
    for chunk in inputs.split(batch_size):
        with autocast():
            parts.append(encode(chunk.to(device)).float().cpu())
    return F.normalize(torch.cat(parts), dim=-1)


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) the pretraining described by ``cfg`` in this process; joins torchrun's group if launched so."""
    return run_training(PretrainTask(cfg))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, args = config_from_args(argv)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return
    set_threads(cfg.threads, cfg.model_config().embed_dim)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"step": result["step"], "val": result["val"]}), file=sys.stdout)


__all__ = [
    "KILL_AT_STEP_ENV",
    "KILL_RANK_ENV",
    "LossConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainTask",
    "build_parser",
    "config_from_args",
    "embed_in_batches",
    "fault_kill_step",
    "main",
    "train",
]

if __name__ == "__main__":
    run_main(main, "python -m equiav.training.pretrain")
