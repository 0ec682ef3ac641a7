"""Synthetic speech for tests, benchmarks and the shipped samples: espeak-ng, then ffmpeg.

espeak-ng is deterministic for a given version and voice, and the encoders run bit-exact with no
metadata, so the same call makes the same bytes (tools/make_samples.py relies on that).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

# Output extension -> ffmpeg codec arguments. Bit rates are low: samples must stay small.
CODECS: dict[str, tuple[str, ...]] = {
    "wav": ("-c:a", "pcm_s16le"),
    "mp3": ("-c:a", "libmp3lame", "-b:a", "32k"),
    "m4a": ("-c:a", "aac", "-b:a", "32k"),
    "flac": ("-c:a", "flac"),
    "ogg": ("-c:a", "libvorbis", "-q:a", "0"),
    "opus": ("-c:a", "libopus", "-b:a", "24k"),
}
BITEXACT = ("-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact")


def espeak_wav(text: str, out: Path, voice: str = "en-us", words_per_minute: int = 150) -> Path:
    """espeak-ng's own output: 22050 Hz mono 16-bit WAV."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(out), text],
                   check=True, capture_output=True)
    return out


def synthesize(text: str, out: Path, rate: int = 16000, channels: int = 1, voice: str = "en-us",
               words_per_minute: int = 150, codec: Sequence[str] | None = None) -> Path:
    """Speak `text` into `out`; the codec follows the extension (see CODECS) unless given."""
    codec = codec or CODECS[out.suffix.lstrip(".").lower()]
    raw = espeak_wav(text, out.with_name(out.name + ".espeak.wav"), voice, words_per_minute)
    try:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(raw), "-ar", str(rate),
                        "-ac", str(channels), *codec, *BITEXACT, str(out)],
                       check=True, capture_output=True)
    finally:
        raw.unlink(missing_ok=True)
    return out


def video_with_speech(text: str, out: Path, audio: bool = True) -> Path:
    """A small MP4 (H.264 test pattern) carrying speech, or no audio stream at all."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", "testsrc=size=160x120:rate=10:duration=3"]
    raw = None
    if audio:
        raw = espeak_wav(text, out.with_name(out.name + ".espeak.wav"))
        cmd += ["-i", str(raw), "-shortest", "-c:a", "aac", "-b:a", "32k"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *BITEXACT, str(out)]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    finally:
        if raw is not None:
            raw.unlink(missing_ok=True)
    return out
