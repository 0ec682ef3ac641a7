"""Regenerate samples/ (the speech the quick start transcribes) byte for byte.

    .venv/bin/python tools/make_samples.py [--out samples]

Each sample is one espeak-ng sentence in a different container, rate and channel layout, so the
quick start exercises the ffmpeg normalisation too. Output is deterministic for a given espeak-ng
and ffmpeg version (bit-exact encoders, no metadata); transcripts.json maps file name -> text.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support is a dev-only package, not installed

from tests.support.speech import synthesize  # noqa: E402

# name, rate, channels, text. The 44.1 kHz stereo WAV is IMA ADPCM: PCM would be 176 KB a second.
SAMPLES = (
    ("meeting_8k_mono.wav", 8000, 1, "Our meeting starts at ten o'clock in the main conference room."),
    ("support_44k_stereo.wav", 44100, 2, "Please call the support line on weekdays."),
    ("fox.mp3", 22050, 1, "The quick brown fox jumps over the lazy dog."),
    ("weather.m4a", 16000, 1, "The weather today will be sunny with a light breeze from the west."),
    ("order.flac", 16000, 1, "Thank you for calling. Your order has been shipped and will arrive on Monday."),
    ("review.ogg", 24000, 1, "Good morning everyone, thank you for joining the weekly project review."),
)
EXTRA_ARGS = {"support_44k_stereo.wav": ("-c:a", "adpcm_ima_wav")}


def make(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    for name, rate, channels, text in SAMPLES:
        synthesize(text, out / name, rate=rate, channels=channels, codec=EXTRA_ARGS.get(name))
    transcripts = {name: text for name, _, _, text in SAMPLES}
    (out / "transcripts.json").write_text(json.dumps(transcripts, indent=2) + "\n", encoding="utf-8")
    return transcripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "samples")
    args = parser.parse_args()
    make(args.out)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>8,}  {path.name}")
    print(f"{total:>8,}  total")


if __name__ == "__main__":
    main()
