"""`batchscribe serve` as its users drive it: over real HTTP, with a real Redis, a real
`batchscribe worker` and the Speech SDK against the emulator.

Each test starts `batchscribe serve` as a subprocess on a free port (tests/support/api.py).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from batchscribe.common.queues import pool_queue
from batchscribe.common.state import StateStore
from batchscribe.private_redis import PrivateRedis
from tests.support.api import TOKEN, ApiServer, request
from tests.support.cli import run_cli
from tests.support.emulator import running_emulator, tone_wav
from tests.support.poll import wait_for


def emulator_config(tmp_path: Path, port: int, concurrency: int = 2) -> Path:
    config = tmp_path / "eps.yaml"
    config.write_text(f"emu:\n  host: 127.0.0.1\n  port: {port}\n  concurrency: {concurrency}\n  rtf: 1000\n")
    return config


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder the server may use (--allow-root), with inputs under in/."""
    path = tmp_path / "shared"
    (path / "in").mkdir(parents=True)
    return path


def serve(redis_server: PrivateRedis, root: Path, *args: str, **kw: object) -> ApiServer:
    return ApiServer(redis_server.url, "--allow-root", str(root), *args,
                     log_path=root.parent / "serve.log", **kw)  # type: ignore[arg-type]


def nothing_queued(store: StateStore) -> None:
    assert store.batch_ids() == []
    assert store.redis.llen(pool_queue("en-US")) == 0
    assert store.redis.keys(f"{store.keys.prefix}:job:*") == []


def test_submit_long_poll_list_files_report_and_results(tmp_path: Path, root: Path, redis_server: PrivateRedis,
                                                        store: StateStore, start_worker) -> None:
    for i, seconds in enumerate((1.5, 2.0, 2.5)):
        tone_wav(root / "in" / f"call{i}.wav", seconds)
    (root / "in" / "broken.wav").write_text("not audio")
    with running_emulator(rtf=0, transcribe="duration") as emu, serve(redis_server, root) as api:
        start_worker(emulator_config(tmp_path, emu.ports[0]))
        created = api("POST", "/batches", {"inputs": [str(root / "in")], "out": str(root / "out"),
                                           "options": {"language": "en-US", "nbest": 2, "txt": True},
                                           "displayName": "calls of Monday"})
        assert created.status == 201, created
        batch = created.body
        assert batch["status"] in ("queued", "running") and batch["displayName"] == "calls of Monday"
        assert created.headers["location"] == batch["self"] == f"{api.url}/batches/{batch['id']}"
        assert batch["submitted"] == {"files": 4, "queued": 3, "duplicates": 0, "attached": 0, "cached": 0,
                                      "unusable": 1}
        assert batch["options"]["nbest"] == 2 and batch["options"]["txt"] is True

        finished = api("GET", f"/batches/{batch['id']}?wait=120", timeout=150)
        assert finished.status == 200 and finished.body["status"] == "failed", finished  # finished, 1 failed
        assert finished.body["counts"] == {"total": 4, "queued": 0, "running": 0, "retrying": 0, "done": 3,
                                           "failed": 1, "cancelled": 0}
        assert finished.body["failures"] == {"permanent": 1} and finished.body["etaSeconds"] is None

        listed = api("GET", "/batches?top=1")
        assert [b["id"] for b in listed.body["values"]] == [batch["id"]] and listed.body["@nextLink"] is None

        first = api("GET", f"/batches/{batch['id']}/files?top=3")
        assert [f["index"] for f in first.body["values"]] == [0, 1, 2]
        rest = request("GET", first.body["@nextLink"])
        assert [f["index"] for f in rest.body["values"]] == [3] and rest.body["@nextLink"] is None
        failed = api("GET", f"/batches/{batch['id']}/files?state=failed")
        assert [f["input"] for f in failed.body["values"]] == [str(root / "in" / "broken.wav")]
        assert failed.body["values"][0]["errorClass"] == "permanent"

        done = next(f for f in first.body["values"] + rest.body["values"] if f["status"] == "done")
        document = request("GET", done["self"])
        assert document.status == 200
        assert document.body == json.loads(Path(done["output"]).read_text())
        assert document.body["AudioFileResults"][0]["TranscriptionStatus"] == "Succeeded"

        report = api("GET", f"/batches/{batch['id']}/report")
        assert report.body["overall_summary"]["succeeded"] == 3 and report.body["overall_summary"]["failed"] == 1
        assert api("DELETE", f"/batches/{batch['id']}").status == 409  # finished: nothing to cancel
        assert api("GET", "/batches/no-such-batch").status == 404

    as_json = run_cli("status", batch["id"], "--json", broker=redis_server.url)
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["counts"] == finished.body["counts"]
    rows = run_cli("results", batch["id"], "--format", "jsonl", broker=redis_server.url)
    assert rows.returncode == 0, rows.stderr
    by_name = {Path(r["input"]).name: r for r in map(json.loads, rows.stdout.splitlines())}
    assert by_name["call1.wav"]["text"] == "duration 2.00 seconds" and by_name["call1.wav"]["status"] == "done"
    assert by_name["broken.wav"]["status"] == "failed" and "not a WAV file" in by_name["broken.wav"]["reason"]
    csv_file = tmp_path / "results.csv"
    as_csv = run_cli("results", batch["id"], "--format", "csv", "--out", str(csv_file), broker=redis_server.url)
    assert as_csv.returncode == 0 and "4 file(s)" in as_csv.stderr
    lines = csv_file.read_text().splitlines()
    assert lines[0] == "index,input,status,durationSeconds,errorClass,reason,text,output" and len(lines) == 5
    assert json.loads(run_cli("results", batch["id"], broker=redis_server.url).stdout)[3]["text"] == \
        "duration 2.50 seconds"
    text = run_cli("results", batch["id"], "--format", "txt", broker=redis_server.url).stdout
    assert "[done]\nduration 1.50 seconds" in text and "[failed]\npermanent: " in text


