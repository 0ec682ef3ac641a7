"""What a waiting command shows while a batch runs, with `rich`: one live display on a terminal,
plain lines every `PLAIN_EVERY` seconds otherwise (CI logs, `nohup`, a pipe).

The display knows nothing of Redis: it shows a `Progress` snapshot, which the waiting loop
(`producer.progress`) builds from the batch each tick; any kind of batch that counts files and
audio (transcription, conversion) can fill one in, with its own `title`.

Names come from users: every text goes in as a `rich.text.Text` on a console with markup, emoji
and highlighting off, so ``[red]`` or ``:smile:`` in a file name is printed as it is, and names are
escaped for the terminal first (`common.names.printable`). `NO_COLOR` is honoured (rich reads it);
`TTY_COMPATIBLE` / `TTY_INTERACTIVE` force or refuse the live display.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich import box
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from batchscribe.common.names import printable

PLAIN_EVERY = 10.0  # seconds between plain progress lines
WIDE = 10_000  # the width of a console that is not a terminal: never wrap a line a script may read


def console_for(stream: TextIO) -> Console:
    """A console on `stream` that interprets nothing in the text it is given."""
    terminal = Console(file=stream).is_terminal
    return Console(file=stream, markup=False, emoji=False, highlight=False,
                   width=None if terminal else WIDE, soft_wrap=not terminal)


def fmt_hours(seconds: float, like: float | None = None) -> str:
    """Audio in hours, or minutes below 6 min; `like`: choose the unit by this amount (a total), so
    that "done of total" reads in one unit."""
    scale = seconds if like is None else like
    return f"{seconds / 3600:.2f} h" if scale >= 360 else f"{seconds / 60:.1f} min"


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@dataclass
class Progress:
    """One batch now, as a display shows it."""

    batch_id: str
    title: str  # what is being done: "transcribing", "converting", …
    done: int  # files settled (done, failed or cancelled)
    total: int
    audio_done: float  # seconds
    audio_total: float
    elapsed: float
    eta: float | None  # seconds left; None: not known yet, or finished
    complete: bool
    failed: int = 0
    failed_by_class: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    in_flight: dict[str, int] = field(default_factory=dict)  # by endpoint (all its batches)
    waiting: str = ""  # why nothing takes the batch's files ("" = something does)

    @property
    def speed(self) -> float:
        return self.audio_done / max(self.elapsed, 1e-6)

    def eta_text(self) -> str:
        if self.complete:
            return f"done in {fmt_duration(self.elapsed)}"
        return f"ETA {fmt_duration(self.eta)}" if self.eta is not None else "ETA …"

    def failures_text(self) -> str:
        classes = ", ".join(f"{cls} {n}" for cls, n in sorted(self.failed_by_class.items()))
        return f"failed {self.failed}" + (f" ({classes})" if classes else "")

    def in_flight_text(self) -> str:
        return ", ".join(f"{printable(ep)} {n}" for ep, n in sorted(self.in_flight.items()))


def plain_line(p: Progress) -> str:
    """The progress in one line (plain output, run.log)."""
    percent = 100 * p.done // p.total if p.total else 100
    parts = [f"{p.done}/{p.total} files ({percent}%)",
             f"{fmt_hours(p.audio_done, p.audio_total)}/{fmt_hours(p.audio_total)} audio",
             f"{p.speed:.1f}× real time", p.eta_text()]
    if p.in_flight and not p.complete:
        parts.append(f"in flight: {p.in_flight_text()}")
    if p.cancelled:
        parts.append(f"cancelled {p.cancelled}")
    if p.failed:
        parts.append(p.failures_text())
    if p.waiting:
        parts.append(f"waiting: {p.waiting.split(':', 1)[0]}")
    return " · ".join(parts)


def live_view(p: Progress) -> RenderableType:
    """The live display: a bar and a few labelled rows."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=max(p.total, 1), completed=p.done if p.total else 1, width=40),
                Text(f"{p.done}/{p.total} files", style="bold"))
    grid.add_row(Text(f"{p.title} {p.batch_id}"), bar)
    audio = f"{fmt_hours(p.audio_done, p.audio_total)} of {fmt_hours(p.audio_total)}"
    grid.add_row(Text("audio"), Text(f"{audio} · {p.speed:.1f}× real time · {p.eta_text()}"))
    if p.in_flight and not p.complete:
        grid.add_row(Text("in flight"), Text(p.in_flight_text()))
    if p.failed:
        grid.add_row(Text("failed", style="red"), Text(p.failures_text()[len("failed "):], style="red"))
    if p.cancelled:
        grid.add_row(Text("cancelled", style="yellow"), Text(str(p.cancelled)))
    if p.waiting:
        grid.add_row(Text("waiting", style="yellow"), Text(printable(p.waiting), style="yellow"))
    return grid


class Display:
    """Shows successive snapshots of one batch: live on an interactive terminal, else plain lines."""

    def __init__(self, stream: TextIO) -> None:
        self.console = console_for(stream)
        self.live: Live | None = None
        self._last_plain = float("-inf")
        if self.console.is_interactive:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()

    def update(self, p: Progress) -> None:
        if self.live is not None:
            self.live.update(live_view(p), refresh=True)
            return
        now = time.monotonic()
        if p.complete or now - self._last_plain >= PLAIN_EVERY:
            self._last_plain = now
            self.console.print(Text(plain_line(p)))

    def note(self, message: str) -> None:
        """A line above the live display (or among the plain lines)."""
        self.console.print(Text(printable(message), style="yellow"))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def table(*columns: str, right: tuple[str, ...] = ()) -> Table:
    """A `status` table: a header, no borders (its rows split on whitespace, as scripts read them).
    On a narrow terminal only the last column (free text: a path, a note) wraps; ids and counts
    are never cut."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        last = name == columns[-1]
        t.add_column(name, justify="right" if name in right else "left", no_wrap=not last,
                     overflow="fold" if last else "ellipsis", min_width=None if last else len(name))
    return t


def texts(lines: list[str], style: str | None = None) -> list[Text]:
    """Lines already made printable, as text that is never read as markup."""
    return [Text(line, style=style or "") for line in lines]


def cells(*values: object) -> list[Text]:
    """Table cells as plain text (escaped for the terminal, never read as markup)."""
    return [Text(printable(str(v))) for v in values]


class SubmitLines:
    """A submit's progress while it discovers, fingerprints and queues (`producer.submit.SubmitProgress`):
    one plain line on `stream` every `every` seconds, the first after `first` seconds — a small batch
    prints nothing, a million files (minutes) show that they move."""

    def __init__(self, stream: TextIO, every: float = 5.0, first: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console_for(stream)
        self.every, self.first, self.clock = every, first, clock
        self.started = clock()
        self.last: float | None = None

    def __call__(self, progress: Any) -> None:
        now = self.clock()
        if now - self.started < self.first or (self.last is not None and now - self.last < self.every):
            return
        self.last = now
        rate = progress.hashed / max(now - self.started, 1e-9)
        line = f"batch {progress.batch_id}: {progress.found:,} files found and fingerprinted"
        if progress.phase == "queueing":
            line += f", {progress.queued:,} of {progress.hashed:,} queued"
        else:
            line += f" ({rate:,.0f}/s) so far"
        self.console.print(Text(printable(line)))
