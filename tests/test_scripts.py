"""The developer scripts: the demo set, the unseen-voice check and the leave-one-speaker-out selection."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import loso  # noqa: E402
import make_demo_data  # noqa: E402
import voice_check  # noqa: E402


def test_voice_check_uses_other_voices_than_the_demo_set():
    clips = voice_check.clip_commands()
    names = [name for name, _, _, _ in clips]
    assert len(clips) == 140 and len(set(names)) == 140
    assert sorted({digit for _, digit, _, _ in clips}) == list(range(10))
    demo_voices = {voice for _, voice, _, _ in make_demo_data.VOICES}
    check_voices = {voice for _, voice, _, _ in voice_check.ESPEAK_VOICES}
    assert len(check_voices) == 10 and not demo_voices & check_voices
    for _, digit, _, command in clips:
        assert command.count("{wav}") == 1 and make_demo_data.WORDS[digit] in command


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synthesized_clip_is_stored_like_fsdd(tmp_path):
    name, digit, voice, command = voice_check.clip_commands()[0]
    speech = make_demo_data.synthesize(command)
    assert speech.ndim == 1 and 0.69 < abs(speech).max() <= 0.7 + 1e-6
    assert 0.2 * make_demo_data.SAMPLE_RATE < len(speech) < 1.5 * make_demo_data.SAMPLE_RATE
    path = tmp_path / name
    soundfile.write(path, speech, make_demo_data.SAMPLE_RATE, subtype="PCM_16")
    assert soundfile.info(path).samplerate == 8000 and digit == 0 and voice.startswith("espeak")


def test_loso_table_gives_mean_and_spread_over_the_folds_per_step(tmp_path):
    assert loso.parse_candidate("warp=--data.audio-freq-warp 0.08") == (
        "warp",
        ("--data.audio-freq-warp", "0.08"),
    )
    assert loso.parse_candidate("base=") == ("base", ())
    with pytest.raises(Exception, match="NAME=OPTIONS"):
        loso.parse_candidate("no-equals-sign")
    folds = [loso.Fold("base", (), speaker, tmp_path / speaker) for speaker in ("a", "b", "c")]
    results = [[{"step": 10, "r1_audio_to_image": a2i, "r1_image_to_audio": 0.5}] for a2i in (0.6, 0.7, 0.8)]
    for fold, records in zip(folds, results):
        fold.directory.mkdir()
        lines = [{"step": 10, "split": "train", "loss": 1.0}, {**records[0], "split": "val"}]
        (fold.directory / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
        assert loso.validations(fold.directory) == [{**records[0], "split": "val"}]
    row = loso.table(folds, results).splitlines()[-1]
    assert row.startswith(
        "| base | 10 | 0.700 ± 0.100 | 0.500 ± 0.000 | a 0.60/0.50, b 0.70/0.50, c 0.80/0.50 |"
    )
