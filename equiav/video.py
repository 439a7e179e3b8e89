"""Video front-end: probe a clip, decode its soundtrack, and pick frames, with PyAV (the optional ``video`` extra).

Streams: when a file holds several video or audio streams, the one FFmpeg ranks best (``av_find_best_stream``,
e.g. the highest resolution) is used, as the ``ffmpeg`` command line does by default.

Times are presentation times in seconds, as a player shows them. The frame "at" time ``t`` is the frame on screen
then: the last frame whose timestamp is <= ``t`` (the first frame when ``t`` precedes it). Frames are found by
seeking to the nearest earlier keyframe and decoding forward, so one frame costs at most one group of pictures,
not the whole video; frames close together are reached by decoding forward instead.

Cost: decoding uses as many threads as torch may use (``torch.get_num_threads()``, at most 16), so a data-loader
worker, which torch limits to one thread, decodes on one thread and many workers do not oversubscribe the cores.
``short_side`` scales a frame during its colour conversion (one FFmpeg pass), far cheaper than converting the full
frame and resizing it afterwards; ``max_seconds`` stops decoding a soundtrack once that much of it is out.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checks import all_finite
from .errors import InvalidInputError, VideoDecodeError
from .image import resized_size
from .paths import file_problem, shown

FRAME_POSITIONS = ("middle", "cav-mae")
DOWNMIX_MODES = ("first", "mean")
# CAV-MAE extracts its frames from the first 10 seconds of each clip.
_CAV_MAE_SPAN_S = 10.0
_TIME_EPS = 1e-6
# FFmpeg's own cap on automatic decoder threads: frame threads beyond it only add latency to a seek.
_MAX_DECODE_THREADS = 16
# Decoding may stop this many seconds short of the declared end before a file counts as truncated.
_TRUNCATION_SLACK_S = 1.0
# Samples per resampled chunk (0.5 s at 16 kHz): decoding runs at most one chunk past ``max_seconds``.
_RESAMPLED_CHUNK = 8192
# Top-level boxes of an MP4 / QuickTime file read when looking for one cut off by the end of the file.
_MAX_BOXES = 64


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError as error:
        raise ImportError(
            'reading video files needs PyAV; install it with: pip install "equiav[video]"'
        ) from error
    return av


@contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[Any]:
    """Open a media file, turning every FFmpeg failure while it is open into ``VideoDecodeError`` naming it."""
    av = _import_av()
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"video path must be a str or os.PathLike, got {type(path).__name__}")
    problem = file_problem(path)
    if problem:
        raise VideoDecodeError(f"cannot read video {shown(path)}: the path {problem}")
    path = Path(path)
    try:
        container = av.open(str(path), options=_pixel_limit())
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoDecodeError(f"cannot open video {path}: {error}") from error
    try:
        yield container
    except av.FFmpegError as error:
        raise VideoDecodeError(f"cannot decode video {path}: {error}") from error
    finally:
        container.close()


class VideoFile:
    """A media file opened once (``open_video``): describe it, decode its soundtrack and pick frames, in any order,
    without reopening it (a data loader needs all three for every item)."""

    def __init__(self, container: Any, path: str | os.PathLike) -> None:
        self._container, self._path = container, path
        self._moved = False  # whether anything was decoded yet
        self._video: Any = None  # the video stream, set up for threaded decoding on first use

    def info(self) -> dict[str, Any]:
        """What ``probe_video`` returns, from the headers (nothing is decoded)."""
        container = self._container
        video = container.streams.best("video")
        audio = container.streams.best("audio")
        info: dict[str, Any] = {"duration": _container_duration(container), "has_video": video is not None}
        info.update(width=None, height=None, fps=None, num_frames=None, video_codec=None)
        if video is not None:
            start, end = _video_span(container, video)
            fps = _frame_rate(video)
            info.update(
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=fps,
                num_frames=video.frames
                or (round((end - start) * fps) if fps and math.isfinite(end) else None),
                video_codec=video.codec_context.name,
            )
        info["has_audio"] = audio is not None
        info.update(
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )
        return info

    def audio(
        self, sample_rate: int = 16000, downmix: str = "first", max_seconds: float | None = None
    ) -> torch.Tensor:
        """The soundtrack, as ``read_video_audio`` returns it. Read it before any frame: once frames were decoded,
        the soundtrack is read from a second open of the file (a seek back to the start can drop the first audio
        samples in some containers)."""
        _check_audio_options(sample_rate, downmix, max_seconds)
        if not self._moved:
            self._moved = True
            return _decode_audio(self._container, self._path, sample_rate, downmix, max_seconds)
        with _open_video(self._path) as container:
            return _decode_audio(container, self._path, sample_rate, downmix, max_seconds)

    def frames(
        self,
        times: Sequence[float] | None = None,
        num_frames: int = 1,
        position: str = "middle",
        short_side: int | None = None,
    ) -> list[Image.Image]:
        """RGB frames, chosen and scaled as ``read_video_frames`` does."""
        _check_frame_options(num_frames, position, short_side)
        container, path = self._container, self._path
        if self._video is None:
            self._video = _video_stream(container, path)
        stream = self._video
        start, end = _video_span(container, stream)
        if times is None:
            targets = _segment_times(
                start, end, _frame_rate(stream), stream.frames, num_frames, position, path
            )
        else:
            # A player keeps showing the last frame until the file ends, which may be after the video stream does.
            file_end = max(end, _container_start(container) + (_container_duration(container) or 0.0))
            targets = _checked_times(times, start, file_end, path)
        self._moved = True
        return _frames_at(container, stream, targets, (start, end), path, short_side)


@contextmanager
def open_video(path: str | os.PathLike) -> Iterator[VideoFile]:
    """Open a media file once for several reads; FFmpeg failures become ``VideoDecodeError`` naming it."""
    with _open_video(path) as container:
        yield VideoFile(container, path)


def _decode_audio(
    container: Any, path: str | os.PathLike, sample_rate: int, downmix: str, max_seconds: float | None
) -> torch.Tensor:
    """Decode and resample the best audio stream. With ``max_seconds``, decoding stops as soon as the resampler has
    put out that many samples; the resampler is then not flushed (flushing pads its filter with silence), so the
    samples kept equal the start of the whole soundtrack's, bit for bit."""
    stream = container.streams.best("audio")
    if stream is None:
        raise VideoDecodeError(f"video {path} has no audio stream{_damage_note(container, path)}")
    declared = stream.duration * float(stream.time_base) if stream.duration else None
    wanted = None if max_seconds is None else math.ceil(max_seconds * sample_rate)
    resampler = _Resampler(sample_rate, first_channel=downmix == "first", path=path)
    chunks, count = [], 0
    for frame in container.decode(stream):
        for chunk in resampler.push(frame):
            chunks.append(chunk)
            count += chunk.shape[1]
        if wanted is not None and count >= wanted:
            break
    else:
        chunks.extend(resampler.push(None))
    if not chunks:
        raise VideoDecodeError(f"video {path}: its audio stream holds no decodable samples")
    channels = np.concatenate(chunks, axis=1)[:, :wanted]
    decoded = channels.shape[1] / sample_rate
    if declared is not None and max_seconds is not None:
        declared = min(declared, max_seconds)
    if declared is not None and decoded < declared - _TRUNCATION_SLACK_S:
        raise VideoDecodeError(
            f"video {path}: decoded {decoded:.3f} s of audio although its header declares {declared:.3f} s; "
            "the file is probably truncated"
        )
    mono = channels[0] if downmix == "first" else channels.mean(axis=0)
    waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if not all_finite(waveform):
        raise InvalidInputError(f"video {path}: its audio stream holds NaN or infinite samples")
    return waveform


