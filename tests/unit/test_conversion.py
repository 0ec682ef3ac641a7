"""Conversion options: validated against what each target's encoder takes, mapped to ffmpeg
arguments by our code (nothing a user types becomes an ffmpeg option), part of the dedupe key."""

from __future__ import annotations

import pytest

from batchscribe.common.conversion import TARGETS, ConversionOptions, ffmpeg_args, is_conversion
from batchscribe.common.errors import ConfigError
from batchscribe.common.media import media_arg
from batchscribe.common.models import TranscriptionOptions, job_key, options_from_dict


@pytest.mark.parametrize("kwargs, said", [
    ({"target": "mp4"}, "--to must be one of"),
    ({"target": "mp3", "bitrate": "999k"}, "between 8k and 320k"),
    ({"target": "mp3", "bitrate": "fast"}, "must look like 192k"),
    ({"target": "wav", "bitrate": "128k"}, "lossless"),
    ({"target": "opus", "sample_rate": 44100}, "not one opus can encode"),
    ({"target": "wav", "sample_rate": 4000}, "8000–192000"),
    ({"target": "mp3", "channels": 6}, "between 1 and 2"),
    ({"target": "flac", "channels": 0}, "between 1 and 8"),
])
def test_options_an_encoder_cannot_take_are_refused(kwargs: dict[str, object], said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        ConversionOptions(**kwargs)  # type: ignore[arg-type]


def test_bitrates_are_normalised_and_every_option_changes_the_key() -> None:
    assert ConversionOptions("mp3", "192000").bitrate == "192k" == ConversionOptions("mp3", "192K").bitrate
    variants = [ConversionOptions("mp3"), ConversionOptions("mp3", "128k"), ConversionOptions("mp3", None, 16000),
                ConversionOptions("mp3", None, None, 1), ConversionOptions("m4a")]
    keys = {job_key("ab" * 32, v) for v in variants}
    assert len(keys) == len(variants)
    assert job_key("ab" * 32, TranscriptionOptions()) not in keys  # the two kinds never share a job


def test_options_round_trip_as_their_kind() -> None:
    options = ConversionOptions("opus", "64k", 16000, 1)
    assert is_conversion(options.to_dict()) and not is_conversion(TranscriptionOptions().to_dict())
    assert options_from_dict(options.to_dict()) == options
    assert options_from_dict(TranscriptionOptions(language="de-DE").to_dict()) == TranscriptionOptions("de-DE")


@pytest.mark.parametrize("target", list(TARGETS))
def test_ffmpeg_arguments_come_from_our_table_and_paths_are_files(target: str) -> None:
    spec = TARGETS[target]
    source, out = media_arg("/in/-y.mp4"), media_arg("/out/http:x.mp3")
    args = ffmpeg_args(ConversionOptions(target, channels=1), source, out)
    assert args[:2] == ["-i", "file:/in/-y.mp4"] and args[-1] == "file:/out/http:x.mp3"
    assert args[args.index("-c:a") + 1] == spec.codec and args[args.index("-f") + 1] == spec.muxer
    assert args[args.index("-map") + 1] == "0:a:0" and "-vn" in args  # the first audio stream only
    assert args[args.index("-ac") + 1] == "1"
