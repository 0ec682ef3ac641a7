"""What every `batchscribe` command shares: exit codes, error translation, common options.

Exit codes: 0 every file succeeded · 1 some files failed · 2 bad usage, input or config ·
3 Redis unreachable or failing (refused credentials, out of memory, read-only replica).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click

from batchscribe.common.errors import BatchscribeError, StateError
from batchscribe.common.models import PROFANITY_MODES, TranscriptionOptions
from batchscribe.common.names import printable
from batchscribe.common.output import Outputs, prepare_log_folder
from batchscribe.common.settings import Settings

EXIT_OK, EXIT_FAILED_FILES, EXIT_USAGE, EXIT_REDIS = 0, 1, 2, 3


def fail(message: str, code: int) -> NoReturn:
    click.secho(f"error: {printable(message)}", fg="red", err=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one clear line and an exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StateError as exc:
            fail(str(exc), EXIT_REDIS)
        except BatchscribeError as exc:
            fail(str(exc), EXIT_USAGE)

    return wrapper


def broker_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--broker", envvar="BATCHSCRIBE_REDIS_URL", metavar="URL",
                        help="Redis URL, e.g. redis://HOST:6379/0 (env BATCHSCRIBE_REDIS_URL).")(fn)


def transcription_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of `submit` and `run`; all but --txt are part of the dedupe key."""
    options = [
        click.option("--language", default="en-US", show_default=True, help="Recognition language."),
        click.option("--engine", type=click.Choice(["azure", "local"]), default=None,
                     help="Only use endpoints of this engine (default: any endpoint of the language)."),
        click.option("--nbest", type=click.IntRange(1, 10), default=1, show_default=True,
                     help="Alternatives kept per segment."),
        click.option("--word-timestamps", is_flag=True, help="Word offsets and durations in outputs."),
        click.option("--profanity", type=click.Choice(PROFANITY_MODES), default="masked", show_default=True),
        click.option("--diarization", is_flag=True, help="Speaker ids where the engine offers them."),
        click.option("--candidate-languages", default="", metavar="a,b,c",
                     help="Language identification among these languages."),
        click.option("--txt", is_flag=True, help="Also write a plain-text transcript per file."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def output_options(combined: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--srt, --vtt, --combined-json (unless not `combined`) and --log-folder (`build_outputs`)."""
    options = [
        click.option("--srt", is_flag=True, help="Also write SRT subtitles per file (name_ext.srt)."),
        click.option("--vtt", is_flag=True, help="Also write WebVTT subtitles per file (name_ext.vtt)."),
        click.option("--combined-json", is_flag=True,
                     help="Also write OUT/results.json with every file's result when the batch completes "
                     "(batch-processing-kit's -combined_json)."),
        click.option("--log-folder", type=click.Path(file_okay=False), default=None, metavar="DIR",
                     help="Write run.log (every attempt) and, for azure endpoints, the Speech SDK's log of "
                     "each file here (shared storage in a cluster, like --out)."),
    ]
    if not combined:
        options.pop(2)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def build_outputs(txt: bool, kw: dict[str, Any]) -> Outputs:
    """The output choices among the command's parameters (removed from `kw`)."""
    folder = kw.pop("log_folder", None)
    if folder is not None:
        folder = prepare_log_folder(folder)
    return Outputs(txt=txt, srt=kw.pop("srt", False), vtt=kw.pop("vtt", False),
                   combined_json=kw.pop("combined_json", False), log_folder=folder)


def build_options(kw: dict[str, Any]) -> TranscriptionOptions:
    langs = tuple(x.strip() for x in kw.pop("candidate_languages", "").split(",") if x.strip())
    return TranscriptionOptions(language=kw.pop("language"), engine=kw.pop("engine"), nbest=kw.pop("nbest"),
                                word_timestamps=kw.pop("word_timestamps"), profanity=kw.pop("profanity"),
                                diarization=kw.pop("diarization"), candidate_languages=langs)


def keep_typed_sas(locations: Sequence[str], cluster: bool) -> None:
    """Keep the SAS tokens typed in blob URLs for this command and the local workers it starts
    (`common.storage.adopt_sas`); with a `cluster`, warn that its workers need their own."""
    from batchscribe.common.storage import adopt_sas

    typed = adopt_sas(locations)
    if typed and cluster:
        click.secho("warning: the SAS typed in a URL stays on this machine: the workers need their own "
                    f"credentials for {', '.join(typed)} (docs/blob.md)", fg="yellow", err=True)


def settings_for(broker: str | None) -> Settings:
    return Settings.from_env(redis_url=broker)