class _Resampler:
    """FFmpeg's resampler to planar float32 at ``rate`` (what ``aformat`` inserts, as ``ffmpeg -ar`` does), built from
    the first frame pushed.

    With ``first_channel`` a ``pan`` channel copy in front keeps only the first channel, so one channel is resampled
    instead of all; FFmpeg resamples every channel alike, so the samples equal the first channel of a full resample
    bit for bit. Output comes in chunks of ``_RESAMPLED_CHUNK`` samples (the last one shorter, on the flush), so a
    soundtrack is converted to numpy in tens of pieces instead of one per codec frame. Frames that are planar
    float32 at ``rate`` already pass through as they are, without a filter graph.
    """

    def __init__(self, rate: int, first_channel: bool, path: str | os.PathLike) -> None:
        self._rate, self._first_channel, self._path = rate, first_channel, path
        self._av = _import_av()
        self._graph: Any = None
        self._source: tuple[str, str, int] | None = None

    def push(self, frame: Any) -> list[np.ndarray]:
        """Feed one decoded frame (``None`` flushes) and return the (channels, samples) chunks that are complete."""
        if frame is not None:
            source = (frame.format.name, frame.layout.name, frame.sample_rate)
            if self._source is None:
                self._source = source
                if (frame.format.name, frame.sample_rate) != ("fltp", self._rate):
                    self._graph = self._build(frame)
            elif source != self._source:
                raise VideoDecodeError(
                    f"video {self._path}: the audio format changes mid-stream, from {self._source} to {source} "
                    "(sample format, channel layout, rate)"
                )
            if self._graph is None:
                samples = frame.to_ndarray()
                return [samples[:1] if self._first_channel else samples]
        elif self._graph is None:
            return []
        self._graph.push(frame)
        chunks = []
        while True:
            try:
                chunks.append(self._graph.pull().to_ndarray())
            except EOFError:
                break
            except self._av.FFmpegError as error:
                if error.errno != errno.EAGAIN:
                    raise
                break
        return chunks

    def _build(self, frame: Any) -> Any:
        graph = self._av.filter.Graph()
        buffer_args = {"time_base": str(frame.time_base)} if frame.time_base is not None else {}
        last = graph.add(
            "abuffer",
            sample_rate=str(frame.sample_rate),
            sample_fmt=frame.format.name,
            channel_layout=frame.layout.name,
            **buffer_args,
        )
        layout = frame.layout.name
        if self._first_channel and len(frame.layout.channels) > 1:
            layout = "mono"
            pan = graph.add("pan", "mono|c0=c0")
            last.link_to(pan)
            last = pan
        convert = graph.add(
            "aformat", sample_rates=str(self._rate), sample_fmts="fltp", channel_layouts=layout
        )
        sink = graph.add("abuffersink")
        last.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        graph.set_audio_frame_size(_RESAMPLED_CHUNK)
        return graph


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_audio_options(sample_rate: int, downmix: str, max_seconds: float | None = None) -> None:
    if not _is_positive_int(sample_rate):
        raise InvalidInputError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if downmix not in DOWNMIX_MODES:
        raise InvalidInputError(f"downmix must be one of {DOWNMIX_MODES}, got {downmix!r}")
    if max_seconds is not None and not (_is_finite_number(max_seconds) and max_seconds > 0):
        raise InvalidInputError(
            f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}"
        )


