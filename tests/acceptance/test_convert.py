"""`batchscribe convert` as a user runs it: MP4s (video + audio) to MP3 on one machine, through two
worker VMs, and through a plain `celery worker -Q convert`; corrupt, cut-short and video-only inputs
fail alone with ffmpeg's reason; byte-identical inputs are converted once; converting again runs no
ffmpeg; a full disk is a transient error, retried. ffmpeg runs are counted on the real pipeline
(`tests.support.media.FfmpegRuns`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.private_redis import PrivateRedis
from tests.conftest import StartWorker
from tests.support.cli import ROOT, cli_env, run_cli
from tests.support.media import FfmpegRuns, make_mp4, probe

CONVERTER_ONLY = "convert:\n  engine: ffmpeg\n  concurrency: 1\n"


def media_folder(root: Path) -> dict[str, float]:
    """Inputs of every kind under `root`; returns the good ones' durations by output name."""
    make_mp4(root / "talk1.mp4", 2.0, 300)
    make_mp4(root / "sub" / "talk2.mp4", 3.0, 500, faststart=True)
    shutil.copy(root / "talk1.mp4", root / "copy of talk1.mp4")  # the same bytes: converted once
    make_mp4(root / "-y.mp4", 1.0, 700)  # a name ffmpeg must not take for an option
    make_mp4(root / "silent.mp4", 1.0, audio=False)  # video only
    whole = (root / "sub" / "talk2.mp4").read_bytes()  # index first (faststart): cut, it looks whole
    (root / "cut.mp4").write_bytes(whole[: len(whole) // 3])
    (root / "notes.txt").write_text("not media\n")
    return {"talk1.mp3": 2.0, "sub/talk2.mp3": 3.0, "copy of talk1.mp3": 2.0, "-y.mp3": 1.0}


def failure(out: Path, name: str) -> dict[str, str]:
    record: dict[str, str] = json.loads((out / f"{name}.failed.json").read_text())
    return record


def check_outputs(out: Path, good: dict[str, float], codec: str = "mp3") -> None:
    for name, seconds in good.items():
        info = probe(out / name)
        assert info["codec"] == codec and not info["video"], info
        assert abs(float(info["duration"]) - seconds) < 0.15, (name, info)  # type: ignore[arg-type]
    assert not list(out.rglob(".bs-*")), "no temp file is left behind"


def test_mp4s_become_mp3s_on_one_machine_once_each(tmp_path: Path, short_tmp: Path) -> None:
    good = media_folder(tmp_path / "in")
    runs = FfmpegRuns(tmp_path)
    env = runs.env(XDG_STATE_HOME=str(short_tmp))
    out = tmp_path / "out"
    first = run_cli("convert", str(tmp_path / "in"), "--to", "mp3", "--bitrate", "64k", "--out", str(out), **env)
    assert first.returncode == 1, first.stderr  # two inputs cannot be converted
    check_outputs(out, good)
    assert probe(out / "talk1.mp3")["channels"] == 2
    assert (out / "talk1.mp3").read_bytes() == (out / "copy of talk1.mp3").read_bytes()
    assert runs.count() == 4, "talk1 (and its copy), talk2, -y, and cut, which decodes short"
    assert failure(out, "silent.mp3")["FailureReason"] == "no audio stream"
    cut = failure(out, "cut.mp3")
    assert cut["ErrorClass"] == "permanent" and cut["FailureReason"].startswith("truncated MP4"), cut
    assert "1 duplicate(s)" in first.stderr and "1 skipped" in first.stderr, first.stderr
    stats = json.loads((out / "run_summary.json").read_text())["overall_summary"]["file_stats"]
    assert (stats["passed"], stats["failed"], stats["total"]) == (4, 2, 6)
    assert "Traceback" not in first.stderr

    (tmp_path / "in" / "cut.mp4").unlink()  # (a file that failed in a worker would be tried again)
    again = run_cli("convert", str(tmp_path / "in"), "--to", "mp3", "--bitrate", "64k", "--out", str(out), **env)
    assert again.returncode == 1 and "4 from cache" in again.stderr, again.stderr
    assert runs.count() == 4, "converting again into the same folder runs no ffmpeg"

    (out / "-y.mp3").unlink()  # a stored copy that is gone is converted again, and only it
    third = run_cli("convert", str(tmp_path / "in"), "--to", "mp3", "--bitrate", "64k", "--out", str(out), **env)
    assert third.returncode == 1 and "1 queued" in third.stderr, third.stderr
    assert runs.count() == 5
    check_outputs(out, good)

    mono = run_cli("convert", str(tmp_path / "in" / "talk1.mp4"), "--to", "opus", "--channels", "1",
                   "--out", str(tmp_path / "opus"), **env)
    assert mono.returncode == 0, mono.stderr
    info = probe(tmp_path / "opus" / "talk1.opus")
    assert (info["codec"], info["channels"], info["sample_rate"]) == ("opus", 1, 48000)


def test_bad_options_are_refused_before_anything_runs(tmp_path: Path, short_tmp: Path) -> None:
    make_mp4(tmp_path / "in" / "a.mp4", 1.0)
    for args, said in ((["--to", "mp3", "--bitrate", "999k"], "between 8k and 320k"),
                       (["--to", "flac", "--bitrate", "128k"], "lossless"),
                       (["--to", "mp3", "--sample-rate", "96000"], "not one mp3 can encode"),
                       (["--to", "opus", "--channels", "6"], "between 1 and 2")):
        result = run_cli("convert", str(tmp_path / "in"), *args, "--out", str(tmp_path / "out"),
                         XDG_STATE_HOME=str(short_tmp))
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_two_worker_vms_share_a_conversion_batch(redis_server: PrivateRedis, start_worker: StartWorker,
                                                 tmp_path: Path) -> None:
    config = tmp_path / "converters.yaml"
    config.write_text(CONVERTER_ONLY)
    runs = FfmpegRuns(tmp_path)
    for host in ("vm1", "vm2"):
        start_worker(config, hostname=host, **runs.env(FFMPEG_RUNS_TAG=host))
    inputs = tmp_path / "in"
    durations = {f"t{i}.wav": 1.0 + 0.5 * (i % 3) for i in range(6)}
    for i, name in enumerate(durations):
        make_mp4(inputs / name.replace(".wav", ".mp4"), durations[name], 200 + 50 * i)
    out = tmp_path / "out"
    result = run_cli("convert", str(inputs), "--to", "wav", "--sample-rate", "16000", "--channels", "1",
                     "--out", str(out), "--wait", broker=redis_server.url, timeout=120)
    assert result.returncode == 0, result.stderr
    check_outputs(out, durations, codec="pcm_s16le")
    assert {probe(out / n)["sample_rate"] for n in durations} == {16000}
    assert runs.count() == len(durations), "each file converted once"
    assert runs.count("vm1") >= 1 and runs.count("vm2") >= 1, "both VMs took files"


def test_a_plain_celery_worker_on_the_convert_queue_converts(tmp_path: Path) -> None:
    make_mp4(tmp_path / "in" / "clip.mp4", 1.5)
    with PrivateRedis(data_dir=tmp_path / "redis") as redis_server:
        env = cli_env(redis_server.url)
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "batchscribe.worker.app", "worker",
                                   "-Q", "convert", "-c", "1", "-P", "threads", "-n", "convert@%h",
                                   "--without-gossip", "--without-mingle", "-l", "INFO"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        try:
            result = run_cli("convert", str(tmp_path / "in"), "--to", "m4a", "--out", str(tmp_path / "out"),
                             "--wait", broker=redis_server.url, timeout=120)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    check_outputs(tmp_path / "out", {"clip.m4a": 1.5}, codec="aac")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: ffmpeg's output does not fit in it."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_transient_and_retried_then_the_file_fails_alone(tmp_path: Path, short_tmp: Path,
                                                                       full_disk: Path) -> None:
    make_mp4(tmp_path / "in" / "long.mp4", 30.0)  # ~0.5 MB of WAV: more than the scratch disk holds
    make_mp4(tmp_path / "in" / "short.mp4", 0.5)
    out = tmp_path / "out"
    # One converter slot: two at once share the tiny disk, and the short file's attempts could meet
    # the long one's and fail with it (seen on a loaded machine).
    result = run_cli("convert", str(tmp_path / "in"), "--to", "wav", "--out", str(out), "--concurrency", "1",
                     XDG_STATE_HOME=str(short_tmp), BATCHSCRIBE_SCRATCH=str(full_disk),
                     BATCHSCRIBE_BACKOFF_BASE="0.2", BATCHSCRIBE_TRANSIENT_ATTEMPTS="2", timeout=120)
    assert result.returncode == 1, result.stderr
    record = failure(out, "long.wav")
    assert record["ErrorClass"] == "transient", record
    assert "No space left on device" in record["FailureReason"] and "after 2 attempts" in record["FailureReason"]
    check_outputs(out, {"short.wav": 0.5}, codec="pcm_s16le")
    assert not [p for p in full_disk.rglob("*") if p.is_file()], "the scratch space is left empty"


def test_status_retry_failed_and_cancel_work_for_conversion_batches(redis_server: PrivateRedis,
                                                                    start_worker: StartWorker,
                                                                    tmp_path: Path) -> None:
    inputs, out = tmp_path / "in", tmp_path / "out"
    make_mp4(inputs / "good.mp4", 1.0)
    (inputs / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)  # not a whole MP4
    waiting = run_cli("convert", str(inputs), "--to", "mp3", "--out", str(tmp_path / "never"),
                      broker=redis_server.url)  # no converter runs yet: it waits, and we are told
    assert waiting.returncode == 0 and "no live worker converts media" in waiting.stderr, waiting.stderr
    unstarted = waiting.stdout.strip().splitlines()[-1]
    cancelled = run_cli("cancel", unstarted, broker=redis_server.url)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stderr, cancelled.stderr
    config = tmp_path / "converters.yaml"
    config.write_text(CONVERTER_ONLY)
    start_worker(config)
    first = run_cli("convert", str(inputs), "--to", "mp3", "--out", str(out), "--wait", broker=redis_server.url)
    assert first.returncode == 1, first.stderr
    batch = first.stderr.split("batch ", 1)[1].split(":", 1)[0]
    status = run_cli("status", batch, broker=redis_server.url)
    assert status.returncode == 1 and "converted" in status.stdout and "bad.mp4" in status.stdout, status.stdout
    assert (out / "bad.mp3.failed.json").exists()
    make_mp4(inputs / "bad.mp4", 1.0, 880)  # the file is fixed
    again = run_cli("retry-failed", batch, "--wait", broker=redis_server.url)
    assert again.returncode == 0, again.stderr
    check_outputs(out, {"good.mp3": 1.0, "bad.mp3": 1.0})
    assert not (out / "bad.mp3.failed.json").exists(), "the old failure record is gone"
    assert not list((tmp_path / "never").glob("*.mp3")), "the cancelled batch converted nothing"
