"""Media for conversion tests, made with real ffmpeg from its test sources, and a count of ffmpeg runs.

`make_mp4` writes what the Azure Batch tutorial converts: an MP4 with video (testsrc) and AAC audio
(a sine tone); `video=False` an audio-only M4A-like MP4, `audio=False` a video-only one.
`FfmpegRuns` puts a wrapper named ``ffmpeg`` first on the PATH of the processes it is given to:
it appends one line per run to a file (its pid and $FFMPEG_RUNS_TAG), waits $FFMPEG_RUNS_DELAY
seconds (a slow conversion, to kill a worker in the middle of one), then executes the real ffmpeg,
so "zero ffmpeg runs" can be checked on a real pipeline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path


def make_mp4(path: Path, seconds: float, freq: float = 440.0, video: bool = True, audio: bool = True,
             faststart: bool = False) -> Path:
    """An MP4 of `seconds` (tiny video at 5 fps, 44.1 kHz stereo AAC)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc=size=96x64:rate=5:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=44100:duration={seconds}",
                 "-ac", "2", "-c:a", "aac", "-b:a", "96k"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if faststart:
        args += ["-movflags", "+faststart"]
    subprocess.run([*args, "-f", "mp4", f"file:{path}"], check=True)
    return path


def probe(path: Path) -> dict[str, object]:
    """What ffprobe says of a file: its format name, duration, and first audio stream's codec,
    sample rate and channels."""
    out = subprocess.run(["ffprobe", "-v", "error", "-of", "json", "-show_entries",
                          "format=format_name,duration:stream=codec_type,codec_name,sample_rate,channels",
                          f"file:{path}"], check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    audio = next((s for s in info.get("streams", []) if s.get("codec_type") == "audio"), {})
    return {"format": info["format"]["format_name"], "duration": float(info["format"]["duration"]),
            "codec": audio.get("codec_name"), "sample_rate": int(audio.get("sample_rate") or 0),
            "channels": int(audio.get("channels") or 0), "video": any(
                s.get("codec_type") == "video" for s in info.get("streams", []))}


class FfmpegRuns:
    """A counting ``ffmpeg`` first on a PATH (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        real = shutil.which("ffmpeg")
        assert real, "ffmpeg is missing: run scripts/setup"
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = folder / "ffmpeg-runs.log"
        self.log.touch()
        wrapper = self.bin / "ffmpeg"
        wrapper.write_text(f'#!/bin/sh\necho "$$ ${{FFMPEG_RUNS_TAG:-}}" >> "{self.log}"\n'
                           f'sleep "${{FFMPEG_RUNS_DELAY:-0}}" </dev/null >/dev/null 2>&1\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment entries that put the wrapper first (for `cli_env(**…)`)."""
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", **extra}

    def count(self, tag: str | None = None) -> int:
        lines = self.log.read_text().splitlines()
        return sum(1 for line in lines if tag is None or line.split(" ", 1)[-1] == tag)
