"""Video front-end on real clips, checked against brute-force full decodes with PyAV and scipy resampling."""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from corpus import write_video_with_sound

from equiav.errors import InvalidInputError, VideoDecodeError
from equiav.video import open_video, probe_video, read_video_audio, read_video_frame_at, read_video_frames

av = pytest.importorskip("av")

NASA = "nasa_13013.mp4"
BUNNY = "big_buck_bunny_0_30.webm"
BUNNY_1S = "big_buck_bunny_432_433.webm"
CLIPS = [NASA, BUNNY, BUNNY_1S]
# name -> (duration s, fps, width, height, audio rate, frames), as the shared data README and the headers state.
EXPECTED = {
    NASA: (13.056, 30000 / 1001, 480, 270, 16000, 390),
    BUNNY: (30.003, 24.0, 1280, 720, 44100, 720),
    BUNNY_1S: (1.0, 24.0, 1280, 720, 44100, 24),
}


@pytest.fixture(scope="module")
def av_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "av"


def brute_force_frames(path: Path, times=(), indices=()) -> tuple[list[float], dict]:
    """Decode from the first frame on; return the frame times and the RGB arrays on screen at ``times`` and of the
    frames numbered ``indices`` (decoding stops one second after the last of them)."""
    chosen: dict = {}
    frame_times = []
    last_time, last_index = max(times, default=-1.0), max(indices, default=-1)
    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        for number, frame in enumerate(container.decode(stream)):
            if frame.time > last_time + 1 and number > last_index:
                break
            frame_times.append(frame.time)
            for t in times:
                if frame.time <= t + 1e-6 or ("t", t) not in chosen:
                    chosen[("t", t)] = frame
            if number in indices:
                chosen[("i", number)] = frame
    return frame_times, {key: np.asarray(frame.to_image()) for key, frame in chosen.items()}


def video_span(path: Path) -> tuple[float, float]:
    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        start = stream.start_time * stream.time_base
        end = (
            start + stream.duration * stream.time_base
            if stream.duration
            else Fraction(container.duration, 10**6)
        )
        return float(start), float(end)