def _check_frame_options(num_frames: int, position: str, short_side: int | None = None) -> None:
    if not _is_positive_int(num_frames):
        raise InvalidInputError(f"num_frames must be a positive integer, got {num_frames!r}")
    if position not in FRAME_POSITIONS:
        raise InvalidInputError(f"position must be one of {FRAME_POSITIONS}, got {position!r}")
    if short_side is not None and not _is_positive_int(short_side):
        raise InvalidInputError(f"short_side must be a positive integer or None, got {short_side!r}")


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """Describe a media file without decoding it.

    Returns ``duration`` (seconds, whole file), ``has_video``, ``width``, ``height``, ``fps``, ``num_frames`` (from
    the header, else estimated as duration x fps), ``video_codec``, ``has_audio``, ``audio_sample_rate``,
    ``audio_channels`` and ``audio_codec``; the fields of a missing stream are None.
    """
    with open_video(path) as video:
        return video.info()


def read_video_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    downmix: str = "first",
    max_seconds: float | None = None,
) -> torch.Tensor:
    """Decode the soundtrack of a video (or any media file) to a mono float32 waveform at ``sample_rate``.

    Resampling uses FFmpeg's resampler, as ``ffmpeg -ar`` does. ``downmix="first"`` keeps the first channel, which is
    what CAV-MAE's extraction (and so EquiAV's training data) used, and resamples only that channel (the samples are
    those of a resample of all channels); ``"mean"`` averages the resampled channels. The waveform
    starts at the first decoded sample (a late-starting audio stream is not padded). ``max_seconds`` keeps only the
    first ``ceil(max_seconds * sample_rate)`` samples and stops decoding there; they equal the start of the whole
    waveform exactly. Raises ``VideoDecodeError`` when the file has no audio stream or no decodable audio, or
    stops well short of the length its header declares (or of ``max_seconds``, if that is shorter).
    """
    _check_audio_options(sample_rate, downmix, max_seconds)
    with open_video(path) as video:
        return video.audio(sample_rate, downmix, max_seconds)


