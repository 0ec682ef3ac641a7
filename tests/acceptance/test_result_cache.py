"""The dedupe result cache on the output storage (common/cache.py) as a user meets it: transcripts
stored as entries beside the outputs (or in a blob prefix), Redis holding only a pointer to each.

Real parts: redis-server, `batchscribe worker` with its Celery consumer and the Speech SDK, the
emulator (duration-mode transcripts, its session count is the number of engine calls), `submit
--wait`, Azurite for a blob output.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

from batchscribe.common.cache import STORE_FOLDER, entry_location
from batchscribe.common.state import StateStore, unpack_result
from batchscribe.private_redis import PrivateRedis
from tests.conftest import StartWorker
from tests.support.azurite import Azurite, NewContainer
from tests.support.cli import run_cli
from tests.support.emulator import endpoints_yaml, running_emulator, tones

DURATIONS = [0.5, 0.7, 0.9]


def sessions(emu: object) -> int:
    return int(emu.stats(emu.ports[0])["sessions_total"])  # type: ignore[attr-defined]


def displays(out: Path, names: list[str]) -> dict[str, str]:
    """Each input's transcript text, from its output JSON in `out`."""
    found = {}
    for name in names:
        entry = json.loads((out / name.replace(".wav", "_wav.json")).read_text())["AudioFileResults"][0]
        assert entry["TranscriptionStatus"] == "Succeeded", entry
        found[name] = entry["CombinedResults"][0]["Display"]
    return found


def redis_values(store: StateStore) -> dict[str, bytes]:
    """Every key of Redis with all it holds (the members and fields of a collection joined), zlib
    values decompressed: where a transcript would be found if one were kept there."""
    r = store.redis
    found: dict[str, bytes] = {}
    for raw in r.scan_iter(count=1000):
        kind = r.type(raw).decode()
        if kind == "string":
            parts = [r.get(raw) or b""]
        elif kind == "hash":
            parts = [b for kv in r.hgetall(raw).items() for b in kv]
        elif kind == "list":
            parts = r.lrange(raw, 0, -1)
        elif kind == "set":
            parts = list(r.smembers(raw))
        elif kind == "zset":
            parts = r.zrange(raw, 0, -1)
        else:  # a stream
            parts = [b for _, fields in r.xrange(raw) for kv in fields.items() for b in kv]
        for i, part in enumerate(parts):
            try:
                parts[i] = zlib.decompress(part)
            except zlib.error:
                pass
        found[raw.decode()] = b"\n".join(parts)
    return found


def transcripts_in_redis(store: StateStore, texts: list[str]) -> list[str]:
    return sorted(key for key, value in redis_values(store).items()
                  if any(text.encode() in value for text in texts))


def pointer_of(store: StateStore, job: str) -> dict:
    return unpack_result(store.redis.get(store.keys.result(job)))


def jobs_by_name(store: StateStore, batch_id: str, count: int) -> dict[str, str]:
    return {Path(r.path).name: r.job for r in store.files(batch_id, range(count))}


def submit(store: StateStore, inputs: Path, out: Path | str, broker: str) -> tuple[str, str]:
    """`submit --wait`; (its batch id, its stderr)."""
    result = run_cli("submit", str(inputs), "--out", str(out), "--wait", broker=broker)
    assert result.returncode == 0, result.stderr
    return store.batch_ids(1)[0], result.stderr


def test_a_finished_batch_submitted_into_a_new_folder_is_read_from_the_store_without_an_engine_call(
        tmp_path: Path, redis_server: PrivateRedis, store: StateStore, start_worker: StartWorker) -> None:
    names = list(tones(tmp_path / "in", DURATIONS))
    (tmp_path / "in" / "copy.wav").write_bytes((tmp_path / "in" / names[0]).read_bytes())
    with running_emulator(transcribe="duration") as emu:
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"emu": emu.ports[0]}))
        first_out, second_out = tmp_path / "out1", tmp_path / "out2"
        batch, _ = submit(store, tmp_path / "in", first_out, redis_server.url)
        assert sessions(emu) == 3  # the copy is a duplicate: one engine call per unique content
        jobs = jobs_by_name(store, batch, 4)
        for name in names:  # each transcript is an entry in the output folder's store, as pointed at
            location = entry_location(str(first_out / STORE_FOLDER), jobs[name])
            data = Path(location).read_bytes()
            assert pointer_of(store, jobs[name]) == {"artifact": location, "size": len(data),
                                                     "sha256": hashlib.sha256(data).hexdigest()}
            assert json.loads(gzip.decompress(data))["phrases"], "the engine's phrases"

        _, said = submit(store, tmp_path / "in", second_out, redis_server.url)
        assert "0 queued" in said and "4 from cache" in said, said
        assert sessions(emu) == 3, "no engine call for a batch whose every file is cached"
    expected = displays(first_out, [*names, "copy.wav"])
    assert displays(second_out, [*names, "copy.wav"]) == expected
    assert all(text.startswith("duration ") for text in expected.values()), expected
    assert not (second_out / ".batchscribe").exists(), "hits read the first folder's store, write none"
    assert not transcripts_in_redis(store, list(expected.values())), "no transcript bytes in Redis"