def remux(source: Path, target: Path, kind: str) -> Path:
    """Copy one stream of ``source`` into a new file (no re-encoding), e.g. to make a video without audio."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.best(kind)
        if hasattr(out, "add_stream_from_template"):
            out_stream = out.add_stream_from_template(stream)
        else:  # PyAV < 14
            out_stream = out.add_stream(template=stream)
        for packet in inp.demux(stream):
            if packet.dts is not None:
                packet.stream = out_stream
                out.mux(packet)
    return target


@pytest.mark.parametrize("name", CLIPS)
def test_probe_reports_header_values(av_dir: Path, name: str) -> None:
    duration, fps, width, height, rate, frames = EXPECTED[name]
    info = probe_video(av_dir / name)
    assert info["duration"] == pytest.approx(duration, abs=1e-3)
    assert info["fps"] == pytest.approx(fps, rel=1e-9)
    assert (info["width"], info["height"]) == (width, height)
    assert info["num_frames"] == frames
    assert info["has_video"] and info["has_audio"]
    assert info["audio_sample_rate"] == rate and info["audio_channels"] == 2


def test_probe_picks_best_streams(av_dir: Path) -> None:
    # The NASA file holds a 320x180 / 8 kHz pair before the 480x270 / 16 kHz pair; FFmpeg ranks the latter best.
    with av.open(str(av_dir / NASA)) as container:
        assert [s.codec_context.width for s in container.streams.video] == [320, 480]
    info = probe_video(av_dir / NASA)
    assert (info["width"], info["audio_sample_rate"]) == (480, 16000)


@pytest.mark.parametrize("name", CLIPS)
def test_audio_matches_brute_force_decode(av_dir: Path, name: str) -> None:
    duration, fps, *_ = EXPECTED[name]
    with av.open(str(av_dir / name)) as container:
        stream = container.streams.best("audio")
        rate = stream.codec_context.sample_rate
        native = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    waveform = read_video_audio(av_dir / name).numpy()
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(len(waveform) - native.shape[1] * 16000 / rate) <= 1
    assert abs(len(waveform) - duration * 16000) <= 16000 / fps  # within one video frame of the clip length
    assert np.sqrt(np.mean(waveform**2)) > 0.02  # real sound, not silence
    if rate == 16000:
        np.testing.assert_array_equal(waveform, native[0])
    else:
        ratio = Fraction(16000, rate)
        expected = scipy.signal.resample_poly(
            native[0].astype(np.float64), ratio.numerator, ratio.denominator
        )
        n = min(len(expected), len(waveform))
        relative = np.linalg.norm(waveform[:n] - expected[:n]) / np.linalg.norm(expected[:n])
        assert relative < 0.02


@pytest.mark.parametrize("name", CLIPS)
def test_one_open_reads_what_the_separate_readers_read_in_any_order(av_dir: Path, name: str) -> None:
    """``open_video`` serves the header, frames and the soundtrack from one open, whichever is read first."""
    path = av_dir / name
    audio, info = read_video_audio(path), probe_video(path)
    times = [0.4, info["duration"] / 2]
    frames = read_video_frames(path, times=times)
    with open_video(path) as video:
        assert video.info() == info
        first = video.frames(times=times)
        assert np.array_equal(video.audio().numpy(), audio.numpy())
        again = video.frames(times=times[::-1])
        assert np.array_equal(video.audio().numpy(), audio.numpy())
    for got in (first, again[::-1]):
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, frames))


def test_audio_downmix_and_rate(av_dir: Path) -> None:
    path = av_dir / NASA
    with av.open(str(path)) as container:
        stream = container.streams.best("audio")
        native = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
    assert not np.allclose(native[0], native[1])
    np.testing.assert_allclose(read_video_audio(path, downmix="mean").numpy(), native.mean(axis=0), atol=1e-7)
    assert len(read_video_audio(path, sample_rate=8000)) == native.shape[1] // 2


@pytest.mark.parametrize("name", CLIPS)
def test_audio_prefix_is_the_start_of_the_whole_soundtrack(av_dir: Path, name: str) -> None:
    """``max_seconds`` stops decoding early without flushing the resampler, so the prefix is exact; a clip shorter
    than ``max_seconds`` comes back whole."""
    path = av_dir / name
    whole = read_video_audio(path).numpy()
    for seconds in (0.5, 10.255):
        prefix = read_video_audio(path, max_seconds=seconds).numpy()
        assert len(prefix) == min(math.ceil(seconds * 16000), len(whole))
        np.testing.assert_array_equal(prefix, whole[: len(prefix)])
    with open_video(path) as video:
        video.frames(times=[0.5])
        np.testing.assert_array_equal(video.audio(max_seconds=0.5).numpy(), whole[:8000])


def resampled_by_pyav(path: Path, rate: int) -> tuple[np.ndarray, object]:
    """All channels of the best audio stream through PyAV's own resampler (flushed), and the first decoded frame."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="fltp", rate=rate)
        decoded = list(container.decode(container.streams.best("audio")))
        chunks = [chunk.to_ndarray() for frame in [*decoded, None] for chunk in resampler.resample(frame)]
    return np.concatenate(chunks, axis=1), decoded[0]


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("rate", [16000, 22050])
def test_resampled_first_channel_equals_ffmpegs_resampling_of_all_channels(
    av_dir: Path, name: str, rate: int
) -> None:
    """Only the first channel is resampled (``downmix="first"``); FFmpeg's resampler treats each channel alike, so
    the samples equal the first channel of PyAV's own resampler run on all channels, flush included, bit for bit;
    ``"mean"`` averages all resampled channels."""
    channels, _ = resampled_by_pyav(av_dir / name, rate)
    assert channels.shape[0] == 2
    np.testing.assert_array_equal(read_video_audio(av_dir / name, sample_rate=rate).numpy(), channels[0])
    mean = read_video_audio(av_dir / name, sample_rate=rate, downmix="mean").numpy()
    np.testing.assert_array_equal(mean, channels.mean(axis=0, dtype=np.float32))


@pytest.mark.parametrize(
    ("codec", "rate", "layout", "sample_format"),
    [
        ("pcm_s16le", 48000, "5.1", "s16"),
        ("flac", 44100, "stereo", "s16"),
        ("pcm_f32le", 22050, "stereo", "flt"),
    ],
)
def test_first_channel_of_other_sample_formats_and_layouts(
    tmp_path: Path, codec: str, rate: int, layout: str, sample_format: str
) -> None:
    """Packed integer and float samples and six channels: the first channel still equals FFmpeg's full resample."""
    path = write_video_with_sound(tmp_path / "clip.mkv", codec, rate, layout, sample_format)
    channels, decoded = resampled_by_pyav(path, 16000)
    assert decoded.format.name == sample_format and len(decoded.layout.channels) > 1
    np.testing.assert_array_equal(read_video_audio(path).numpy(), channels[0])
    np.testing.assert_array_equal(read_video_audio(path, downmix="mean").numpy(), channels.mean(axis=0))


def test_audio_format_changing_mid_stream_is_an_error() -> None:
    from equiav.video import _Resampler

    def frame(channels: int, layout: str) -> object:
        made = av.AudioFrame.from_ndarray(
            np.zeros((channels, 1024), np.float32), format="fltp", layout=layout
        )
        made.sample_rate = 44100
        return made

    resampler = _Resampler(16000, first_channel=True, path="clip.mp4")
    assert resampler.push(None) == []
    resampler.push(frame(2, "stereo"))
    with pytest.raises(VideoDecodeError, match=r"clip\.mp4: the audio format changes mid-stream"):
        resampler.push(frame(1, "mono"))


