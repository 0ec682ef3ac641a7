"""Media conversion (`batchscribe convert`): the targets, their options, and the ffmpeg arguments.

Users choose a target and a few options; this module validates them and maps them to ffmpeg
arguments. Nothing a user types reaches ffmpeg's command line as an option: inputs and outputs are
given as ``file:`` paths (`common.media.media_arg`), so a name like ``-y.mp4`` or ``http:x.mp4``
is a file name and nothing else.

Every target is audio: the input's first audio stream is kept, video, subtitles and data streams
are dropped (the Azure Batch tutorial's ``ffmpeg -i X.mp4 X.mp3``). Outputs are bit-exact (no
encoder version tag), so the same input and options give the same bytes on every worker.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from batchscribe.common.errors import ConfigError

# Sample rates each encoder accepts (ffmpeg's own lists for libmp3lame, aac and libopus).
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_PCM_RATES = range(8000, 192001)  # any rate from 8 kHz to 192 kHz


@dataclass(frozen=True)
class Target:
    """One output format: its file extension, muxer, encoder and what the encoder accepts."""

    name: str
    extension: str
    muxer: str
    codec: str
    rates: tuple[int, ...] | range
    max_channels: int
    bitrates: tuple[int, int] | None  # (lowest, highest) kbit/s; None: a lossless codec


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("mp3", "mp3", "mp3", "libmp3lame", _MP3_RATES, 2, (8, 320)),
    Target("m4a", "m4a", "ipod", "aac", _AAC_RATES, 8, (16, 512)),
    Target("aac", "aac", "adts", "aac", _AAC_RATES, 8, (16, 512)),
    Target("opus", "opus", "ogg", "libopus", _OPUS_RATES, 2, (6, 510)),
    Target("flac", "flac", "flac", "flac", _PCM_RATES, 8, None),
    Target("wav", "wav", "wav", "pcm_s16le", _PCM_RATES, 8, None),
)}
_BITRATE_RE = re.compile(r"^(\d{1,7})(k?)$", re.I)


@dataclass(frozen=True)
class ConversionOptions:
    """What a conversion produces. All of it changes the output's bytes, so all of it is in the
    dedupe key (`cache_key`): the same content converted with the same options is converted once."""

    target: str = "mp3"
    bitrate: str | None = None  # e.g. "192k"; None: the encoder's default
    sample_rate: int | None = None  # None: the input's (or the nearest the encoder accepts)
    channels: int | None = None  # None: the input's (at most what the encoder accepts)
    kind: str = "convert"  # tells a conversion's options apart from a transcription's anywhere

    def __post_init__(self) -> None:
        target = TARGETS.get(self.target)
        if target is None:
            raise ConfigError(f"--to must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.bitrate is not None:
            object.__setattr__(self, "bitrate", _bitrate(target, self.bitrate))
        if self.sample_rate is not None and self.sample_rate not in target.rates:
            allowed = (f"{target.rates[0]}–{target.rates[-1]}" if target.rates is _PCM_RATES
                       else ", ".join(map(str, target.rates)))
            raise ConfigError(f"--sample-rate {self.sample_rate} is not one {target.name} can encode "
                              f"(it takes {allowed} Hz)")
        if self.channels is not None and not 1 <= self.channels <= target.max_channels:
            raise ConfigError(f"--channels must be between 1 and {target.max_channels} for {target.name}, "
                              f"got {self.channels}")

    @property
    def spec(self) -> Target:
        return TARGETS[self.target]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversionOptions:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def cache_key(self) -> str:
        """Short stable digest of the options, combined with the content hash into the job key."""
        raw = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def describe(self) -> str:
        """The options in words, for the submit line and `status` ("mp3, 192k, 16000 Hz, 1 ch")."""
        parts = [self.target, self.bitrate or "", f"{self.sample_rate} Hz" if self.sample_rate else "",
                 f"{self.channels} ch" if self.channels else ""]
        return ", ".join(p for p in parts if p)


def _bitrate(target: Target, text: str) -> str:
    """`text` as ffmpeg's ``-b:a`` value (``192k``), within what the encoder takes."""
    if target.bitrates is None:
        raise ConfigError(f"--bitrate does not apply to {target.name} (a lossless format)")
    match = _BITRATE_RE.match(text.strip())
    if not match:
        raise ConfigError(f"--bitrate must look like 192k (kilobits per second), got {text!r}")
    kbits = int(match.group(1)) if match.group(2) else int(match.group(1)) // 1000
    low, high = target.bitrates
    if not low <= kbits <= high:
        raise ConfigError(f"--bitrate for {target.name} must be between {low}k and {high}k, got {text!r}")
    return f"{kbits}k"


def is_conversion(options: dict[str, Any]) -> bool:
    """Whether a task's or a batch's options are a conversion's (else a transcription's)."""
    return options.get("kind") == "convert"


def ffmpeg_args(options: ConversionOptions, source: str, out: str) -> list[str]:
    """ffmpeg arguments (after the global ones) that convert `source` into `out`; both are
    ``file:`` paths. ``-progress`` reports the time written, which tells a file cut short."""
    target = options.spec
    args = ["-i", source, "-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", target.codec]
    if options.bitrate:
        args += ["-b:a", options.bitrate]
    if options.sample_rate:
        args += ["-ar", str(options.sample_rate)]
    if options.channels:
        args += ["-ac", str(options.channels)]
    args += ["-fflags", "+bitexact", "-flags:a", "+bitexact", "-progress", "pipe:1", "-nostats",
             "-f", target.muxer, out]
    return args