def read_video_frames(
    path: str | os.PathLike,
    times: Sequence[float] | None = None,
    num_frames: int = 1,
    position: str = "middle",
    short_side: int | None = None,
) -> list[Image.Image]:
    """Decode RGB frames of a video as PIL images.

    ``times`` (seconds) picks frames explicitly, in the given order; it overrides ``num_frames`` and ``position``.
    Otherwise the clip is cut into ``num_frames`` equal segments and

    * ``position="middle"`` takes the frame at the center of each segment (one frame: the middle of the clip, which
      is EquiAV's test frame);
    * ``position="cav-mae"`` reproduces CAV-MAE's ``extract_video_frame.py``: over the first
      ``N = min(frame count, int(fps * 10))`` frames, frame ``i`` is frame number ``int(i * N / num_frames) - 1``
      (the first frame for ``i = 0``). With ``num_frames=10``, index 5 is the frame EquiAV evaluates on.

    ``short_side`` scales each frame so that its short side has that many pixels (the long side rounded down, as
    ``equiav.image.resized_size``) while FFmpeg converts it to RGB, with its bicubic filter (widened when shrinking,
    so it does not alias). The pixels differ from a full-size frame resized by Pillow by about one level of 255 on
    average (other filter coefficients), at a fraction of the cost.
    """
    _check_frame_options(num_frames, position, short_side)
    with open_video(path) as video:
        return video.frames(times, num_frames, position, short_side)


def read_video_frame_at(path: str | os.PathLike, time: float) -> Image.Image:
    """The RGB frame on screen at ``time`` seconds (e.g. a random frame for training)."""
    return read_video_frames(path, times=[time])[0]


def _container_duration(container: Any) -> float | None:
    return container.duration / 1_000_000 if container.duration is not None else None


def _container_start(container: Any) -> float:
    return container.start_time / 1_000_000 if container.start_time is not None else 0.0


def _video_stream(container: Any, path: str | os.PathLike) -> Any:
    stream = container.streams.best("video")
    if stream is None:
        raise VideoDecodeError(f"video {path} has no video stream{_damage_note(container, path)}")
    width, height = stream.codec_context.width, stream.codec_context.height
    if not width or not height:
        width, height = _header_size(path)
    _check_frame_size(width, height, path)
    stream.codec_context.options = _pixel_limit()
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = min(torch.get_num_threads(), _MAX_DECODE_THREADS)
    return stream


def _pixel_limit() -> dict[str, str]:
    """FFmpeg decoder options that refuse frames above ``PIL.Image.MAX_IMAGE_PIXELS`` before allocating them.

    They also bound the frame FFmpeg decodes while opening a file to learn its streams' parameters.
    """
    limit = Image.MAX_IMAGE_PIXELS
    return {} if limit is None else {"max_pixels": str(int(limit))}


def _header_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of the best video stream as its bitstream header states them, without decoding pixels.

    Used when opening under the pixel limit left a stream's size unknown, which a frame above that limit does.
    """
    av = _import_av()
    with av.open(str(path), options={"skip_frame": "all"}) as container:
        stream = container.streams.best("video")
        return (stream.codec_context.width, stream.codec_context.height) if stream is not None else (0, 0)


def _check_frame_size(width: int, height: int, path: str | os.PathLike) -> None:
    """Refuse frames above the pixel limit of image files (``PIL.Image.MAX_IMAGE_PIXELS``) before decoding them."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise VideoDecodeError(
            f"refusing to decode video {path}: its frames are {width}x{height} pixels ({width * height}), above "
            f"PIL.Image.MAX_IMAGE_PIXELS ({limit}), the limit image files have; raise it if the file is trusted"
        )


def _damage_note(container: Any, path: str | os.PathLike) -> str:
    """Why an MP4 / QuickTime container looks truncated, completing an error about a missing stream or frame."""
    if "mov" not in container.format.name.split(","):
        return ""
    problem = _cut_off_box(path)
    return f": the file is truncated or damaged ({problem})" if problem else ""


def _cut_off_box(path: str | os.PathLike) -> str | None:
    """The first top-level MP4 box that claims more bytes than the file has left, described; None if none does."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        offset = 0
        for _ in range(_MAX_BOXES):
            file.seek(offset)
            header = file.read(16)
            if len(header) < 8:
                return None
            length, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            if length == 0:
                return None  # the box runs to the end of the file
            if offset + length > size:
                return (
                    f"its '{kind}' box claims {length} bytes but the file ends {size - offset} bytes into it"
                )
            offset += length
    return None


def _video_span(container: Any, stream: Any) -> tuple[float, float]:
    """(start, end) of the video stream in seconds, from its own header or else from the container's."""
    base = float(stream.time_base)
    start = stream.start_time * base if stream.start_time is not None else _container_start(container)
    if stream.duration:
        return start, start + stream.duration * base
    total = _container_duration(container)
    return start, (_container_start(container) + total) if total is not None else math.inf