def test_output_options_and_a_log_folder_as_submit_takes_them(tmp_path: Path, root: Path,
                                                             redis_server: PrivateRedis, store: StateStore,
                                                             start_worker) -> None:
    """`srt`, `vtt`, `combinedJson` and `logFolder`: what `submit --srt --vtt --combined-json
    --log-folder` writes; a log folder outside the allowed roots is refused before it is created."""
    tone_wav(root / "in" / "a.wav", 1.5)
    tone_wav(root / "in" / "b.wav", 2.0)
    (root / "escape").symlink_to(tmp_path)
    body = {"inputs": [str(root / "in")], "out": str(root / "out")}
    outputs = {"srt": True, "vtt": True, "combinedJson": True, "logFolder": str(root / "logs")}
    with running_emulator(rtf=0, transcribe="duration") as emu, serve(redis_server, root) as api:
        for folder in (str(tmp_path / "logs"), str(root / "escape" / "logs"), f"{root}/../logs"):
            refused = api("POST", "/batches", {**body, "options": {"logFolder": folder}})
            assert refused.status == 403 and refused.body["code"] == "PathNotAllowed", (folder, refused)
        assert not (tmp_path / "logs").exists()
        relative = api("POST", "/batches", {**body, "options": {"logFolder": "logs"}})
        assert relative.status == 422 and "options.logFolder" in relative.body["message"], relative
        nothing_queued(store)

        start_worker(emulator_config(tmp_path, emu.ports[0]))
        created = api("POST", "/batches", {**body, "options": outputs})
        assert created.status == 201, created
        assert {k: created.body["options"][k] for k in outputs} == outputs
        assert created.body["options"]["txt"] is False
        finished = api("GET", f"/batches/{created.body['id']}?wait=120", timeout=150)
        assert finished.body["status"] == "succeeded", finished
    for stem, seconds in (("a", 1.5), ("b", 2.0)):
        text = f"duration {seconds:.2f} seconds"
        assert text in (root / "out" / f"{stem}_wav.srt").read_text()
        assert (root / "out" / f"{stem}_wav.vtt").read_text().startswith("WEBVTT")
        assert not (root / "out" / f"{stem}_wav.txt").exists()
        logs = list((root / "logs").glob(f"{stem}_wav.emu@vm1.sdk.log"))
        assert len(logs) == 1 and "SPX_TRACE" in logs[0].read_text(), sorted((root / "logs").iterdir())
    combined = json.loads((root / "out" / "results.json").read_text())["AudioFileResults"]
    assert sorted(e["AudioFileName"] for e in combined) == ["a.wav", "b.wav"]


