"""EquiAV contrastive losses: intra-modal equivariant (Eq. 9-10, or EquiMod Eq. A) and inter-modal (Eq. 14-15).

All losses take un-normalized embeddings of shape (B, D) and L2-normalize them inside, so cosine similarity is a dot
product. Under ``torch.distributed`` every rank uses its own rows as anchors and the rows of all ranks as keys; the
loss is the mean over the local anchors. With the default gathering (gradient through the gathered keys, open_clip
style, see :mod:`equiav.training.distributed`) and DDP's gradient averaging, N processes with equal local batches give
the same loss (the mean over ranks) and the same gradients as one process with the whole batch.

``faithful=True`` reproduces the authors' inter-modal gather (reference bug B13): the keys of every rank, this rank's
own rows included, are gathered without gradient, so an embedding gets gradient only as an anchor. The loss value is
unchanged; the gradients differ from the single-process ones whenever there is more than one process. The authors'
intra-modal loss already gathered with gradient, so ``faithful`` changes nothing there.

Accuracies are top-1 percentages over this rank's anchors, as the authors logged them: the audio anchors for the
inter-modal loss, and the equivariant anchors over the concatenated [equi-to-aug | equi-to-equi] logits for the
intra-modal loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .distributed import all_gather_no_grad, all_gather_with_grad, get_rank, get_world_size

IntraVariant = Literal["with_positive", "equimod"]
INTRA_VARIANTS: tuple[str, ...] = ("with_positive", "equimod")
# Which terms of Eq. 16 a step trains: all of them (joint training), or the intra- or inter-modal ones alone (the
# stages of two-stage and alternating training, paper Table 7).
Stage = Literal["joint", "intra", "inter"]
STAGES: tuple[str, ...] = ("joint", "intra", "inter")
DEFAULT_TEMPERATURE = 0.07
OUTPUT_FIELDS: tuple[str, ...] = (
    "inter_audio",
    "inter_image",
    "equi_audio",
    "equi_image",
    "aug_audio",
    "aug_image",
)


@dataclass(frozen=True)
class ContrastiveResult:
    """One contrastive loss (scalar, differentiable) and its top-1 accuracy in percent (scalar, detached)."""

    loss: torch.Tensor
    accuracy: torch.Tensor


@dataclass(frozen=True)
class EquiAVLossOutput:
    """Everything :class:`EquiAVLoss` computes for one batch; losses are differentiable, accuracies are percentages."""

    total: torch.Tensor
    inter: torch.Tensor
    intra_audio: torch.Tensor
    intra_visual: torch.Tensor
    acc_inter: torch.Tensor
    acc_intra_audio: torch.Tensor
    acc_intra_visual: torch.Tensor


def _check_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]) -> None:
    for tensor, name in zip((first, second), names):
        if not isinstance(tensor, torch.Tensor):
            raise InvalidInputError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise InvalidInputError(
                f"{name}: expected a non-empty (batch, dim) tensor, got shape {tuple(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise InvalidInputError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    if first.shape != second.shape:
        raise InvalidInputError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )


def _check_temperature(temperature: float | torch.Tensor) -> None:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise InvalidInputError(f"temperature: expected a scalar, got shape {tuple(temperature.shape)}")
        return
    if not isinstance(temperature, (int, float)) or not 0 < float(temperature) < float("inf"):
        raise InvalidInputError(f"temperature: expected a positive finite number, got {temperature!r}")


def _key_layout(local_rows: int, gather: bool) -> tuple[bool, int]:
    """Whether keys come from all ranks, and the global index of this rank's first row."""
    distributed = gather and get_world_size() > 1
    return distributed, (get_rank() * local_rows if distributed else 0)


