"""`run-batch-client`: batch-processing-kit's command line, translated to `batchscribe` commands.

A thin layer. batch-kit's flags are parsed as its own argparse parser spells them (single-dash
short forms, its long forms, its defaults and choices), turned into the arguments of one
`batchscribe` command, and that command is run through the `batchscribe` click group:

    -m ONESHOT    batchscribe run INPUT --out OUTPUT      (private Redis and local workers)
    -m DAEMON     batchscribe watch INPUT --out OUTPUT    (plus --poll with -poll)
    -m APISERVER  batchscribe serve --port PORT --allow-root INPUT --allow-root OUTPUT
                  --batchkit-out OUTPUT --local       (private Redis and local workers, as DAEMON)

Without BATCHSCRIBE_REDIS_URL every mode runs on this machine alone, with the endpoint YAML
(`-config`), read unchanged, for its workers; with it, DAEMON and APISERVER are producers of that
cluster, whose workers transcribe. Every flag the user gave that has no counterpart
is named on stderr, one line each with why; nothing is dropped silently. Unknown flags are an error,
as in batch-kit. `-combined_json` is `--combined-json` (ONESHOT: `OUTPUT/results.json`), `-log_folder`
is `--log-folder` (run.log and each file's Speech SDK log).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from batchscribe.common.names import printable

PROG = "run-batch-client"
MODES = ("ONESHOT", "DAEMON", "APISERVER")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_NBEST = 10  # what `--nbest` accepts
DEFAULTS: dict[str, Any] = {  # batch-kit's, applied after parsing so that we know what was given
    "config": "/usr/local/batch/input/config.yaml", "output_folder": "/usr/local/batch/output",
    "input_folder": "/usr/local/batch/input", "nbest": 1, "run_mode": "ONESHOT", "diarization": "None",
    "language": ["en-US"], "profanity": "Masked", "port": 5000, "combined_json": False, "poll": False,
}
# Flags without a counterpart, and why; named whenever the user gives them.
IGNORED = {
    "console_log_level": "batchscribe prints progress and one line per problem (`batchscribe -v` logs more)",
    "file_log_level": "run.log (-log_folder) holds every attempt: failures at WARNING and ERROR, the rest "
                      "at INFO",
    "scratch_folder": "batchscribe needs no scratch folder (its private Redis lives in a private temporary "
                      "folder)",
    "sentiment": "batchscribe does no sentiment analysis",
    "resume": "a failed file is retried from its start; files already done are never redone (dedupe)",
    "strict_config": "always on: an unknown key in the endpoint YAML is an error",
    "max_segment_length": "batchscribe does no language segmentation (several -language: language "
                          "identification per file)",
    "debug_loop_interval": "`batchscribe status` and `batchscribe log -f` show what the workers do",
}


@dataclass
class Translation:
    args: list[str]  # for the `batchscribe` group
    notes: list[str] = field(default_factory=list)  # one line each, for stderr
    output_folder: str = ""


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive int value")
    return number


def _nbest(value: str) -> int:
    number = _positive(value)
    if number > MAX_NBEST:
        raise argparse.ArgumentTypeError(f"{value}: batchscribe keeps at most {MAX_NBEST} alternatives")
    return number


def parser() -> argparse.ArgumentParser:
    """batch-kit's parser (batchkit_examples/speech_sdk/parser.py), flag for flag; nothing has a
    default here (`DEFAULTS` fills them in), so the namespace holds only what the user typed."""
    p = argparse.ArgumentParser(prog=PROG, argument_default=argparse.SUPPRESS,
                                description="batch-processing-kit's command line, run on batchscribe: "
                                "ONESHOT → `batchscribe run`, DAEMON → `batchscribe watch`, "
                                "APISERVER → `batchscribe serve`. Defaults are batch-kit's.")
    add = p.add_argument
    add("-config", "--configuration-file", dest="config", help="endpoint YAML (batch-kit's format)")
    add("-output_folder", "--output-folder", dest="output_folder")
    add("-input_folder", "--input-folder", dest="input_folder")
    add("-log_folder", "--log-folder", dest="log_folder")
    add("-console_log_level", "--console-log-level", dest="console_log_level", choices=LOG_LEVELS)
    add("-file_log_level", "--file-log-level", dest="file_log_level", choices=LOG_LEVELS)
    add("-nbest", "--nbest", dest="nbest", type=_nbest)
    add("-combined_json", "--store-combined-json", dest="combined_json", action="store_true")
    add("-input_list", "--input-list", dest="input_list", help="file listing the inputs (ONESHOT only)")
    add("-m", "--run-mode", dest="run_mode", choices=MODES)
    add("-scratch_folder", "--scratch-folder", dest="scratch_folder")
    add("-diarization", "--diarization-mode", dest="diarization", choices=("None", "Identity", "Anonymous"))
    add("-language", "--language", dest="language", nargs="+")
    add("-strict_config", "--strict-configuration-validation", dest="strict_config", action="store_true")
    add("-profanity", "--profanity-mode", dest="profanity", choices=("Masked", "Raw", "Removed"))
    add("-sentiment", "--enable-sentiment", dest="sentiment", action="store_true")
    add("-resume", "--allow-resume", dest="resume", action="store_true")
    add("-port", "--apiserver_port", dest="port", type=_positive)
    add("-poll", "--poll", dest="poll", action="store_true")
    add("-max_segment_length", "--max-segment-length", dest="max_segment_length", type=_positive)
    add("-debug_loop_interval", "--debug-loop-interval", dest="debug_loop_interval", type=_positive)
    return p


def translate(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Translation:
    """batch-kit's command line → the `batchscribe` arguments and the notes on what is ignored."""
    env = os.environ if environ is None else environ
    p = parser()
    given = vars(p.parse_args(argv))
    flag = {action.dest: action.option_strings[0] for action in p._actions if action.option_strings}
    v = {**DEFAULTS, **given}
    mode = v["run_mode"]
    if "input_list" in given and mode != "ONESHOT":  # batch-kit's own checks, its own words
        p.error("argument -input_list/--input-list: not allowed if the run mode is not ONESHOT")
    if len(v["language"]) > 1 and mode != "ONESHOT":
        p.error("Multi-language speech-batch-kit can only be used in ONESHOT mode in this version.")
    notes = [f"{flag[k]} ignored: {why}" for k, why in IGNORED.items() if k in given]
    if mode == "APISERVER":
        return Translation(_serve_args(v, given, flag, env, notes), notes, output_folder=v["output_folder"])
    args = ["run" if mode == "ONESHOT" else "watch"]
    args += _inputs(v, notes) if mode == "ONESHOT" else [v["input_folder"]]
    args += ["--out", v["output_folder"], *_config_args(v, given, mode, env, notes), *_options(v, notes)]
    if mode == "DAEMON" and v["poll"]:
        args.append("--poll")
    if mode == "ONESHOT" and v["combined_json"]:
        args.append("--combined-json")
    if "log_folder" in given:
        args += ["--log-folder", v["log_folder"]]
    for key, only in (("port", "APISERVER"), ("poll", "DAEMON"), ("combined_json", "ONESHOT")):
        if key in given and mode != only:
            notes.append(f"{flag[key]} ignored: it applies to -m {only} only")
    return Translation(args, notes, output_folder=v["output_folder"])