def test_a_missing_or_wrong_token_is_refused_and_nothing_happens(root: Path, redis_server: PrivateRedis,
                                                                 store: StateStore) -> None:
    tone_wav(root / "in" / "a.wav", 1.0)
    body = {"inputs": [str(root / "in")], "out": str(root / "out")}
    batchkit = {"type": "SpeechSDKBatchRequest", "files": [str(root / "in" / "a.wav")], "language": "en-US",
                "diarization": "None", "nbest": 1, "profanity": "Masked", "allow_resume": False,
                "sentiment": False, "combine_results": False}
    with serve(redis_server, root) as api:
        for token in (None, "wrong-token-0123456789abcdef", TOKEN + "x", ""):
            answer = api("POST", "/batches", body, token=token)
            assert answer.status == 401, (token, answer)
            assert answer.body["code"] == "Unauthorized" and answer.headers["www-authenticate"].startswith("Bearer")
        assert api("POST", "/batches", body, token=None, headers={"Authorization": f"Basic {TOKEN}"}).status == 401
        assert api("POST", "/submit", batchkit, token=None).status == 401
        assert api("POST", "/batches", {"not": "valid"}, token=None).status == 401  # before validation
        assert api("DELETE", "/batches/x", token=None).status == 401
        assert api("GET", "/no/such/route", token=None).status == 401  # nothing to probe without a token
        nothing_queued(store)
        assert not (root / "out").exists()
        assert api("GET", "/healthz", token=None).body == {"status": "ok"}
        assert api("GET", "/ready", token=None).body is True
        assert api("GET", "/openapi.json", token=None).status == 200
        assert api("POST", "/batches", body).status == 201  # the right token works


def test_paths_outside_the_allowed_roots_are_refused(tmp_path: Path, root: Path, redis_server: PrivateRedis,
                                                     store: StateStore) -> None:
    outside = tmp_path / "private"
    outside.mkdir()
    tone_wav(outside / "secret.wav", 1.0)
    tone_wav(root / "in" / "ok.wav", 1.0)
    (root / "in" / "link.wav").symlink_to(outside / "secret.wav")  # a file link inside an input folder
    (root / "escape").symlink_to(outside)
    cases = {
        "an input outside": {"inputs": [str(outside)], "out": str(root / "out")},
        "'..' out of the root": {"inputs": [f"{root}/in/../../private/secret.wav"], "out": str(root / "out")},
        "a symlink to outside": {"inputs": [str(root / "escape" / "secret.wav")], "out": str(root / "out")},
        "a linked file inside a folder": {"inputs": [str(root / "in")], "out": str(root / "out")},
        "out outside": {"inputs": [str(root / "in" / "ok.wav")], "out": str(outside / "out")},
        "out through a symlink": {"inputs": [str(root / "in" / "ok.wav")], "out": str(root / "escape" / "out")},
        "a path that does not exist outside": {"inputs": ["/nonexistent/x.wav"], "out": str(root / "out")},
    }
    batchkit = {"type": "SpeechSDKBatchRequest", "files": [str(outside / "secret.wav")], "language": "en-US",
                "diarization": "None", "nbest": 1, "profanity": "Masked", "allow_resume": False,
                "sentiment": False, "combine_results": False}
    with serve(redis_server, root) as api:
        for what, body in cases.items():
            answer = api("POST", "/batches", body)
            assert answer.status == 403, (what, answer)
            assert answer.body["code"] == "PathNotAllowed" and "outside the folders" in answer.body["message"]
            assert "secret" not in answer.body["message"] or what != "a linked file inside a folder"
        assert api("POST", "/submit", batchkit).status == 403
        assert api("POST", "/batches", {"inputs": ["relative/x.wav"], "out": str(root / "out")}).status == 422
        nothing_queued(store)
        assert not (outside / "out").exists() and not (root / "out").exists()
        os.remove(root / "in" / "link.wav")
        assert api("POST", "/batches", {"inputs": [str(root / "in")], "out": str(root / "out")}).status == 201