def _gather_columns(
    first: torch.Tensor, second: torch.Tensor, *, with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather two same-shaped (n, D) tensors from all ranks with a single collective."""
    joined = torch.cat([first, second], dim=1)
    gathered = all_gather_with_grad(joined) if with_grad else all_gather_no_grad(joined)
    return gathered[:, : first.shape[1]], gathered[:, first.shape[1] :]


def _percent_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        correct = (logits.argmax(dim=1) == labels).sum().float()
        return correct * 100.0 / labels.shape[0]


def inter_modal_loss_and_accuracy(
    audio: torch.Tensor,
    image: torch.Tensor,
    temperature: float | torch.Tensor = DEFAULT_TEMPERATURE,
    *,
    gather: bool = True,
    faithful: bool = False,
) -> ContrastiveResult:
    """Inter-modal loss of Eq. 14-15 with the top-1 accuracy of the audio anchors.

    For audio anchor i the positive is image i and the denominator runs over all images (positive included), and the
    same with the roles swapped; the result is the mean of the two directions. ``gather`` takes the keys from all
    ranks when distributed; ``faithful`` gathers them without gradient as the authors did (B13, module docstring).
    """
    _check_pair(audio, image, ("audio", "image"))
    _check_temperature(temperature)
    audio = F.normalize(audio, dim=-1)
    image = F.normalize(image, dim=-1)
    distributed, offset = _key_layout(audio.shape[0], gather)
    all_audio, all_image = (
        _gather_columns(audio, image, with_grad=not faithful) if distributed else (audio, image)
    )
    labels = torch.arange(audio.shape[0], device=audio.device) + offset
    logits_audio = audio @ all_image.T / temperature
    logits_image = image @ all_audio.T / temperature
    loss = (F.cross_entropy(logits_audio, labels) + F.cross_entropy(logits_image, labels)) / 2
    return ContrastiveResult(loss=loss, accuracy=_percent_correct(logits_audio, labels))


def _intra_direction(
    anchors: torch.Tensor,
    positives_keys: torch.Tensor,
    same_keys: torch.Tensor,
    labels: torch.Tensor,
    temperature: float | torch.Tensor,
    variant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one anchor set and its [to-other-view | to-same-view] logits (self-similarity excluded)."""
    self_mask = F.one_hot(labels, num_classes=same_keys.shape[0]).bool()
    cross = anchors @ positives_keys.T / temperature
    same = (anchors @ same_keys.T / temperature).masked_fill(self_mask, float("-inf"))
    logits = torch.cat([cross, same], dim=1)
    if variant == "with_positive":
        return F.cross_entropy(logits, labels), logits
    positive = cross.gather(1, labels[:, None]).squeeze(1)
    negatives = torch.cat([cross.masked_fill(self_mask, float("-inf")), same], dim=1)
    return (torch.logsumexp(negatives, dim=1) - positive).mean(), logits


def intra_modal_loss_and_accuracy(
    equi: torch.Tensor,
    aug: torch.Tensor,
    temperature: float | torch.Tensor = DEFAULT_TEMPERATURE,
    *,
    variant: IntraVariant = "with_positive",
    gather: bool = True,
    faithful: bool = False,
) -> ContrastiveResult:
    """Intra-modal equivariant loss with the top-1 accuracy of the equivariant anchors.

    The 2N batch joins the equivariant embeddings ``equi`` (z-hat) and the augmented-input embeddings ``aug`` (z');
    z-hat_i and z'_i are a positive pair and the other 2(N - 1) embeddings are negatives. ``variant="with_positive"``
    is Eq. 9-10 (the paper's choice): the positive also appears in the denominator, as NT-Xent. ``"equimod"`` is
    Eq. A-B: the denominator holds the negatives only, which needs a global batch of at least 2. Both average the
    z-hat-anchored and z'-anchored directions. ``faithful`` has no effect (module docstring).
    """
    _check_pair(equi, aug, ("equi", "aug"))
    _check_temperature(temperature)
    if variant not in INTRA_VARIANTS:
        raise InvalidInputError(f"variant: expected one of {INTRA_VARIANTS}, got {variant!r}")
    equi = F.normalize(equi, dim=-1)
    aug = F.normalize(aug, dim=-1)
    distributed, offset = _key_layout(equi.shape[0], gather)
    all_equi, all_aug = _gather_columns(equi, aug, with_grad=True) if distributed else (equi, aug)
    if variant == "equimod" and all_equi.shape[0] < 2:
        raise InvalidInputError(
            "variant='equimod' needs at least 2 samples in the (global) batch: it has no negatives"
        )
    labels = torch.arange(equi.shape[0], device=equi.device) + offset
    loss_equi, logits_equi = _intra_direction(equi, all_aug, all_equi, labels, temperature, variant)
    loss_aug, _ = _intra_direction(aug, all_equi, all_aug, labels, temperature, variant)
    return ContrastiveResult(loss=(loss_equi + loss_aug) / 2, accuracy=_percent_correct(logits_equi, labels))


def inter_modal_loss(
    audio: torch.Tensor,
    image: torch.Tensor,
    temperature: float | torch.Tensor = DEFAULT_TEMPERATURE,
    *,
    gather: bool = True,
    faithful: bool = False,
) -> torch.Tensor:
    """Inter-modal contrastive loss, Eq. 14-15 (scalar); see :func:`inter_modal_loss_and_accuracy`."""
    return inter_modal_loss_and_accuracy(audio, image, temperature, gather=gather, faithful=faithful).loss


def intra_modal_loss(
    equi: torch.Tensor,
    aug: torch.Tensor,
    temperature: float | torch.Tensor = DEFAULT_TEMPERATURE,
    *,
    variant: IntraVariant = "with_positive",
    gather: bool = True,
    faithful: bool = False,
) -> torch.Tensor:
    """Intra-modal equivariant loss, Eq. 9-10 or Eq. A-B (scalar); see :func:`intra_modal_loss_and_accuracy`."""
    return intra_modal_loss_and_accuracy(
        equi, aug, temperature, variant=variant, gather=gather, faithful=faithful
    ).loss


class EquiAVLoss(nn.Module):
    """Total EquiAV objective, Eq. 16: ``w_inter * L_inter + w_audio * L_intra_a + w_visual * L_intra_v``.

    The default weights are 1/3 each, as in the authors' training code (reference B10); the paper states 1 for all
    three, which gives the same direction at three times the magnitude (this matters with gradient-norm clipping).
    The sum is evaluated left to right in that order, as the authors' trainer does. The two temperatures default to
    0.07 like the paper. ``faithful`` selects the authors' no-gradient inter-modal gather (B13).
    """

    def __init__(
        self,
        inter_weight: float = 1 / 3,
        intra_audio_weight: float = 1 / 3,
        intra_visual_weight: float = 1 / 3,
        *,
        inter_temperature: float = DEFAULT_TEMPERATURE,
        intra_temperature: float = DEFAULT_TEMPERATURE,
        intra_variant: IntraVariant = "with_positive",
        gather: bool = True,
        faithful: bool = False,
    ) -> None:
        super().__init__()
        for name, weight in (
            ("inter_weight", inter_weight),
            ("intra_audio_weight", intra_audio_weight),
            ("intra_visual_weight", intra_visual_weight),
        ):
            if not isinstance(weight, (int, float)) or weight < 0:
                raise InvalidInputError(f"{name}: expected a non-negative number, got {weight!r}")
        _check_temperature(inter_temperature)
        _check_temperature(intra_temperature)
        if intra_variant not in INTRA_VARIANTS:
            raise InvalidInputError(f"intra_variant: expected one of {INTRA_VARIANTS}, got {intra_variant!r}")
        self.inter_weight = float(inter_weight)
        self.intra_audio_weight = float(intra_audio_weight)
        self.intra_visual_weight = float(intra_visual_weight)
        self.inter_temperature = inter_temperature
        self.intra_temperature = intra_temperature
        self.intra_variant = intra_variant
        self.gather = gather
        self.faithful = faithful

    def forward(self, output: Any, stage: Stage = "joint") -> EquiAVLossOutput:
        """Losses of a pretraining forward pass, read from ``output``'s attributes named in ``OUTPUT_FIELDS``.

        ``stage`` ``"intra"`` or ``"inter"`` keeps only those terms in ``total`` (the others' weights become 0); every
        loss is still computed and reported.
        """
        if stage not in STAGES:
            raise InvalidInputError(f"stage: expected one of {STAGES}, got {stage!r}")
        missing = [name for name in OUTPUT_FIELDS if not hasattr(output, name)]
        if missing:
            raise InvalidInputError(
                f"output: expected a model output with attributes {OUTPUT_FIELDS}; "
                f"{type(output).__name__} lacks {missing}"
            )
        inter = inter_modal_loss_and_accuracy(
            output.inter_audio,
            output.inter_image,
            self.inter_temperature,
            gather=self.gather,
            faithful=self.faithful,
        )
        intra_audio = self._intra(output.equi_audio, output.aug_audio)
        intra_visual = self._intra(output.equi_image, output.aug_image)
        inter_weight = 0.0 if stage == "intra" else self.inter_weight
        intra_scale = 0.0 if stage == "inter" else 1.0
        total = (
            inter_weight * inter.loss
            + intra_scale * self.intra_audio_weight * intra_audio.loss
            + intra_scale * self.intra_visual_weight * intra_visual.loss
        )
        return EquiAVLossOutput(
            total=total,
            inter=inter.loss,
            intra_audio=intra_audio.loss,
            intra_visual=intra_visual.loss,
            acc_inter=inter.accuracy,
            acc_intra_audio=intra_audio.accuracy,
            acc_intra_visual=intra_visual.accuracy,
        )

    def _intra(self, equi: torch.Tensor, aug: torch.Tensor) -> ContrastiveResult:
        return intra_modal_loss_and_accuracy(
            equi,
            aug,
            self.intra_temperature,
            variant=self.intra_variant,
            gather=self.gather,
            faithful=self.faithful,
        )

    def extra_repr(self) -> str:
        return (
            f"weights=({self.inter_weight:.4g}, {self.intra_audio_weight:.4g}, {self.intra_visual_weight:.4g}), "
            f"temperatures=({self.inter_temperature}, {self.intra_temperature}), variant={self.intra_variant}, "
            f"gather={self.gather}, faithful={self.faithful}"
        )