def _inputs(v: dict[str, Any], notes: list[str]) -> list[str]:
    """The input folder, or with -input_list the files it lists (absolute, or relative to the folder)."""
    if "input_list" not in v:
        return [v["input_folder"]]
    try:
        lines = Path(v["input_list"]).read_text(errors="surrogateescape").splitlines()
    except OSError as exc:
        raise click.UsageError(f"-input_list {v['input_list']}: {exc.strerror or exc}") from None
    listed = [os.path.join(v["input_folder"], line) for line in (x.strip() for x in lines) if line]
    found = [path for path in listed if os.path.isfile(path)]
    missing = [path for path in listed if path not in found]
    if missing:
        notes.append(f"-input_list: {len(missing)} listed file(s) not found, skipped: "
                     + ", ".join(printable(m) for m in missing[:5]) + (" …" if len(missing) > 5 else ""))
    if not found:
        raise click.UsageError(f"-input_list {v['input_list']}: none of its {len(listed)} file(s) exists")
    return found


def _config_args(v: dict[str, Any], given: dict[str, Any], mode: str, env: Mapping[str, str],
                 notes: list[str]) -> list[str]:
    """-config as given; batch-kit's default path when it exists, else batchscribe's default
    (one local endpoint on this machine). A cluster's `watch` or `serve` (BATCHSCRIBE_REDIS_URL)
    has no local workers to give it to."""
    if mode != "ONESHOT" and env.get("BATCHSCRIBE_REDIS_URL"):
        if "config" in given:
            notes.append("-config ignored: BATCHSCRIBE_REDIS_URL is set, so the cluster's workers "
                         "(and their endpoint files) transcribe")
        return []
    if "config" in given or os.path.isfile(v["config"]):
        return ["--config", v["config"]]
    notes.append(f"-config: {v['config']} not found: using batchscribe's default, one local endpoint "
                 "(the local engine) on this machine")
    return []