def test_a_batch_kit_client_works_unchanged(tmp_path: Path, root: Path, redis_server: PrivateRedis,
                                            store: StateStore, start_worker) -> None:
    """batch-kit's own request and response fields, no token (its clients send none): the routes
    are opened to loopback clients with --batchkit-open-localhost; ours still need the token."""
    tone_wav(root / "in" / "a.wav", 1.25)
    tone_wav(root / "in" / "b.wav", 1.75)
    submit = {"type": "SpeechSDKBatchRequest", "files": [str(root / "in" / "a.wav"), str(root / "in" / "b.wav")],
              "language": "en-US", "diarization": "None", "nbest": 1, "profanity": "Masked",
              "allow_resume": "false", "sentiment": False, "combine_results": "True"}
    with running_emulator(rtf=0, transcribe="duration") as emu, \
            serve(redis_server, root, "--batchkit-open-localhost") as api:
        start_worker(emulator_config(tmp_path, emu.ports[0]))
        created = api("POST", "/submit", submit, token=None)
        assert created.status == 200, created
        status = created.body
        assert isinstance(status["batch_id"], int) and status["status"] in ("waiting", "running")
        assert set(status) == {"py/object", "batch_id", "run_summary_path", "results_dir", "combined_results_file",
                               "status"}
        number = status["batch_id"]
        assert status["combined_results_file"] is None  # not done yet
        done = api("GET", f"/watch?batch_id={number}&target_state=done&timeout=120", token=None, timeout=150)
        assert done.status == 200 and done.body["status"] == "done", done
        results = Path(done.body["results_dir"])
        assert results == root / "batchkit" / f"batch_{number}"
        entry = json.loads((results / "b_wav.json").read_text())["AudioFileResults"][0]
        assert entry["CombinedResults"][0]["Display"] == "duration 1.75 seconds"
        combined = Path(done.body["combined_results_file"])  # combine_results: batch-kit's results.json
        assert combined == results / "results.json"
        assert sorted(e["AudioFileName"] for e in json.loads(combined.read_text())["AudioFileResults"]) == \
            ["a.wav", "b.wav"]
        assert Path(done.body["run_summary_path"]).is_file()
        assert api("GET", f"/status?batch_id={number}", token=None).body == done.body
        assert api("GET", "/list", token=None).body == [number]
        assert api("GET", "/ready", token=None).raw == b"true"

        deleted = api("PUT", f"/delete?batch_id={number}", token=None)
        assert deleted.status == 200 and deleted.body["status"] == "deleted"
        assert not (results / "b_wav.json").exists() and not (results / "run_summary.json").exists()
        assert not combined.exists() and deleted.body["combined_results_file"] is None
        assert api("GET", f"/status?batch_id={number}", token=None).body["status"] == "deleted"

        assert api("GET", "/status?batch_id=999", token=None).status == 404
        assert api("GET", "/status", token=None).status == 400
        missing = {k: v for k, v in submit.items() if k != "nbest"}
        assert api("POST", "/submit", missing, token=None).body["message"] == \
            "Missing 'nbest' argument (string) in request body"
        assert api("GET", f"/watch?batch_id={number}&target_state=finished", token=None).status == 400
        assert api("GET", "/batches", token=None).status == 401  # only batch-kit's routes are opened


