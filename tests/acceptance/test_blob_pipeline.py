"""Inputs and outputs in Azure Blob storage (Azurite), as a user runs it: MP4s in one container
converted to MP3s in another by two worker VMs with a consumer SIGKILLed mid-batch (nothing lost,
nothing duplicated, its scratch removed by its restart); recordings in a container transcribed into
another; a SAS typed in a URL reaching no Redis, log or output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.azurite import Azurite, NewContainer
from tests.support.cli import BIN, cli_env, run_cli
from tests.support.cluster import (
    SHORT_LEASES,
    Cluster,
    EndpointSpec,
    duration_emulator,
    make_audio,
    write_endpoints,
)
from tests.support.media import FfmpegRuns, make_mp4, probe
from tests.support.poll import wait_for

CONVERTER = "convert:\n  engine: ffmpeg\n  concurrency: 2\n"


def download(azurite: Azurite, container: str, name: str, folder: Path) -> Path:
    path = folder / name.replace("/", "__")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(azurite.content(container, name))
    return path


def test_a_container_of_mp4s_becomes_mp3s_in_another_with_a_worker_killed_midway(
        redis_server: PrivateRedis, store: StateStore, azurite: Azurite, new_container: NewContainer,
        tmp_path: Path) -> None:
    inputs, outputs = new_container("videos"), new_container("audio")
    durations = {f"talks/t{i}.mp4": 1.0 + 0.25 * i for i in range(8)}
    for i, (name, seconds) in enumerate(durations.items()):
        azurite.upload(inputs, name, make_mp4(tmp_path / "made" / name, seconds, 250 + 40 * i))
    azurite.upload(inputs, "talks/copy of t0.mp4", (tmp_path / "made" / "talks" / "t0.mp4").read_bytes())
    azurite.upload(inputs, "talks/silent.mp4", make_mp4(tmp_path / "made" / "silent.mp4", 1.0, audio=False))
    azurite.upload(inputs, "talks/readme.txt", b"not media")
    config = tmp_path / "converters.yaml"
    config.write_text(CONVERTER)
    runs = FfmpegRuns(tmp_path)
    blob_env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    with Cluster(tmp_path, redis_server, store) as cluster:
        cluster.worker_env.update(blob_env)
        vms = {}
        for host in ("vm1", "vm2"):
            cluster.worker_env.update(runs.env(FFMPEG_RUNS_TAG=host, FFMPEG_RUNS_DELAY="1",
                                               BATCHSCRIBE_SCRATCH=str(tmp_path / f"scratch-{host}")))
            vms[host] = cluster.start_vm(config, host)
        for vm in vms.values():
            cluster.wait_consumers(vm, ["convert"])
        producer = subprocess.Popen(
            [str(BIN), "convert", f"az://{inputs}/talks", "--to", "mp3", "--out", f"az://{outputs}/mp3", "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cli_env(redis_server.url, **SHORT_LEASES, **blob_env))
        wait_for(lambda: runs.count("vm1") >= 1, 60, "vm1 to start converting")
        victim = vms["vm1"].consumers()["convert"]
        os.kill(victim, signal.SIGKILL)  # the consumer dies mid-conversion; its supervisor restarts it
        _, err = producer.communicate(timeout=120)
    assert producer.returncode == 1, err  # the video-only input cannot be converted
    names = set(azurite.names(outputs, "mp3/"))
    expected = {f"mp3/{n[len('talks/'):-4]}.mp3" for n in durations} | {"mp3/copy of t0.mp3"}
    assert names == expected | {"mp3/silent.mp3.failed.json", "mp3/run_summary.json"}, names
    for name in expected:
        source = "talks/t0.mp4" if "copy of" in name else f"talks/{name[4:-4]}.mp4"
        info = probe(download(azurite, outputs, name, tmp_path / "got"))
        assert info["codec"] == "mp3" and abs(float(info["duration"]) - durations[source]) < 0.15, (name, info)  # type: ignore[arg-type]
    failed = json.loads(azurite.content(outputs, "mp3/silent.mp3.failed.json"))
    assert failed["FailureReason"] == "no audio stream" and failed["InputUrl"] == f"az://{inputs}/talks/silent.mp4"
    unique, slots = len(durations), 2  # the killed consumer ran at most its 2 slots' files: those run again
    assert unique <= runs.count() <= unique + slots, "each file converted once; the killed ones once more"
    assert int(store.endpoint_stats("convert").get("failed_crash") or 0) <= slots, "crashes: the kill's only"
    leftovers = [p for host in ("vm1", "vm2") for p in (tmp_path / f"scratch-{host}").rglob("*") if p.is_file()]
    assert not leftovers, f"scratch left behind: {leftovers}"


def test_recordings_in_a_container_are_transcribed_into_another(
        azurite: Azurite, new_container: NewContainer, tmp_path: Path, short_tmp: Path) -> None:
    audio_in, text_out = new_container("calls"), new_container("transcripts")
    made = make_audio(tmp_path / "made", [1.0, 1.5, 2.0], prefix="call")
    for name in made.durations:
        azurite.upload(audio_in, f"2026/{name}", (made.folder / name).read_bytes())
    emulator = duration_emulator(1, 50.0, tmp_path / "emulator.log")
    config = write_endpoints(tmp_path / "endpoints.yaml", [EndpointSpec("emu", emulator.ports[0], concurrency=2)])
    with emulator:
        result = run_cli("run", f"az://{audio_in}/2026", "--out", f"az://{text_out}/json", "--config", str(config),
                         "--srt", AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string,
                         TMPDIR=str(short_tmp))
    assert result.returncode == 0, result.stderr
    names = set(azurite.names(text_out))
    for name, seconds in made.durations.items():
        stem = name.replace(".wav", "_wav")
        assert {f"json/{stem}.json", f"json/{stem}.srt"} <= names, names
        entry = json.loads(azurite.content(text_out, f"json/{stem}.json"))["AudioFileResults"][0]
        assert entry["TranscriptionStatus"] == "Succeeded"
        assert entry["AudioFileUrl"] == f"az://{audio_in}/2026/{name}" and entry["AudioFileName"] == name
        assert f"duration {seconds:.2f} seconds" in entry["CombinedResults"][0]["Display"]
    summary = json.loads(azurite.content(text_out, "json/run_summary.json"))["overall_summary"]
    assert summary["file_stats"]["passed"] == len(made.durations)


def test_a_sas_typed_in_a_url_reaches_no_redis_log_or_output(
        azurite: Azurite, new_container: NewContainer, tmp_path: Path, short_tmp: Path) -> None:
    inputs, outputs = new_container("in"), new_container("out")
    azurite.upload(inputs, "a.mp4", make_mp4(tmp_path / "a.mp4", 1.0))
    read, write = azurite.container_sas(inputs, "rl"), azurite.container_sas(outputs, "racwdl")
    secrets = [part for sas in (read, write) for part in sas.split("&") if part.startswith("sig=")]
    result = run_cli("convert", azurite.url(inputs, sas=read), "--to", "flac",
                     "--out", azurite.url(outputs, "flac", sas=write), XDG_STATE_HOME=str(short_tmp))
    assert result.returncode == 0, result.stderr
    assert azurite.names(outputs) == ["flac/a.flac", "flac/run_summary.json"]
    seen = [result.stdout, result.stderr, *(azurite.content(outputs, n).decode("latin-1")
                                            for n in azurite.names(outputs))]
    seen += [p.read_bytes().decode("latin-1") for p in short_tmp.rglob("*") if p.is_file()]  # Redis's AOF, logs
    for sig in secrets:
        value = sig.split("=", 1)[1]
        assert not any(value in text or sig in text for text in seen), "a SAS signature leaked"
    assert any("appendonly" in p.name or p.suffix == ".aof" for p in short_tmp.rglob("*")), "Redis's data was read"
