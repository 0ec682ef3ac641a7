"""What every `batchscribe` command shares: exit codes, error translation, common options.

Exit codes: 0 every file succeeded · 1 some files failed · 2 bad usage, input or config ·
3 Redis unreachable or failing (refused credentials, out of memory, read-only replica).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from batchscribe.common.errors import BatchscribeError, StateError
from batchscribe.common.models import PROFANITY_MODES, TranscriptionOptions
from batchscribe.common.names import printable
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


def build_options(kw: dict[str, Any]) -> TranscriptionOptions:
    langs = tuple(x.strip() for x in kw.pop("candidate_languages", "").split(",") if x.strip())
    return TranscriptionOptions(language=kw.pop("language"), engine=kw.pop("engine"), nbest=kw.pop("nbest"),
                                word_timestamps=kw.pop("word_timestamps"), profanity=kw.pop("profanity"),
                                diarization=kw.pop("diarization"), candidate_languages=langs)


def settings_for(broker: str | None) -> Settings:
    return Settings.from_env(redis_url=broker)
