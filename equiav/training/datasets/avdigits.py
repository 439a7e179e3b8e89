"""AV-digits: a spoken digit (FSDD) paired with a handwritten image of the same digit (MNIST).

The two modalities share only the digit, so pairs are drawn at class level: in training each recording meets a
random training image of its digit (a new one every epoch); in validation the k-th recording of a digit meets the
k-th validation image of that digit (cycling), always the same. Recordings are split by speaker (``val_speakers``
held out) and images by a fixed seeded split of each digit (``val_fraction_images`` held out), so neither a voice
nor a handwritten image is seen in both splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ...audio import load_fbank
from ...config import EquiAVConfig
from ...errors import DatasetError, InvalidInputError
from ...image import preprocess_image
from .config import DataConfig, check_split
from .items import DECODE_ERRORS, randint
from .mapped import Decoded, PretrainDataset, RawSample, encode_image

FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
MNIST_FILE = "mnist_4k.npz"
NUM_DIGITS = 10


@dataclass(frozen=True)
class Recording:
    path: Path
    digit: int
    speaker: str
    take: int


def find_recordings_dir(root: str | Path) -> Path:
    """FSDD's ``recordings`` folder under ``root`` (the shared folder, its ``data`` folder, the FSDD folder, or the
    recordings folder itself)."""
    root = Path(root)
    for candidate in (
        root / "data" / "fsdd" / "recordings",
        root / "fsdd" / "recordings",
        root / "recordings",
        root,
    ):
        if candidate.is_dir() and any(FSDD_NAME.match(p.name) for p in candidate.glob("*.wav")):
            return candidate
    raise DatasetError(
        f"{root}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) found in it or below it"
    )


def find_mnist_file(root: str | Path) -> Path:
    """``mnist/mnist_4k.npz`` next to the FSDD folder, looked for from ``root`` upwards."""
    root = Path(root).resolve()
    for base in (root, root / "data", root.parent, root.parent.parent):
        candidate = base / "mnist" / MNIST_FILE
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{root}: no mnist/{MNIST_FILE} found in it, its data folder or its parents")


def list_recordings(folder: Path) -> list[Recording]:
    recordings = []
    for path in folder.glob("*.wav"):
        match = FSDD_NAME.match(path.name)
        if match:
            recordings.append(Recording(path, int(match[1]), match[2], int(match[3])))
    return sorted(recordings, key=lambda r: (r.speaker, r.digit, r.take))


def split_recordings(
    recordings: list[Recording], val_speakers: tuple[str, ...], split: str
) -> list[Recording]:
    """The recordings of ``split``: validation = ``val_speakers``, training = every other speaker. A folder of
    held-out speakers alone is a valid validation split (scoring a model on new voices)."""
    speakers = sorted({r.speaker for r in recordings})
    unknown = sorted(set(val_speakers) - set(speakers))
    if unknown:
        raise DatasetError(f"validation speaker(s) {unknown} have no recordings; speakers are {speakers}")
    if split == "train" and set(speakers) <= set(val_speakers):
        raise DatasetError(f"every speaker {speakers} is a validation speaker; no training speaker is left")
    held_out = set(val_speakers)
    return [r for r in recordings if (r.speaker in held_out) == (split == "val")]


def load_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images`` (N, 28, 28) uint8 and ``labels`` (N,) int64 of an MNIST ``.npz``."""
    try:
        with np.load(path) as archive:
            images, labels = archive["images"], archive["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read MNIST arrays 'images' and 'labels' ({error})") from error
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise DatasetError(
            f"{path}: expected uint8 images (N, H, W) and N labels, got {images.dtype} {images.shape} and "
            f"{labels.shape}"
        )
    return images, labels


def split_images(labels: np.ndarray, val_fraction: float, seed: int, split: str) -> list[np.ndarray]:
    """Per digit, the indices of ``split``'s images: each digit's images are shuffled with ``seed`` and the first
    ``round(val_fraction * n)`` (at least one) held out for validation."""
    rng = np.random.default_rng(seed)
    pools = []
    for digit in range(NUM_DIGITS):
        indices = rng.permutation(np.flatnonzero(labels == digit))
        if len(indices) < 2:
            raise DatasetError(
                f"MNIST holds {len(indices)} image(s) of digit {digit}; need at least 2 to split"
            )
        held_out = min(max(round(val_fraction * len(indices)), 1), len(indices) - 1)
        pools.append(np.sort(indices[:held_out] if split == "val" else indices[held_out:]))
    return pools