def test_a_deleted_or_corrupted_entry_is_transcribed_again_and_written_back(
        tmp_path: Path, redis_server: PrivateRedis, store: StateStore, start_worker: StartWorker) -> None:
    names = list(tones(tmp_path / "in", DURATIONS))
    with running_emulator(transcribe="duration") as emu:
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"emu": emu.ports[0]}))
        batch, _ = submit(store, tmp_path / "in", tmp_path / "out1", redis_server.url)
        expected = displays(tmp_path / "out1", names)
        jobs = jobs_by_name(store, batch, 3)
        gone, corrupted = (Path(pointer_of(store, jobs[n])["artifact"]) for n in names[:2])
        gone.unlink()
        forged = {"phrases": [{"DisplayText": "forged", "Offset": 0, "Duration": 1}]}
        corrupted.write_bytes(gzip.compress(json.dumps(forged).encode()))  # valid, but not what was stored
        assert sessions(emu) == 3

        _, said = submit(store, tmp_path / "in", tmp_path / "out2", redis_server.url)
        assert "2 queued" in said and "1 from cache" in said, said
        assert sessions(emu) == 5, "one engine call for each entry that could not be trusted"
    assert displays(tmp_path / "out2", names) == expected, "the forged transcript reached no output"
    for name in names[:2]:  # written back (into the store of the batch that wanted it again), pointed at
        pointer = pointer_of(store, jobs[name])
        data = Path(pointer["artifact"]).read_bytes()
        assert pointer["sha256"] == hashlib.sha256(data).hexdigest() and pointer["size"] == len(data)
        assert pointer["artifact"].startswith(str(tmp_path / "out2" / STORE_FOLDER))


def test_an_unwritable_store_still_delivers_every_output_and_says_so_once(
        tmp_path: Path, redis_server: PrivateRedis, store: StateStore, start_worker: StartWorker) -> None:
    names = list(tones(tmp_path / "in", DURATIONS))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store should be\n")  # nothing can be created under it
    with running_emulator(transcribe="duration") as emu:
        vm = start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"emu": emu.ports[0]}),
                          BATCHSCRIBE_RESULT_STORE=str(blocked))
        batch, _ = submit(store, tmp_path / "in", tmp_path / "out", redis_server.url)
        assert sessions(emu) == 3
        texts = displays(tmp_path / "out", names)  # every output delivered all the same
        jobs = jobs_by_name(store, batch, 3)
        # done without a cached entry: once its inputs are delivered the job is retired, and with no
        # pointer to keep it is forgotten (the next submit claims it again)
        assert {store.job(j).get("state", "forgotten") for j in jobs.values()} <= {"done", "forgotten"}
        assert store.results(list(jobs.values())) == {}, "no pointer to an entry that was never written"
        warnings = [line for line in vm.log().splitlines() if "cannot write the result cache" in line]
        assert len(warnings) == 1, warnings
        assert str(blocked) in warnings[0] and "outputs are written all the same" in warnings[0]

        _, said = submit(store, tmp_path / "in", tmp_path / "again", redis_server.url)
        assert "3 queued" in said, said  # nothing was cached: transcribed again, correctly
        assert sessions(emu) == 6
    assert displays(tmp_path / "again", names) == texts


def test_a_blob_output_keeps_its_store_in_its_prefix(
        tmp_path: Path, redis_server: PrivateRedis, store: StateStore, start_worker: StartWorker,
        azurite: Azurite, new_container: NewContainer) -> None:
    names = list(tones(tmp_path / "in", DURATIONS))
    container = new_container("text")
    blob_env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    with running_emulator(transcribe="duration") as emu:
        start_worker(endpoints_yaml(tmp_path / "eps.yaml", {"emu": emu.ports[0]}), **blob_env)
        for prefix in ("first", "second"):
            result = run_cli("submit", str(tmp_path / "in"), "--out", f"az://{container}/{prefix}", "--wait",
                             broker=redis_server.url, **blob_env)
            assert result.returncode == 0, result.stderr
        assert sessions(emu) == 3, "the second batch is answered from the store in the blob prefix"
        assert "3 from cache" in result.stderr, result.stderr
    blobs = azurite.names(container)
    stored = sorted(n for n in blobs if n.startswith(f"first/{STORE_FOLDER}/"))
    assert len(stored) == 3 and all(n.endswith(".json.gz") for n in stored), blobs
    assert not [n for n in blobs if n.startswith("second/.batchscribe")], blobs
    texts = []
    for name in names:
        output = f"{name.replace('.wav', '_wav')}.json"
        first, second = (json.loads(azurite.content(container, f"{p}/{output}"))["AudioFileResults"][0]
                         for p in ("first", "second"))
        assert first["CombinedResults"] == second["CombinedResults"]
        texts.append(first["CombinedResults"][0]["Display"])
    assert not transcripts_in_redis(store, texts)