def _frame_rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _segment_times(
    start: float,
    end: float,
    fps: float | None,
    frame_count: int,
    num_frames: int,
    position: str,
    path: str | os.PathLike,
) -> list[float]:
    """Target times of ``num_frames`` frames at ``position`` (see ``read_video_frames``)."""
    if position == "middle":
        if not math.isfinite(end):
            raise VideoDecodeError(f"video {path}: its duration is unknown; pass explicit times instead")
        step = (end - start) / num_frames
        return [start + (index + 0.5) * step for index in range(num_frames)]
    if not fps:
        raise VideoDecodeError(f"video {path}: its frame rate is unknown, which position='cav-mae' needs")
    estimated = round((end - start) * fps) if math.isfinite(end) else 0
    total = min(frame_count or estimated, int(fps * _CAV_MAE_SPAN_S))
    indices = [max(int(index * (total / num_frames)) - 1, 0) for index in range(num_frames)]
    # Aim at the middle of each frame's display interval so rounding cannot land on its neighbour.
    return [start + (frame_index + 0.5) / fps for frame_index in indices]


def _checked_times(times: Sequence[float], start: float, end: float, path: str | os.PathLike) -> list[float]:
    if isinstance(times, (str, bytes)) or not isinstance(times, Sequence) or len(times) == 0:
        raise InvalidInputError(f"times must be a non-empty list of seconds, got {times!r}")
    checked = []
    for value in times:
        if not _is_finite_number(value):
            raise InvalidInputError(f"times must hold finite numbers of seconds, got {value!r}")
        if value < 0 or value > end + _TIME_EPS:
            raise InvalidInputError(
                f"time {value} s is outside video {path}, which spans {start:.3f} to {end:.3f} s"
            )
        checked.append(float(value))
    return checked


def _frames_at(
    container: Any,
    stream: Any,
    targets: list[float],
    span: tuple[float, float],
    path: str | os.PathLike,
    short_side: int | None,
) -> list[Image.Image]:
    """Frames on screen at each target time, in the order of ``targets``."""
    cursor = _FrameCursor(container, stream, span, path)
    try:
        images = {
            target: _to_image(cursor.frame_at(target), short_side, path) for target in sorted(set(targets))
        }
    finally:
        cursor.close()
    return [images[target] for target in targets]