def test_cancel_leaves_nothing_queued_or_running(tmp_path: Path, root: Path, redis_server: PrivateRedis,
                                                 store: StateStore, start_worker) -> None:
    """One slot, files answered in real time: one runs (8 s, long enough to cancel while it runs),
    the rest wait on the broker. A second batch shares one waiting file's content (dedupe): it
    must still get it."""
    durations = {"x0": 2.0, "x1": 2.25, "x2": 2.5, "x3": 8.0}  # longest first: x3 runs first
    for name, seconds in durations.items():
        tone_wav(root / "in" / f"{name}.wav", seconds)
    (root / "other").mkdir()
    shutil.copy(root / "in" / "x0.wav", root / "other" / "same_as_x0.wav")
    with running_emulator(rtf=1, transcribe="duration") as emu, serve(redis_server, root) as api:
        worker = start_worker(emulator_config(tmp_path, emu.ports[0], concurrency=1))
        a = api("POST", "/batches", {"inputs": [str(root / "in")], "out": str(root / "out_a")}).body["id"]
        wait_for(lambda: api("GET", f"/batches/{a}").body["counts"]["running"] == 1, 60, "x3 to start")
        b = api("POST", "/batches", {"inputs": [str(root / "other")], "out": str(root / "out_b")}).body
        assert b["submitted"]["attached"] == 1  # it waits for batch a's job of x0

        cancelled = api("DELETE", f"/batches/{a}")
        assert cancelled.status == 200 and cancelled.body["status"] == "cancelled", cancelled
        assert cancelled.body["counts"]["cancelled"] == 4
        assert all(cancelled.body["counts"][s] == 0 for s in ("queued", "running", "retrying"))

        finished_b = api("GET", f"/batches/{b['id']}?wait=120", timeout=150).body
        assert finished_b["status"] == "succeeded", finished_b
        assert json.loads((root / "out_b" / "same_as_x0_wav.json").read_text())["AudioFileResults"][0][
            "CombinedResults"][0]["Display"] == "duration 2.00 seconds"

        def idle() -> bool:  # the broker, the delayed set and the in-flight sets are empty
            r = store.redis
            return (r.llen(pool_queue("en-US")) == 0 and r.hlen("unacked") == 0
                    and r.zcard(store.keys.delayed()) == 0 and r.zcard(store.keys.inflight("emu")) == 0)

        wait_for(idle, 60, "the worker to drain the cancelled batch's messages", on_timeout=worker.log)
        sessions = emu.stats(emu.ports[0])["sessions_total"]
    assert sessions == 2, "x3 (already running) and x0 (for batch b); x1 and x2 never reached the engine"
    assert worker.log().count("was cancelled; dropping its delivery") == 2
    jobs = {r.path: store.job(r.job)["state"] for r in store.files(a, range(4))}
    assert jobs == {str(root / "in" / "x0.wav"): "done", str(root / "in" / "x1.wav"): "cancelled",
                    str(root / "in" / "x2.wav"): "cancelled", str(root / "in" / "x3.wav"): "done"}
    assert [r.state.value for r in store.files(a, range(4))] == ["cancelled"] * 4
    assert store.redis.keys("bs:job:*:targets") == [] and not store.redis.keys("bs:outputs:*")
    assert not list((root / "out_a").glob("*_wav.json"))  # x3 finished for nobody: no output for batch a
    summary = json.loads((root / "out_a" / "run_summary.json").read_text())["overall_summary"]
    assert (summary["cancelled"], summary["succeeded"]) == (4, 0)
    again = run_cli("cancel", a, broker=redis_server.url)
    assert again.returncode == 0 and "already cancelled" in again.stderr
    shown = run_cli("status", a, broker=redis_server.url)
    assert shown.returncode == 1, "a cancelled batch did not succeed"
    assert "(complete: cancelled)" in shown.stdout and "4 file(s) had not finished" in shown.stdout
    retried = run_cli("retry-failed", a, broker=redis_server.url)
    assert retried.returncode == 2 and "was cancelled: submit its inputs again" in retried.stderr


