"""The EquiAV model: two transformer towers, a transformation predictor per modality and four projection heads.

Module and parameter names match the authors' checkpoints (reference section 1), so their weights load by name after
stripping the wrapper prefixes (see ``equiav.state_dicts``).

Differences from the authors' inference path: their ``forward_feat`` draws 16 fresh random augmentation vectors for
every clip on every call, so the same input gives slightly different embeddings each time. ``encode_audio`` and
``encode_image`` instead use a fixed set of ``config.num_views`` vectors drawn once, with ``config.view_seed``, from the
same distribution (or vectors you pass as ``views``), so the same input always gives the same embedding. The
price is small: on the authors' parity checkpoint, embeddings from 20 fresh per-clip draws (the authors' behaviour)
stay within cosine 0.99992 (audio) and 0.9997 (image) of the fixed-view embeddings; ``tests/test_model.py`` checks
that two draws agree to cosine > 0.999.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from .aug_vectors import AudioAugmentConfig, VisualAugmentConfig, sample_audio_vectors, sample_visual_vectors
from .config import EquiAVConfig
from .console import show_progress
from .errors import InvalidInputError
from .layers import ProjectionHead, augmentation_encoder, init_weights
from .model_card import card_for
from .packing import pack_linear_layers
from .predictors import build_predictor
from .threads import resolve_threads, thread_limit
from .towers import TOWER_PARTS, TOWERS, Towers


@dataclass
class EquiAVOutput:
    """Un-normalized embeddings of one pretraining forward pass (entries are None where an input was not given).

    ``inter_*``: inter-modal (cross-modal) embeddings of the centroid of the view predictions.
    ``equi_*``: intra-modal prediction of the augmented input's embedding from the original and its vector.
    ``aug_*``: intra-modal embedding of the augmented input itself.
    """

    inter_audio: torch.Tensor | None = None
    inter_image: torch.Tensor | None = None
    equi_audio: torch.Tensor | None = None
    equi_image: torch.Tensor | None = None
    aug_audio: torch.Tensor | None = None
    aug_image: torch.Tensor | None = None


@dataclass
class VideoEmbedding:
    """L2-normalized embeddings of the audio track and the frames of videos, each (B, D)."""

    audio: torch.Tensor
    image: torch.Tensor


def _as_config(config: EquiAVConfig | dict[str, Any] | str | None) -> EquiAVConfig:
    if config is None:
        return EquiAVConfig()
    if isinstance(config, EquiAVConfig):
        return config
    if isinstance(config, str):
        return EquiAVConfig.from_preset(config)
    if isinstance(config, dict):
        return EquiAVConfig.from_dict(config)
    raise InvalidInputError(
        f"config must be an EquiAVConfig, a dict or a preset name, got {type(config).__name__}"
    )


class EquiAVModel(
    Towers,
    PyTorchModelHubMixin,
    library_name="equiav",
    tags=["audio-visual", "contrastive-learning", "equiav"],
    repo_url="https://github.com/equiav/equiav",
    license="mit",
):
    """EquiAV (ICML 2024): audio-visual contrastive learning with equivariant intra-modal representations.

    Build from a config or preset name (``EquiAVModel("equiav-tiny")``) for a randomly initialized model, or load weights
    with ``EquiAVModel.from_pretrained(name_or_path)``.
    """

    def __init__(self, config: EquiAVConfig | dict[str, Any] | str | None = None) -> None:
        super().__init__()
        config = _as_config(config)
        self.config = config
        self._hub_mixin_config = config
        dim, eps = config.embed_dim, config.layer_norm_eps

        self._build_towers(config, [(part, tower) for part in TOWER_PARTS for tower in TOWERS])
        self.norm_a_aug = nn.LayerNorm(dim, eps=eps)
        self.norm_v_aug = nn.LayerNorm(dim, eps=eps)

        self.aug_encoder_a = augmentation_encoder(config.audio_aug_dim, config.aug_embed_dim)
        self.aug_encoder_v = augmentation_encoder(config.visual_aug_dim, config.aug_embed_dim)
        self.cross_attn_a = build_predictor(config)
        self.cross_attn_v = build_predictor(config)

        hidden = config.proj_hidden_dim
        self.pred_a_intra = ProjectionHead(dim, hidden, config.intra_proj_dim, eps)
        self.pred_v_intra = ProjectionHead(dim, hidden, config.intra_proj_dim, eps)
        self.pred_a_inter = ProjectionHead(dim, hidden, config.inter_proj_dim, eps)
        self.pred_v_inter = ProjectionHead(dim, hidden, config.inter_proj_dim, eps)

        audio_views, visual_views = default_views(config)
        self.register_buffer("audio_views", audio_views, persistent=False)
        self.register_buffer("visual_views", visual_views, persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ setup

    def reset_parameters(self) -> None:
        """The authors' initialization (reference 1.6)."""
        self._reset_towers()
        self.apply(init_weights)

    def pack_for_cpu(self) -> EquiAVModel:
        """Faster CPU inference: every linear layer multiplies by a copy of its weight prepacked once for oneDNN
        (``equiav.packing``; 1.12x in float32, 1.08x in bfloat16 on an AVX-512 CPU), at the cost of one more copy of
        those weights in memory. Training, autocast and other devices still use the plain weights. Returns ``self``."""
        pack_linear_layers(self)
        return self

    def compile_for_cpu(self) -> EquiAVModel:
        """Inference through ``torch.compile`` with frozen weights: ``encode_audio`` and ``encode_image`` become
        compiled functions in which inductor folds the weights into the graph as constants, keeps them prepacked for
        oneDNN and fuses the element-wise work around the matrix products. The first call of each input shape
        compiles (tens of seconds for ``equiav-base``); the result is for inference only: a frozen graph does not see
        later weight updates, so call it on a model whose weights are final. Puts the model in eval mode; returns
        ``self``."""
        self.eval()
        options = {"freezing": True}
        self._encode_audio = torch.compile(self._encode_audio, options=options)
        self._encode_image = torch.compile(self._encode_image, options=options)
        return self

    @property
    def device(self) -> torch.device:
        return self.modality_a.device

    @property
    def dtype(self) -> torch.dtype:
        return self.modality_a.dtype

    # ------------------------------------------------------------------ towers

    def _two_views(
        self, x: torch.Tensor, x_aug: torch.Tensor | None, embed, blocks, norm, norm_aug
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens of an input and of its augmented view; both share the tower, so they run as one batch."""
        if x_aug is None:
            return norm(self._run_blocks(embed(x), blocks)), None
        patches = torch.cat([embed(x), embed(x_aug)])
        tokens = self._run_blocks(patches, blocks)
        original, augmented = tokens.split([x.shape[0], x_aug.shape[0]])
        return norm(original), norm_aug(augmented)

    # ------------------------------------------------------------------ predictor

    def _views(
        self, views: torch.Tensor | None, default: torch.Tensor, batch: int, name: str
    ) -> torch.Tensor:
        if views is None:
            return default
        if (
            not isinstance(views, torch.Tensor)
            or views.dim() not in (2, 3)
            or views.shape[-1] != default.shape[-1]
        ):
            shape = tuple(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise InvalidInputError(
                f"{name} must be (S, {default.shape[-1]}) or (B, S, {default.shape[-1]}) augmentation vectors, got {shape}"
            )
        if views.dim() == 3 and views.shape[0] != batch:
            raise InvalidInputError(f"{name} has batch size {views.shape[0]} but the input has {batch}")
        return views.to(device=self.device, dtype=self.dtype)

    def _predict(
        self,
        tokens: torch.Tensor,
        views: torch.Tensor | None,
        t: torch.Tensor | None,
        encoder: nn.Module,
        predictor: nn.Module,
        name: str,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(centroid over the S ``views``, prediction for ``t``); each is None where its input is.

        The S view queries and the query of ``t`` act on the same tokens independently, so they run as one call of
        S + 1 queries (the attention predictor projects the keys and values once).
        """
        if t is None:
            return (None if views is None else predictor(tokens, encoder(views))), None
        batch, dim = tokens.shape[0], self._aug_dim(encoder)
        if t.dim() != 2 or t.shape != (batch, dim):
            raise InvalidInputError(f"{name} must be ({batch}, {dim}), got {tuple(t.shape)}")
        queries = [t.to(device=self.device, dtype=self.dtype)[:, None]]
        if views is not None:
            queries.insert(0, views.unsqueeze(0).expand(batch, -1, -1) if views.dim() == 2 else views)
        per_view = predictor.per_view(tokens, encoder(torch.cat(queries, dim=1)))
        centroid = per_view[:, :-1].mean(dim=1) if views is not None else None
        return centroid, per_view[:, -1]

    @staticmethod
    def _aug_dim(encoder: nn.Module) -> int:
        return encoder[0].in_features

    def _branch(
        self,
        tokens: torch.Tensor,
        tokens_aug: torch.Tensor | None,
        views: torch.Tensor | None,
        t: torch.Tensor | None,
        modality: str,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(inter, equi, aug) embeddings of one modality under ``config.inter_embedding`` and ``intra_space``."""
        a = modality == "a"
        encoder, predictor = (
            (self.aug_encoder_a, self.cross_attn_a) if a else (self.aug_encoder_v, self.cross_attn_v)
        )
        inter_head, intra_head = (
            (self.pred_a_inter, self.pred_a_intra) if a else (self.pred_v_inter, self.pred_v_intra)
        )
        kind, name = self.config.inter_embedding, "t_audio" if a else "t_image"
        wants_t = t is not None and (self.config.intra_space == "equivariant" or kind == "predicted")
        centroid, predicted = self._predict(
            tokens, views if kind == "centroid" else None, t if wants_t else None, encoder, predictor, name
        )
        pooled = tokens.mean(dim=1)
        if kind == "centroid":
            inter = centroid
        elif kind == "predicted":
            inter = (
                predicted if predicted is not None else self._first_view(tokens, views, encoder, predictor)
            )
        elif kind == "augmented" and tokens_aug is not None:
            inter = tokens_aug.mean(dim=1)
        else:
            inter = pooled
        equi = None
        if t is not None:
            equi = intra_head(predicted if self.config.intra_space == "equivariant" else pooled)
        aug = None if tokens_aug is None else intra_head(tokens_aug.mean(dim=1))
        return inter_head(inter), equi, aug

    def _first_view(
        self, tokens: torch.Tensor, views: torch.Tensor | None, encoder: nn.Module, predictor: nn.Module
    ) -> torch.Tensor:
        """The prediction for the first of ``views`` (the ``predicted`` embedding when no ``t`` is given)."""
        first = views[..., :1, :]
        return predictor.per_view(tokens, encoder(first))[:, 0]

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        audio: torch.Tensor | None,
        image: torch.Tensor | None,
        audio_aug: torch.Tensor | None = None,
        image_aug: torch.Tensor | None = None,
        t_audio: torch.Tensor | None = None,
        t_image: torch.Tensor | None = None,
        t_audio_views: torch.Tensor | None = None,
        t_image_views: torch.Tensor | None = None,
    ) -> EquiAVOutput:
        """The pretraining forward pass (the authors' ``MainModel.forward`` with ``cen_mean=True``).

        audio, audio_aug: normalized filterbanks (B, T, F) or (B, 3, T, F); image, image_aug: normalized (B, 3, H, W);
        t_audio / t_image: (B, d) vectors of the augmentations that produced the augmented views; t_*_views: (S, d) or
        (B, S, d) vectors for the centroid (default: the model's fixed views).
        """
        out = EquiAVOutput()
        if audio is not None:
            out.inter_audio, out.equi_audio, out.aug_audio = self._modality(
                "a", audio, audio_aug, t_audio, t_audio_views
            )
        if image is not None:
            out.inter_image, out.equi_image, out.aug_image = self._modality(
                "v", image, image_aug, t_image, t_image_views
            )
        return out

    def _modality(
        self,
        modality: str,
        x: torch.Tensor,
        x_aug: torch.Tensor | None,
        t: torch.Tensor | None,
        t_views: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The pretraining forward pass of one tower ("a" or "v"): (inter, equi, aug) embeddings."""
        if modality == "a":
            check, default_views, view_name = self._check_audio, self.audio_views, "t_audio_views"
            parts = (self._embed_audio_patches, self.blocks_a, self.norm_a, self.norm_a_aug)
        else:
            check, default_views, view_name = self._check_image, self.visual_views, "t_image_views"
            parts = (self._embed_image_patches, self.blocks_v, self.norm_v, self.norm_v_aug)
        x, x_aug = check(x), None if x_aug is None else check(x_aug)
        tokens, tokens_aug = self._two_views(x, x_aug, *parts)
        views = self._views(t_views, default_views, tokens.shape[0], view_name)
        return self._branch(tokens, tokens_aug, views, t, modality)

    def encode_audio(self, fbank: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """Inter-modal embedding (B, D) of normalized filterbanks, un-normalized (the authors' ``forward_feat``)."""
        fbank = self._check_audio(fbank)
        return self._encode_audio(fbank, self._views(views, self.audio_views, fbank.shape[0], "views"))

    def encode_image(self, pixels: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """Inter-modal embedding (B, D) of normalized images, un-normalized (the authors' ``forward_feat``)."""
        pixels = self._check_image(pixels)
        return self._encode_image(pixels, self._views(views, self.visual_views, pixels.shape[0], "views"))

    def _encode_audio(self, fbank: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``encode_audio`` of checked inputs: the part ``compile_for_cpu`` compiles."""
        return self._branch(self._audio_tokens(fbank), None, views, None, "a")[0]

    def _encode_image(self, pixels: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """``encode_image`` of checked inputs: the part ``compile_for_cpu`` compiles."""
        return self._branch(self._image_tokens(pixels), None, views, None, "v")[0]

    def localize(self, audio: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Sound-source localization: how well each image patch matches the sound, (B, rows, cols) in [-1, 1].

        Method: the audio clip's inter-modal embedding (centroid of the fixed views, L2-normalized) is compared by
        cosine similarity with every image patch token projected into the same space by the visual inter head
        (``pred_v_inter`` applied to each final-normed patch token instead of their pooled centroid). Patches showing
        the sounding object score high. ``audio`` is a normalized filterbank batch (B, T, F), ``image`` normalized
        pixels (B, 3, H, W); use ``equiav.localize.localize_files`` for raw files.
        """
        sound = F.normalize(self.encode_audio(audio), dim=-1)
        patches = F.normalize(self.pred_v_inter(self.image_tokens(image)), dim=-1)
        scores = torch.einsum("bnd,bd->bn", patches, sound)
        return scores.unflatten(1, self.config.image_grid)

    # ------------------------------------------------------------------ raw inputs

    @torch.no_grad()
    def embed_audio(
        self,
        x: Any,
        sample_rate: int | None = None,
        *,
        windows: str = "crop",
        batch_size: int = 32,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """L2-normalized embeddings (B, D) of audio files, waveforms (numpy or torch) or a list of them.

        Arrays and tensors are waveforms and need ``sample_rate``; files carry their own. Any rate and channel count is
        converted to mono at ``config.sample_rate``. ``windows="crop"`` keeps the first ``target_length`` frames and
        zero-pads shorter clips (the authors' behaviour); ``windows="sliding"`` embeds consecutive windows covering the
        whole clip and averages them. ``num_threads``: CPU threads for the call (None: ``equiav.threads`` default).
        """
        from .audio import audio_inputs_to_fbanks

        _check_batch_size(batch_size)
        with thread_limit(num_threads, self.config.embed_dim):
            items = _as_list(x)
            fbanks = audio_inputs_to_fbanks(items, sample_rate, self.config, windows=windows)
            counts = [f.shape[0] for f in fbanks]
            embeddings = F.normalize(
                self._batched(self.encode_audio, torch.cat(fbanks), batch_size, progress, "audio"), dim=-1
            )
        pooled = [chunk.mean(dim=0) for chunk in embeddings.split(counts)]
        return F.normalize(torch.stack(pooled), dim=-1)

    @torch.no_grad()
    def embed_image(
        self, x: Any, *, batch_size: int = 32, progress: bool | None = None, num_threads: int | None = None
    ) -> torch.Tensor:
        """L2-normalized embeddings (B, D) of image files, PIL images, arrays, tensors or a list of them; a
        (B, C, H, W) tensor, alone or in the list, stands for its B images."""
        from .image import preprocess_images

        _check_batch_size(batch_size)
        with thread_limit(num_threads, self.config.embed_dim):
            pixels = preprocess_images(_image_items(x), self.config)
            return F.normalize(
                self._batched(self.encode_image, pixels, batch_size, progress, "image"), dim=-1
            )

    @torch.no_grad()
    def embed_video(
        self,
        path: str | Path | Sequence[str | Path],
        *,
        num_frames: int = 1,
        windows: str = "crop",
        num_threads: int | None = None,
    ) -> VideoEmbedding:
        """Embeddings of the audio track and of the middle frame (or ``num_frames`` evenly spaced frames, averaged)."""
        from .audio import crop_samples
        from .video import open_video

        rate = self.config.sample_rate
        # "crop" reads only the start of the soundtrack (see ``crop_samples``); "sliding" reads all of it.
        max_seconds = crop_samples(self.config) / rate if windows == "crop" else None
        threads = resolve_threads(num_threads, self.config.embed_dim)
        audio_items, image_rows = [], []
        for item in _as_list(path):
            with open_video(item) as video:
                audio_items.append(video.audio(rate, max_seconds=max_seconds))
                frames = video.frames(num_frames=num_frames)
            image_rows.append(F.normalize(self.embed_image(frames, num_threads=threads).mean(dim=0), dim=-1))
        audio = self.embed_audio(audio_items, sample_rate=rate, windows=windows, num_threads=threads)
        return VideoEmbedding(audio=audio, image=torch.stack(image_rows))

    def _batched(
        self, fn, inputs: torch.Tensor, batch_size: int, progress: bool | None, what: str
    ) -> torch.Tensor:
        """``fn`` over batches; a progress bar by ``show_progress`` (None: more than one batch, on a terminal)."""
        from tqdm.auto import tqdm

        chunks = inputs.split(batch_size)
        bar = tqdm(
            chunks, desc=f"embedding {what}", unit="batch", disable=not show_progress(progress, len(chunks))
        )
        return torch.cat([fn(chunk.to(self.device)).float() for chunk in bar])

    # ------------------------------------------------------------------ weights

    def generate_model_card(self, *args: Any, datasets: list[str] | None = None, **kwargs: Any) -> ModelCard:
        """The Hub card that ``save_pretrained`` writes as ``README.md`` (see ``equiav.model_card``)."""
        return card_for(self, datasets)

    def _save_pretrained(self, save_directory: Path) -> None:
        from .hub import save_weights

        save_weights(self, Path(save_directory))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs: Any) -> EquiAVModel:  # type: ignore[override]
        """Load a model from a registered name, a local directory, a hub repository or an authors' checkpoint file.

        See ``equiav.hub.load_model`` for the keyword arguments (``revision``, ``config``, ``map_location``, ...).
        """
        from .hub import load_model

        return load_model(cls, name_or_path, **kwargs)


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        if not x:
            raise InvalidInputError("got an empty list of inputs")
        return list(x)
    return [x]


def _image_items(x: Any) -> list[Any]:
    """``_as_list``, with each 4-D (B, C, H, W) tensor replaced by its B images."""
    items = []
    for item in _as_list(x):
        items.extend(item.unbind(0) if isinstance(item, torch.Tensor) and item.dim() == 4 else [item])
    if not items:
        raise InvalidInputError("got an image batch tensor holding no images (batch size 0)")
    return items


def _check_batch_size(batch_size: Any) -> None:
    """``batch_size`` must be a positive int (0 or a negative one would fail inside ``torch.split``)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")


def default_views(config: EquiAVConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed centroid views: ``num_views`` audio and visual vectors drawn with ``view_seed``."""
    generator = torch.Generator().manual_seed(config.view_seed)
    audio = sample_audio_vectors(AudioAugmentConfig.for_model(config), config.num_views, generator)
    visual = sample_visual_vectors(VisualAugmentConfig.for_model(config), config.num_views, generator)
    return audio.float(), visual.float()