def test_audio_prefix_of_a_truncated_file(av_dir: Path, tmp_path: Path) -> None:
    """A file cut at about 13 s of 30 s still gives its first 10 s, equal to those of the whole file."""
    path = tmp_path / "truncated.webm"
    path.write_bytes((av_dir / BUNNY).read_bytes()[:600_000])
    prefix = read_video_audio(path, max_seconds=10.0).numpy()
    assert len(prefix) == 160000 and len(read_video_audio(path, max_seconds=20.0)) < 14 * 16000
    np.testing.assert_array_equal(prefix, read_video_audio(av_dir / BUNNY, max_seconds=10.0).numpy())


@pytest.mark.parametrize("name", [NASA, BUNNY])
def test_frames_scaled_while_converting(av_dir: Path, name: str) -> None:
    """``short_side`` frames have ``resized_size``'s shape and stay within about a level of 255 of Pillow's bicubic
    resize of the full frame."""
    from PIL import Image

    from equiav.image import resized_size

    path = av_dir / name
    times = [1.0, 3.3]
    full = read_video_frames(path, times=times)
    scaled = read_video_frames(path, times=times, short_side=224)
    for big, small in zip(full, scaled):
        height, width = resized_size(big.height, big.width, 224)
        assert small.size == (width, height) and small.mode == "RGB"
        pillow = np.asarray(big.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
        assert np.abs(pillow - np.asarray(small)).mean() < 2.0
    with pytest.raises(InvalidInputError, match="short_side"):
        read_video_frames(path, short_side=0)


def test_decoder_threads_follow_torch(av_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One decoding thread where torch may use one (a data-loader worker), so workers do not oversubscribe cores."""
    import torch

    from equiav.video import _video_stream

    for threads, expected in ((1, 1), (3, 3), (96, 16)):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        with av.open(str(av_dir / NASA)) as container:
            assert _video_stream(container, NASA).codec_context.thread_count == expected


@pytest.mark.parametrize("name", CLIPS)
def test_middle_frame_is_the_frame_on_screen_at_mid_clip(av_dir: Path, name: str) -> None:
    path = av_dir / name
    start, end = video_span(path)
    middle = (start + end) / 2
    frame_times, reference = brute_force_frames(path, times=[middle])
    [image] = read_video_frames(path)
    _, _, width, height, _, frames = EXPECTED[name]
    assert image.size == (width, height) and image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), reference[("t", middle)])
    shown = max(i for i, t in enumerate(frame_times) if t <= middle + 1e-6)
    assert abs(shown - frames / 2) <= 1


def test_evenly_spaced_frames_match_brute_force(av_dir: Path) -> None:
    path = av_dir / BUNNY
    start, end = video_span(path)
    times = [start + (i + 0.5) * (end - start) / 10 for i in range(10)]
    _, reference = brute_force_frames(path, times=times)
    images = read_video_frames(path, num_frames=10)
    assert len(images) == 10
    for t, image in zip(times, images):
        np.testing.assert_array_equal(np.asarray(image), reference[("t", t)])


@pytest.mark.parametrize("name", [NASA, BUNNY_1S])
def test_cav_mae_positions_pick_its_frame_numbers(av_dir: Path, name: str) -> None:
    path = av_dir / name
    _, fps, *_, frames = EXPECTED[name]
    total = min(frames, int(fps * 10))
    indices = [max(int(i * (total / 10)) - 1, 0) for i in range(10)]
    _, reference = brute_force_frames(path, indices=indices)
    images = read_video_frames(path, num_frames=10, position="cav-mae")
    for index, image in zip(indices, images):
        np.testing.assert_array_equal(np.asarray(image), reference[("i", index)])


def test_hidden_unreferenced_frames_are_skipped_without_changing_any_frame(
    av_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NASA's H.264 has B-frames nothing references: each frame is still exactly the brute-force one (times on a
    frame and just before the next, each read from a fresh seek), and a far target decodes far fewer frames."""
    import equiav.video
    from equiav.video import _FrameCursor, _video_span, _video_stream

    path = av_dir / NASA
    fps = EXPECTED[NASA][1]
    all_times, _ = brute_force_frames(path, times=[9.0])
    times = [t + offset for t in all_times[150:180] for offset in (0.0, 0.9 / fps)]
    _, reference = brute_force_frames(path, times=times)
    for t in times:
        np.testing.assert_array_equal(np.asarray(read_video_frame_at(path, t)), reference[("t", t)])
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        cursor = _FrameCursor(container, stream, _video_span(container, stream), path)
        decode, decoded = equiav.video._decode_for_target, []
        monkeypatch.setattr(
            equiav.video,
            "_decode_for_target",
            lambda *args: (decoded.append(frame) or frame for frame in decode(*args)),
        )
        shown = cursor.frame_at(7.9)
        assert shown.time == max(t for t in all_times if t <= 7.9)
        cursor.close()
    assert len(decoded) < 0.6 * sum(t <= 7.9 for t in all_times)


def test_frame_reads_leave_nothing_to_the_garbage_collector(
    av_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cursor and its decoding generator, and the soundtrack's filter graph, are freed when the read returns:
    left to the garbage collector, PyAV objects were finalized after their file closed, which crashed data-loader
    workers forked afterwards."""
    import gc
    import weakref

    import equiav.video

    cursors = []

    class TrackedCursor(equiav.video._FrameCursor):
        def __init__(self, *args) -> None:
            super().__init__(*args)
            cursors.append(weakref.ref(self))

    graphs = []
    build = equiav.video._Resampler._build

    def tracked_build(resampler, frame):
        graph = build(resampler, frame)
        graphs.append(weakref.ref(graph))
        return graph

    monkeypatch.setattr(equiav.video, "_FrameCursor", TrackedCursor)
    monkeypatch.setattr(equiav.video._Resampler, "_build", tracked_build)
    gc.disable()
    try:
        read_video_frames(av_dir / NASA, times=[1.0, 5.0, 9.5])
        assert len(cursors) == 1 and cursors[0]() is None
        read_video_audio(av_dir / BUNNY, max_seconds=2.0)  # stops mid-stream, its resampler's graph unflushed
        assert len(graphs) == 1 and graphs[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("name", [NASA, BUNNY])
def test_explicit_times_in_any_order(av_dir: Path, name: str) -> None:
    path = av_dir / name
    duration = EXPECTED[name][0]
    rng = np.random.default_rng(7)
    times = [float(t) for t in rng.uniform(0, duration, 5)] + [0.0, duration, 1.25, 1.25]
    _, reference = brute_force_frames(path, times=times)
    images = read_video_frames(path, times=times)
    for t, image in zip(times, images):
        np.testing.assert_array_equal(np.asarray(image), reference[("t", t)])
    np.testing.assert_array_equal(np.asarray(read_video_frame_at(path, 1.25)), reference[("t", 1.25)])


def test_missing_and_corrupt_files(av_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    truncated_mp4 = tmp_path / "truncated.mp4"  # the index (moov) sits at the end of this file
    truncated_mp4.write_bytes((av_dir / NASA).read_bytes()[:300_000])
    for path in (missing, garbage, truncated_mp4, tmp_path):
        for read in (probe_video, read_video_audio, read_video_frames):
            with pytest.raises(VideoDecodeError, match=str(path.name)):
                read(path)


def test_truncated_webm_is_detected_past_its_cut(av_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.webm"
    path.write_bytes((av_dir / BUNNY).read_bytes()[:600_000])  # about the first 13 s of 30 s
    with pytest.raises(VideoDecodeError, match="truncated"):
        read_video_frames(path)
    _, reference = brute_force_frames(av_dir / BUNNY, times=[2.0])
    np.testing.assert_array_equal(np.asarray(read_video_frame_at(path, 2.0)), reference[("t", 2.0)])


def test_missing_streams(av_dir: Path, tmp_path: Path) -> None:
    video_only = remux(av_dir / NASA, tmp_path / "video_only.mp4", "video")
    audio_only = remux(av_dir / NASA, tmp_path / "audio_only.m4a", "audio")
    assert not probe_video(video_only)["has_audio"]
    assert not probe_video(audio_only)["has_video"]
    with pytest.raises(VideoDecodeError, match="video_only.mp4 has no audio stream"):
        read_video_audio(video_only)
    with pytest.raises(VideoDecodeError, match="audio_only.m4a has no video stream"):
        read_video_frames(audio_only)
    assert len(read_video_audio(audio_only)) == 208896


def test_invalid_arguments(av_dir: Path) -> None:
    path = av_dir / BUNNY_1S
    bad_calls = [
        lambda: read_video_frames(path, times=[1.5]),
        lambda: read_video_frames(path, times=[-0.1]),
        lambda: read_video_frames(path, times=[math.nan]),
        lambda: read_video_frames(path, times=[]),
        lambda: read_video_frames(path, num_frames=0),
        lambda: read_video_frames(path, position="end"),
        lambda: read_video_audio(path, sample_rate=0),
        lambda: read_video_audio(path, downmix="left"),
        lambda: read_video_audio(path, max_seconds=0),
        lambda: read_video_audio(path, max_seconds=math.inf),
    ]
    for call in bad_calls:
        with pytest.raises(InvalidInputError):
            call()


def test_missing_pyav_names_the_extra(av_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r'pip install "equiav\[video\]"'):
        probe_video(av_dir / NASA)
