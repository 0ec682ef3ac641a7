"""`run-batch-client`'s translation: batch-kit's flags as its users type them → the `batchscribe`
arguments, and a note for every flag that has no counterpart. The command each mode runs is tested
end to end elsewhere (tests/acceptance/test_batchkit_cli.py); here, the arguments themselves."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from batchscribe.cli.batchkit import IGNORED, translate

NO_ENV: dict[str, str] = {}


def test_oneshot_maps_to_run_with_batchkits_defaults_and_options(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("")
    t = translate(["-config", str(config), "-input_folder", "/data/in", "-output_folder", "/data/out",
                   "-nbest", "3", "-diarization", "Anonymous", "-profanity", "Removed", "-language", "de-DE"],
                  NO_ENV)
    assert t.args == ["run", "/data/in", "--out", "/data/out", "--config", str(config), "--language", "de-DE",
                      "--nbest", "3", "--profanity", "removed", "--diarization"]
    assert "--combined-json" not in t.args and "--log-folder" not in t.args
    bare = translate([], NO_ENV)  # batch-kit's defaults; its default config file is absent here
    assert bare.args == ["run", "/usr/local/batch/input", "--out", "/usr/local/batch/output", "--language",
                         "en-US", "--nbest", "1", "--profanity", "masked"]
    assert any("config.yaml not found" in n and "one local endpoint" in n for n in bare.notes)


def test_long_forms_are_the_same_flags() -> None:
    short = translate(["-m", "ONESHOT", "-input_folder", "i", "-output_folder", "o", "-nbest", "2",
                       "-profanity", "Raw", "-language", "en-US", "fr-FR", "-combined_json"], NO_ENV)
    long = translate(["--run-mode", "ONESHOT", "--input-folder", "i", "--output-folder", "o", "--nbest", "2",
                      "--profanity-mode", "Raw", "--language", "en-US", "fr-FR", "--store-combined-json"], NO_ENV)
    assert short == long
    assert short.args[-3:-1] == ["--candidate-languages", "en-US,fr-FR"]  # several languages: identification
    assert short.args[-1] == "--combined-json" and short.output_folder == "o"  # the native flag


def test_log_folder_is_the_native_flag_in_oneshot_and_daemon() -> None:
    for mode, command in (("ONESHOT", "run"), ("DAEMON", "watch")):
        t = translate(["-m", mode, "-log_folder", "/logs"], NO_ENV)
        assert t.args[0] == command and t.args[-2:] == ["--log-folder", "/logs"]
        assert not [n for n in t.notes if "log_folder" in n]
    daemon = translate(["-m", "DAEMON", "-combined_json"], NO_ENV)
    assert "--combined-json" not in daemon.args
    assert "-combined_json ignored: it applies to -m ONESHOT only" in daemon.notes
    served = translate(["-m", "APISERVER", "-log_folder", "/logs"], NO_ENV)
    assert "--log-folder" not in served.args
    assert any(n.startswith("-log_folder ignored in APISERVER mode") for n in served.notes)


def test_daemon_maps_to_watch_and_poll_to_poll() -> None:
    t = translate(["-m", "DAEMON", "-input_folder", "/in", "-output_folder", "/out", "-poll"], NO_ENV)
    assert t.args[:4] == ["watch", "/in", "--out", "/out"] and t.args[-1] == "--poll"
    assert "--poll" not in translate(["-m", "DAEMON"], NO_ENV).args  # watch decides: polls on NFS/SMB


def test_daemon_on_a_cluster_leaves_the_endpoints_to_its_workers() -> None:
    t = translate(["-m", "DAEMON", "-config", "eps.yaml"], {"BATCHSCRIBE_REDIS_URL": "redis://h:6379/0"})
    assert "--config" not in t.args
    assert any(n.startswith("-config ignored: BATCHSCRIBE_REDIS_URL is set") for n in t.notes)


def test_apiserver_maps_to_serve_with_auth_only_when_tokens_are_set() -> None:
    open_local = translate(["-m", "APISERVER", "-port", "5001", "-input_folder", "/shared/in",
                            "-output_folder", "/shared/out", "-config", "c.yaml"], NO_ENV)
    assert open_local.args == ["serve", "--port", "5001", "--allow-root", "/shared/in", "--allow-root",
                               "/shared/out", "--batchkit-out", "/shared/out", "--no-auth", "--local",
                               "--config", "c.yaml"]  # it transcribes too, as batch-kit's server did
    assert any("127.0.0.1 only" in n for n in open_local.notes)
    tokens = translate(["-m", "APISERVER"], {"BATCHSCRIBE_API_TOKENS": "t1"})
    assert tokens.args == ["serve", "--port", "5000", "--allow-root", "/usr/local/batch/input",
                           "--allow-root", "/usr/local/batch/output", "--batchkit-out", "/usr/local/batch/output",
                           "--host", "0.0.0.0", "--local"]  # batch-kit's port and all interfaces, behind the tokens
    assert any("config.yaml not found" in n for n in tokens.notes)  # batch-kit's default config path
    per_request = translate(["-m", "APISERVER", "-language", "fr-FR", "-combined_json"], NO_ENV)
    assert any(n.startswith("-language ignored in APISERVER mode") for n in per_request.notes)
    assert any(n.startswith("-combined_json ignored in APISERVER mode") for n in per_request.notes)


def test_apiserver_on_a_cluster_serves_its_redis_and_leaves_the_endpoints_to_its_workers() -> None:
    t = translate(["-m", "APISERVER", "-config", "eps.yaml"], {"BATCHSCRIBE_REDIS_URL": "redis://h:6379/0"})
    assert "--local" not in t.args and "--config" not in t.args
    assert any(n.startswith("-config ignored: BATCHSCRIBE_REDIS_URL is set") for n in t.notes)


def test_every_flag_without_a_counterpart_is_named_once_with_why() -> None:
    argv = ["-console_log_level", "DEBUG", "-file_log_level", "ERROR", "-scratch_folder",
            "/s", "-sentiment", "-resume", "-strict_config", "-max_segment_length", "60",
            "-debug_loop_interval", "5", "-port", "9000"]
    notes = translate(argv, NO_ENV).notes
    for flag in ["-console_log_level", "-file_log_level", "-scratch_folder", "-sentiment",
                 "-resume", "-strict_config", "-max_segment_length", "-debug_loop_interval", "-port"]:
        assert sum(n.startswith(f"{flag} ignored: ") for n in notes) == 1, (flag, notes)
    assert len(IGNORED) == 8
    assert not [n for n in translate(["-input_folder", "x"], NO_ENV).notes if "ignored" in n]


def test_input_list_names_files_absolute_or_in_the_input_folder(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        (folder / name).write_bytes(b"RIFF")
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.wav\n{folder / 'c.wav'}\n\nmissing.wav\n")
    t = translate(["-input_folder", str(folder), "-input_list", str(listing), "-output_folder", "o"], NO_ENV)
    assert t.args[1:3] == [str(folder / "a.wav"), str(folder / "c.wav")] and t.args[3] == "--out"
    assert any(n.startswith("-input_list: 1 listed file(s) not found, skipped: ") and "missing.wav" in n
               for n in t.notes)
    listing.write_text("missing.wav\n")
    with pytest.raises(click.UsageError, match="none of its 1 file"):
        translate(["-input_folder", str(folder), "-input_list", str(listing)], NO_ENV)


@pytest.mark.parametrize("argv, message", [
    (["-m", "DAEMON", "-input_list", "l.txt"], "not allowed if the run mode is not ONESHOT"),
    (["-m", "DAEMON", "-language", "en-US", "fr-FR"], "only be used in ONESHOT mode"),
    (["-nbest", "20"], "at most 10 alternatives"),
    (["-nbest", "0"], "not a positive int value"),
    (["-profanity", "masked"], "invalid choice"),
    (["-unknown_flag", "1"], "unrecognized arguments: -unknown_flag"),
])
def test_bad_command_lines_are_refused_as_batchkit_refuses_them(argv: list[str], message: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        translate(argv, NO_ENV)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