def test_serve_refuses_to_start_without_a_token_and_no_auth_stays_on_localhost(root: Path,
                                                                               redis_server: PrivateRedis) -> None:
    def serve_cli(*args: str, **env: str) -> tuple[int, str]:
        done = run_cli("serve", "--port", "0", "--allow-root", str(root), *args, broker=redis_server.url,
                       timeout=60, **env)
        return done.returncode, done.stderr

    code, said = serve_cli()
    assert code == 2 and "no API token: set BATCHSCRIBE_API_TOKENS" in said, said
    code, said = serve_cli(BATCHSCRIBE_API_TOKENS="tooshort")
    assert code == 2 and "at least 16 characters" in said and "tooshort" not in said, said
    code, said = serve_cli("--no-auth", "--host", "0.0.0.0")
    assert code == 2 and "--no-auth serves on localhost only" in said, said
    code, said = serve_cli("--no-auth", BATCHSCRIBE_API_TOKENS=TOKEN)
    assert code == 2 and "choose one" in said, said
    code, said = serve_cli("--batchkit-out", str(root.parent), BATCHSCRIBE_API_TOKENS=TOKEN)
    assert code == 2 and "must be inside one of the --allow-root folders" in said, said
    code, said = serve_cli("--local", BATCHSCRIBE_API_TOKENS=TOKEN)  # and BATCHSCRIBE_REDIS_URL
    assert code == 2 and "--local starts a private Redis" in said and "choose one" in said, said
    code, said = serve_cli("--config", "eps.yaml", BATCHSCRIBE_API_TOKENS=TOKEN)
    assert code == 2 and "--config is for the workers of `serve --local`" in said, said
    with serve(redis_server, root, "--no-auth", tokens=None) as api:
        assert api.url.startswith("http://127.0.0.1:")
        assert api("GET", "/batches", token=None).status == 200
        assert "auth off (localhost only)" in api.banner


def test_a_redis_outage_answers_clean_json(root: Path, redis_server: PrivateRedis, store: StateStore) -> None:
    tone_wav(root / "in" / "a.wav", 1.0)
    body = {"inputs": [str(root / "in")], "out": str(root / "out")}
    with serve(redis_server, root) as api:
        batch = api("POST", "/batches", body).body["id"]
        redis_server.stop()
        for method, path, payload in (("GET", f"/batches/{batch}", None), ("GET", "/batches", None),
                                      ("POST", "/batches", body), ("DELETE", f"/batches/{batch}", None),
                                      ("GET", "/healthz", None)):
            answer = api(method, path, payload, timeout=90)
            assert answer.status == 503, (method, path, answer)
            assert answer.body["code"] == "StateUnavailable" and "cannot reach Redis" in answer.body["message"]
            assert "Traceback" not in answer.raw.decode()
        redis_server.start()
        assert api("GET", f"/batches/{batch}").status == 200


def test_an_unexpected_error_is_a_generic_500_with_a_reference_in_the_log(
        root: Path, settings, caplog: pytest.LogCaptureFixture) -> None:
    import threading

    import uvicorn

    from batchscribe.api import ApiConfig, TokenSet, create_app
    from batchscribe.cli.batches import submitter_for
    from batchscribe.cli.serve import listen

    class Broken(StateStore):
        def batch(self, batch_id: str) -> dict[str, str]:
            raise RuntimeError("a bug with private details")

    store = Broken.connect(settings)
    app = create_app(ApiConfig.build([root], TokenSet([TOKEN])), store, submitter_for(settings, store))
    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start")
        answer = request("GET", f"http://127.0.0.1:{sock.getsockname()[1]}/batches/x")
    finally:
        server.should_exit = True
        thread.join(30)
    assert answer.status == 500 and answer.body["code"] == "InternalError", answer
    assert "private details" not in answer.raw.decode() and "Traceback" not in answer.raw.decode()
    reference = answer.body["message"].split("reference ")[1].split(")")[0]
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)