def _to_image(frame: Any, short_side: int | None, path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image of a decoded frame, scaled to ``short_side`` in the same FFmpeg pass when given."""
    _check_frame_size(frame.width, frame.height, path)  # a frame may be larger than the stream's header says
    if short_side is None:
        return frame.to_image()
    height, width = resized_size(frame.height, frame.width, short_side)
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="BICUBIC").to_image()


class _FrameCursor:
    """Finds the frames on screen at increasing times, seeking or decoding forward, whichever looks cheaper.

    Decoding forward wins when no keyframe lies between the current position and the target (a seek would land
    before the current position). The keyframe positions are unknown in advance, so the cursor decodes forward when
    the gap is no longer than the longest keyframe interval seen so far, and seeks otherwise.

    Frames that nothing references (most B-frames of H.264 / HEVC) are dropped undecoded when they cannot be the
    frame on screen at the target: when a packet read earlier (decode order runs ahead of display order) shows at a
    later time that is still at or before the target. Reference frames are always decoded, so the frames returned
    are exactly those of a full decode (about 1.6x faster on H.264 with B-frames; codecs without such frames, like
    VP8, decode as before).
    """

    def __init__(
        self, container: Any, stream: Any, span: tuple[float, float], path: str | os.PathLike
    ) -> None:
        self._container, self._stream, self._path = container, stream, path
        self._start, self._end = span
        self._frames: Generator[Any, None, None] | None = None
        # The current target, shared with the decoding generator, which must not hold self: a reference cycle would
        # leave it to the garbage collector, possibly after the file is closed (PyAV then crashes).
        self._target = [-math.inf]
        self._shown: Any = None  # last decoded frame at or before the previous target
        self._ahead: Any = None  # first decoded frame after it (None once the stream has ended)
        self._key_time: float | None = None
        self._key_interval = 0.0

    def frame_at(self, target: float) -> Any:
        """The frame on screen at ``target``, which must not be earlier than the previous target."""
        self._target[0] = target
        shown, ahead = self._shown, self._ahead
        if shown is None and ahead is not None and target < ahead.time:
            return ahead  # the target precedes the first frame
        if shown is not None and shown.time <= target and (ahead is None or target < ahead.time):
            pass  # still the frame found for the previous target
        elif (
            shown is not None and ahead is not None and target - ahead.time <= self._forward_limit(ahead.time)
        ):
            self._advance(target)
        else:
            self._seek(target)
            if self._shown is None:
                return self._ahead
        if self._ahead is None:
            self._check_complete(target)
        return self._shown

    def _check_complete(self, target: float) -> None:
        """Raise when decoding stopped well before ``target`` and before the end the header declares."""
        last = self._shown.time
        if target - last > _TRUNCATION_SLACK_S and last < self._end - _TRUNCATION_SLACK_S:
            raise VideoDecodeError(
                f"video {self._path}: decoding stopped at {last:.3f} s although the header says the video lasts "
                f"until {self._end:.3f} s; the file is probably truncated"
            )

    def _forward_limit(self, position: float) -> float:
        since_key = position - self._key_time if self._key_time is not None else 0.0
        return max(self._key_interval, since_key)

    def _advance(self, target: float) -> None:
        """Decode forward until the frame after ``target``, updating the shown/ahead frames and keyframe stats."""
        if self._ahead is not None:
            self._shown = self._ahead
        self._ahead = None
        for frame in self._frames or ():
            if frame.time is None:
                continue
            if frame.key_frame:
                if self._key_time is not None:
                    self._key_interval = max(self._key_interval, frame.time - self._key_time)
                self._key_time = frame.time
            if frame.time <= target + _TIME_EPS:
                self._shown = frame
            else:
                self._ahead = frame
                return

    def close(self) -> None:
        """Finish the decoding generator now, while the file is open (PyAV objects must not outlive it)."""
        if self._frames is not None:
            self._frames.close()
            self._frames = None

    def _seek(self, target: float) -> None:
        """Seek to the keyframe at or before ``target`` and decode forward to it.

        Some demuxers land after the target; the seek point then moves back by 1, 2, 4... seconds until a frame at or
        before the target is decoded, or the stream start is reached (the target then precedes the first frame).
        """
        base = float(self._stream.time_base)
        rewind = 0.0
        while True:
            seek_time = max(target - rewind, self._start)
            self.close()
            self._seek_to(int(math.floor(seek_time / base)))
            self._frames = _decode_for_target(self._container, self._stream, self._target)
            self._shown = self._ahead = self._key_time = None
            self._advance(target)
            if self._shown is not None:
                return
            if seek_time <= self._start:
                if self._ahead is None:
                    note = _damage_note(self._container, self._path)
                    raise VideoDecodeError(f"video {self._path}: no decodable video frame{note}")
                return
            rewind = max(2 * rewind, 1.0)

    def _seek_to(self, timestamp: int) -> None:
        """Seek the video stream; a failure (FFmpeg's EPERM for a stream without frames) is explained."""
        av = _import_av()
        try:
            self._container.seek(timestamp, stream=self._stream, backward=True)
        except av.FFmpegError as error:
            if not _has_video_packets(self._path):
                raise VideoDecodeError(f"video {self._path}: its video stream holds no frames") from error
            note = _damage_note(self._container, self._path) or ": the file is probably damaged"
            raise VideoDecodeError(
                f"video {self._path}: cannot seek in its video stream ({error}){note}"
            ) from error


def _has_video_packets(path: str | os.PathLike) -> bool:
    """Whether the best video stream of a file holds any data, read from a fresh open (errors only)."""
    av = _import_av()
    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        return stream is not None and any(packet.size for packet in container.demux(stream))


def _decode_for_target(container: Any, stream: Any, target: list[float]) -> Generator[Any, None, None]:
    """Decoded frames from the demuxer's position, dropping unreferenced frames that cannot be on screen at
    ``target[0]`` (see ``_FrameCursor``)."""
    context = stream.codec_context
    latest = -math.inf  # latest presentation time among the packets read so far that show by the target
    for packet in container.demux(stream):
        skip = False
        if packet.pts is not None:
            time = float(packet.pts * packet.time_base)
            skip = time < latest
            if time <= target[0] + _TIME_EPS:
                latest = max(latest, time)
        context.skip_frame = "NONREF" if skip else "DEFAULT"
        yield from packet.decode()
