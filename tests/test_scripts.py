"""The developer scripts that make the demo set and the unseen-voice check."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

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