def _options(v: dict[str, Any], notes: list[str]) -> list[str]:
    """The transcription options, in `run`'s and `watch`'s words."""
    first, *others = v["language"]
    out = ["--language", first, "--nbest", str(v["nbest"]), "--profanity", v["profanity"].lower()]
    if others:
        out += ["--candidate-languages", ",".join(v["language"])]
    if v["diarization"] != "None":
        out.append("--diarization")
        notes.append(f"-diarization {v['diarization']} → --diarization: batchscribe has one diarization "
                     "mode (speaker ids from the engine); Identity and Anonymous are not told apart")
    return out


def _serve_args(v: dict[str, Any], given: dict[str, Any], flag: dict[str, str], env: Mapping[str, str],
                notes: list[str]) -> list[str]:
    """APISERVER: batch-kit listened on 0.0.0.0 with no auth. `serve` needs tokens for that; without
    BATCHSCRIBE_API_TOKENS it runs with --no-auth, which binds localhost only. Requests may read
    the input folder and write the output folder, where batch-kit's submissions go (batch_N/).
    Like batch-kit's server, it transcribes too (`serve --local`: a private Redis and workers for
    -config) unless BATCHSCRIBE_REDIS_URL names a cluster."""
    args = ["serve", "--port", str(v["port"]), "--allow-root", v["input_folder"],
            "--allow-root", v["output_folder"], "--batchkit-out", v["output_folder"]]
    if env.get("BATCHSCRIBE_API_TOKENS"):
        args += ["--host", "0.0.0.0"]
    else:
        args.append("--no-auth")
        notes.append("-m APISERVER: no BATCHSCRIBE_API_TOKENS, so no auth and 127.0.0.1 only (batch-kit "
                     "listened on 0.0.0.0); set it to serve other machines, with bearer tokens")
    if not env.get("BATCHSCRIBE_REDIS_URL"):
        args.append("--local")
    args += _config_args(v, given, "APISERVER", env, notes)
    for key in ("language", "nbest", "profanity", "diarization", "combined_json", "log_folder"):
        if key in given:
            notes.append(f"{flag[key]} ignored in APISERVER mode: " + (
                "batch-kit's requests carry no log folder (`batchscribe log -f` shows every attempt)"
                if key == "log_folder" else "each request gives its own"))
    if "poll" in given:
        notes.append("-poll ignored: it applies to -m DAEMON only")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    from batchscribe.cli import root

    try:
        translation = translate(sys.argv[1:] if argv is None else argv)
    except click.UsageError as exc:
        click.secho(f"{PROG}: error: {printable(exc.message)}", fg="red", err=True)
        sys.exit(2)
    for note in translation.notes:
        click.echo(f"{PROG}: {note}", err=True)
    try:  # batch-kit creates its output folder in every mode; `serve` wants it to exist
        Path(translation.output_folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        click.secho(f"{PROG}: error: cannot create -output_folder {printable(translation.output_folder)}: "
                    f"{exc.strerror or exc}", fg="red", err=True)
        sys.exit(2)
    click.echo(f"{PROG}: running: batchscribe {shlex.join(translation.args)}", err=True)
    root.main(args=translation.args, prog_name="batchscribe")
