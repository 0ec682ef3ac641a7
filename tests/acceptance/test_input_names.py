"""Input names as users have them: two roots with one folder name, names that are not UTF-8, names
near the 255-byte limit, escape sequences, symlinks, truncated compressed files.

Every input gets its own output, the rest of the batch goes on, and nothing a name holds reaches
the terminal raw.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from batchscribe.common.state import StateStore
from tests.support.cli import run_cli
from tests.support.speech import CODECS, synthesize

SENTENCE = "Please call the support line on weekdays."
LONG = "Thank you for calling. Your order has been shipped and will arrive on Monday."


def entry(path: Path | bytes) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return json.load(fh)["AudioFileResults"][0]


def umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_two_roots_with_one_folder_name_and_one_file_name_keep_every_output(tmp_path: Path) -> None:
    ok = synthesize(SENTENCE, tmp_path / "ok.wav")
    inputs = {"a/in/ok.wav": "a/in", "b/in/ok.wav": "b/in", "c/x.wav": "c/x.wav", "d/x.wav": "d/x.wav"}
    for rel in inputs:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ok, tmp_path / rel)
    evil = tmp_path / "b" / "in" / "evil\x1b[2J.wav"  # an escape sequence that would clear the screen
    evil.write_text("not audio\n")
    out = tmp_path / "out"
    result = run_cli("run", *(str(tmp_path / root) for root in inputs.values()), "--out", str(out))
    assert result.returncode == 1, result.stderr  # evil.wav fails; the others are transcribed
    for rel, output in {"a/in/ok.wav": "a/in/ok_wav.json", "b/in/ok.wav": "b/in/ok_wav.json",
                        "c/x.wav": "c/x_wav.json", "d/x.wav": "d/x_wav.json"}.items():
        done = entry(out / output)
        assert done["TranscriptionStatus"] == "Succeeded" and done["AudioFileUrl"] == str(tmp_path / rel)
    assert entry(out / "b" / "in" / "evil\x1b[2J_wav.json")["TranscriptionStatus"] == "Failed"
    assert "1 queued, 3 duplicate(s), 0 already in progress elsewhere" in result.stderr
    assert "\x1b" not in result.stderr and "evil\\x1b[2J.wav: not a WAV file" in result.stderr


def test_names_that_are_not_utf8_or_near_the_length_limit_are_transcribed(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    ok = synthesize(SENTENCE, tmp_path / "ok.wav")
    names = {b"caf\xe9.wav": b"caf\xe9_wav.json",  # Latin-1, not UTF-8
             b"x" * 240 + b".wav": b"x" * 240 + b"_wav.json"}  # 244 bytes in, 249 out: fits as it is
    over = b"y" * 250 + b".wav"  # its output name would be 259 bytes: shortened
    for name in [*names, over]:
        shutil.copy(ok, os.path.join(os.fsencode(inputs), name))
    out = tmp_path / "out"
    result = run_cli("run", str(inputs), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    written = set(os.listdir(os.fsencode(out))) - {b"run_summary.json"}
    short = [n for n in written if n.startswith(b"yyyy")]
    assert len(short) == 1 and re.fullmatch(rb"y{230,}~[0-9a-f]{12}_wav\.json", short[0]), short
    assert len(short[0]) == 255
    assert written == {*names.values(), short[0]}
    for name, output in {**names, over: short[0]}.items():
        done = entry(os.path.join(os.fsencode(out), output))
        assert done["TranscriptionStatus"] == "Succeeded"
        assert os.fsencode(done["AudioFileUrl"]) == os.path.join(os.fsencode(inputs), name)  # maps back
    for path in (os.path.join(os.fsencode(out), b"caf\xe9_wav.json"), out / "run_summary.json"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask()  # the umask, not 0600


def test_truncated_mp3_and_m4a_fail_with_the_reason(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    synthesize(SENTENCE, inputs / "whole.mp3")
    for name, codec in (("cut.mp3", CODECS["mp3"]), ("cut.m4a", (*CODECS["m4a"], "-movflags", "+faststart"))):
        full = synthesize(LONG, tmp_path / name, codec=codec).read_bytes()
        (inputs / name).write_bytes(full[: len(full) // 3])
    out = tmp_path / "out"
    result = run_cli("run", str(inputs), "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert entry(out / "whole_mp3.json")["TranscriptionStatus"] == "Succeeded"
    for name, kind in (("cut_mp3.json", "MP3"), ("cut_m4a.json", "M4A")):
        failed = entry(out / name)
        assert failed["TranscriptionStatus"] == "Failed" and failed["ErrorClass"] == "permanent"
        assert re.match(rf"truncated {kind}: header says [\d.]+ s, file holds [\d.]+ s", failed["FailureReason"])
        assert failed["FailureReason"] in result.stderr


def test_symlinks_and_escape_sequences_in_submit_status_and_log(tmp_path: Path, redis_server,
                                                                store: StateStore) -> None:
    inputs = tmp_path / "in"
    (tmp_path / "elsewhere").mkdir(parents=True)
    synthesize(SENTENCE, tmp_path / "elsewhere" / "z.wav")
    inputs.mkdir()
    (inputs / "linked").symlink_to(tmp_path / "elsewhere")  # not followed: loops are possible
    (inputs / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    (inputs / "title\x1b]0;pwned\x07.wav").write_text("not audio\n")  # sets the terminal's title
    out = tmp_path / "out"
    submitted = run_cli("submit", str(inputs), "--out", str(out), broker=redis_server.url)
    assert submitted.returncode == 0, submitted.stderr
    assert f"1 symlinked folder(s) not followed: {inputs / 'linked'}" in submitted.stderr
    batch_id = submitted.stdout.strip()
    assert entry(out / "gone_wav.json")["FailureReason"] == "broken symlink (its target does not exist)"

    status = run_cli("status", batch_id, broker=redis_server.url)
    assert status.returncode == 1
    assert "1 symlinked folder(s) not followed" in status.stdout
    assert "gone.wav: broken symlink" in status.stdout
    assert "title\\x1b]0;pwned\\x07.wav: not a WAV file" in status.stdout
    store.log_event(batch=batch_id, file=str(inputs / "title\x1b]0;pwned\x07.wav"), outcome="error",
                    endpoint="local", error_class="permanent", reason="bad \x1b[31m input")
    log = run_cli("log", broker=redis_server.url)
    assert "title\\x1b]0;pwned\\x07.wav [permanent] bad \\x1b[31m input" in log.stdout
    for printed in (submitted.stderr, status.stdout, log.stdout):
        assert "\x1b" not in printed and "\x07" not in printed


def test_a_running_batch_keeps_its_outputs_from_other_inputs(tmp_path: Path, redis_server,
                                                             store: StateStore) -> None:
    for root in ("a/in", "b/in"):
        (tmp_path / root).mkdir(parents=True)
        synthesize(SENTENCE, tmp_path / root / "ok.wav")
    out = tmp_path / "out"
    first = run_cli("submit", str(tmp_path / "a/in"), "--out", str(out), broker=redis_server.url)
    assert first.returncode == 0, first.stderr  # no worker: it stays running
    batch_id = first.stdout.strip()
    other = run_cli("submit", str(tmp_path / "b/in"), "--out", str(out), broker=redis_server.url)
    assert other.returncode == 2
    assert (f"error: {out / 'ok_wav.json'} is being written by batch {batch_id}, which is still running"
            in other.stderr), other.stderr
    assert store.batch_ids() == [batch_id]  # the refused batch left nothing behind
    again = run_cli("submit", str(tmp_path / "a/in"), "--out", str(out), broker=redis_server.url)
    assert again.returncode == 0, again.stderr  # the same input again (a re-run after Ctrl-C) is fine