class _DigitsSource:
    """The recordings and image pools of one split."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        val_speakers: tuple[str, ...],
        val_fraction_images: float,
        image_split_seed: int,
    ) -> None:
        check_split(split)
        self.recordings = split_recordings(list_recordings(find_recordings_dir(root)), val_speakers, split)
        self.images, self.labels = load_mnist(find_mnist_file(root))
        self.pools = split_images(self.labels, val_fraction_images, image_split_seed, split)
        # Position of each recording among the recordings of its digit: the deterministic validation pairing.
        counts = [0] * NUM_DIGITS
        self.rank_in_digit = []
        for recording in self.recordings:
            self.rank_in_digit.append(counts[recording.digit])
            counts[recording.digit] += 1

    def paired_image(self, index: int, offset: int = 0) -> int:
        """The ``offset``-th image after the deterministic partner of recording ``index``."""
        pool = self.pools[self.recordings[index].digit]
        return int(pool[(self.rank_in_digit[index] + offset) % len(pool)])

    def random_image(self, index: int, generator: torch.Generator) -> int:
        pool = self.pools[self.recordings[index].digit]
        return int(pool[randint(generator, 0, len(pool))])

    def pil(self, image_index: int) -> Image.Image:
        return Image.fromarray(self.images[image_index], mode="L").convert("RGB")


class AVDigitsDataset(PretrainDataset):
    """Spoken digits paired with handwritten digits; ``label`` is the digit (see the module docstring)."""

    def __init__(self, data: DataConfig, model: EquiAVConfig, split: str) -> None:
        super().__init__(data, model, split)
        self.source = _DigitsSource(
            data.path, split, data.val_speakers, data.val_fraction_images, data.image_split_seed
        )

    def __len__(self) -> int:
        return len(self.source.recordings)

    def item_path(self, index: int) -> str:
        return str(self.source.recordings[index].path)

    def decode(self, index: int, generator: torch.Generator) -> Decoded:
        source = self.source
        if self.split == "val":
            first = second = source.paired_image(index)
        else:
            first = source.random_image(index, generator)
            second = source.random_image(index, generator) if self.data.independent_aug_frame else first
        recording = source.recordings[index]
        fbank = load_fbank(recording.path, self.model)
        image = source.pil(first)
        aug_image = image if second == first else source.pil(second)
        return Decoded(fbank, image, aug_image, {"label": torch.tensor(recording.digit, dtype=torch.int64)})

    def raw_sample(self, index: int) -> RawSample:
        """Shard form: the filterbank and ``frame_count`` PNG images of the digit. Training: drawn at random once;
        validation: the deterministic partner in the middle position (the one validation reads) and its
        neighbours."""
        source = self.source
        generator = self.generator(index)
        if self.split == "val":
            middle = self.data.frame_count // 2
            chosen = [source.paired_image(index, k - middle) for k in range(self.data.frame_count)]
        else:
            chosen = [source.random_image(index, generator) for _ in range(self.data.frame_count)]
        recording = source.recordings[index]
        frames = [("png", encode_image(Image.fromarray(source.images[i], mode="L"), "png")) for i in chosen]
        meta = {"id": recording.path.stem, "source": str(recording.path), "label": recording.digit}
        return RawSample(load_fbank(recording.path, self.model), frames, meta)


def avdigits_eval_set(
    root: str | Path,
    model_config: EquiAVConfig,
    split: str = "val",
    *,
    val_speakers: tuple[str, ...] = ("theo",),
    val_fraction_images: float = 0.2,
    image_split_seed: int = 0,
    per_digit: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Un-augmented inputs of one AV-digits split for class-level retrieval.

    Returns ``fbanks`` (N, T, F) of every recording of the split, ``images`` (M, 3, S, S) of every image of the
    split (normalized, through ``preprocess_image``), and their digits ``audio_labels`` (N,) and ``image_labels``
    (M,) as int64. A hit is a retrieved item of the same digit. ``per_digit`` keeps only the first that many
    recordings and images of each digit (quick evaluations). Raises ``DatasetError`` naming an unreadable file.
    """
    if per_digit is not None and per_digit < 1:
        raise InvalidInputError(f"per_digit must be a positive integer or None, got {per_digit!r}")
    source = _DigitsSource(root, split, tuple(val_speakers), val_fraction_images, image_split_seed)
    recordings = [
        r for r, rank in zip(source.recordings, source.rank_in_digit) if per_digit is None or rank < per_digit
    ]
    fbanks = []
    for recording in recordings:
        try:
            fbanks.append(load_fbank(recording.path, model_config))
        except DECODE_ERRORS as error:
            raise DatasetError(f"AV-digits evaluation set: {error}") from error
    image_indices = np.concatenate([pool[:per_digit] for pool in source.pools])
    images = torch.stack([preprocess_image(source.images[i], model_config) for i in image_indices])
    audio_labels = torch.tensor([r.digit for r in recordings], dtype=torch.int64)
    image_labels = torch.from_numpy(source.labels[image_indices])
    return torch.stack(fbanks), images, audio_labels, image_labels
