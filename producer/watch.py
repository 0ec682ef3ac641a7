"""Watch folders: submit every media file once it has landed, in batches, until stopped.

`batchscribe watch` is three parts with the clock passed in (tests drive them without real time):

* `Settling` — a file is ready once its size and mtime have held still for the quiet period, so a
  file still being copied is not submitted half-way. Once submitted it comes back only when its
  size or mtime changes (a new version: transcribed again; the same bytes touched: dedupe, no
  engine call) or it is deleted and lands again.
* `Batching` — ready files leave in batches: at most one per `window` seconds, or at once when
  `max_files` are ready. Submitting never waits for transcription, so batches run concurrently.
* `Watcher` — feeds them from a scan of the folders (what is already there, found as `submit`
  finds it) and from file-system events (`file_events`: watchfiles, inotify where the file system
  has it, polling on NFS/SMB), and hands each batch over with the relative paths `submit DIR…`
  gives, so the output tree mirrors the watched folders.

A folder that appears (moved or renamed in, or made and filled before its watch was set up) is
scanned. Paths under the output folder and through symlinked folders are ignored, as `discover`
ignores them.
"""

from __future__ import annotations

import heapq
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from batchscribe.common.errors import InputError
from batchscribe.common.media import is_media
from batchscribe.producer.discover import discover, root_labels

Signature = tuple[int, int]  # size in bytes, mtime in ns
Clock = Callable[[], float]
Stat = Callable[[str], "Signature | None"]
SubmitFiles = Callable[[list[tuple[str, str]]], None]  # (absolute path, relative path) per file

# File systems whose changes made by other machines never reach inotify: poll there.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs",
    "beegfs", "ocfs2", "gfs2", "virtiofs", "vboxsf", "davfs", "fuse.sshfs", "fuse.glusterfs",
    "fuse.cephfs", "fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.vmhgfs-fuse", "fuse.juicefs",
})


@dataclass(frozen=True)
class WatchPolicy:
    quiet_period: float = 5.0  # seconds a file's size and mtime must hold still
    batch_window: float = 2.0  # at most one batch per this many seconds ...
    batch_files: int = 500  # ... or at once when this many files are ready
    seen_late: float = 0.0  # how late a change may be noticed (the poll interval when polling)


def stat_signature(path: str) -> Signature | None:
    """A regular file's (size, mtime_ns); None when it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


class Settling:
    """Files seen appearing or changing, until they have held still for the quiet period.

    The quiet period runs from when a version was first seen, or from its mtime when that is
    earlier by at most `seen_late` seconds: a poll sees a file up to one interval after it landed,
    and its mtime says how long it has held still since. The cap bounds what a clock skew between
    a file server and this machine can take off the quiet period.
    """

    def __init__(self, quiet_period: float, clock: Clock, stat: Stat = stat_signature, seen_late: float = 0.0,
                 wall: Clock = time.time) -> None:
        self.quiet_period = quiet_period
        self.clock = clock
        self.stat = stat
        self.seen_late = seen_late
        self.wall = wall  # the clock mtimes are on
        self._pending: dict[str, tuple[Signature, float]] = {}  # path -> (signature, since)
        self._queue: list[tuple[float, str]] = []  # heap of (since, path); entries since replaced: skipped
        self._submitted: dict[str, Signature] = {}  # the version of each file handed on

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: str) -> bool:
        return path in self._pending

    def note(self, path: str) -> None:
        """A file appeared, changed or went away: follow it until it holds still."""
        signature = self.stat(path)
        if signature is None:  # gone: a file that lands there again is a new file
            self._pending.pop(path, None)
            self._submitted.pop(path, None)
            return
        held = self._pending.get(path)
        if held is not None and held[0] == signature:
            return
        if held is None and self._submitted.get(path) == signature:
            return  # an event for the version already handed on
        age = self.wall() - signature[1] / 1e9
        self._hold(path, signature, self.clock() - min(max(age, 0.0), self.seen_late))

    def settled(self) -> list[str]:
        """Files unchanged for the quiet period (checked once more now), each version once."""
        now = self.clock()
        ready, rewritten = [], []
        while self._queue and now - self._queue[0][0] >= self.quiet_period:
            since, path = heapq.heappop(self._queue)
            held = self._pending.get(path)
            if held is None or held[1] != since:
                continue  # replaced by a later version, or gone
            del self._pending[path]
            current = self.stat(path)
            if current is None:
                self._submitted.pop(path, None)
            elif current != held[0]:  # still being written: a full quiet period again
                rewritten.append((path, current))
            else:
                self._submitted[path] = current
                ready.append(path)
        for path, signature in rewritten:
            self._hold(path, signature, now)
        return ready

    def _hold(self, path: str, signature: Signature, since: float) -> None:
        self._pending[path] = (signature, since)
        heapq.heappush(self._queue, (since, path))


class Batching:
    """Ready files leave in batches: at most one per `window` seconds, or at once at `max_files`."""

    def __init__(self, window: float, max_files: int, clock: Clock) -> None:
        self.window = window
        self.max_files = max_files
        self.clock = clock
        self._ready: dict[str, None] = {}  # an ordered set
        self._last = float("-inf")

    def __len__(self) -> int:
        return len(self._ready)

    def add(self, paths: Iterable[str]) -> None:
        self._ready.update(dict.fromkeys(paths))

    def discard(self, path: str) -> None:
        self._ready.pop(path, None)

    def take(self) -> list[str]:
        """The next batch, or [] when none is due yet."""
        now = self.clock()
        if not self._ready or (len(self._ready) < self.max_files and now - self._last < self.window):
            return []
        batch = list(islice(self._ready, self.max_files))
        for path in batch:
            del self._ready[path]
        self._last = now
        return batch


class Watcher:
    """Scan the folders, follow their changes, and hand settled files on in batches."""

    def __init__(self, folders: Sequence[str | Path], out: str | Path, submit: SubmitFiles,
                 policy: WatchPolicy, clock: Clock, stat: Stat = stat_signature) -> None:
        self.roots = watched_folders(folders)
        self.labels = root_labels(self.roots) if len(self.roots) > 1 else [""]
        self.out = str(Path(out).expanduser().resolve())
        # as in `discover`: the output folder is left out where it sits inside a watched folder
        self.skipped = self.out if any(_within(self.out, str(r)) and self.out != str(r) for r in self.roots) \
            else None
        self.submit = submit
        self.settling = Settling(policy.quiet_period, clock, stat, policy.seen_late)
        self.batching = Batching(policy.batch_window, policy.batch_files, clock)

    def run(self, events: Iterable[Iterable[str]], stop: threading.Event) -> None:
        """Follow `events` (sets of changed paths, empty ones as ticks) until they end or `stop`.

        The folders are scanned once the first set arrives: the watch is set up by then, so a file
        that lands during the scan is seen by one or the other (or both: it is noted once).
        """
        scanned = False
        for changed in events:
            if not scanned:
                self.scan(self.roots)
                scanned = True
            self.changed(changed)
            self.tick(stop)
            if stop.is_set():
                return
            gone = [str(root) for root in self.roots if not root.is_dir()]
            if gone:  # its watch went with it: nothing more would ever be seen there
                raise InputError(f"the watched folder {', '.join(gone)} went away; start watch again once "
                                 "it is back")

    def scan(self, folders: Sequence[str | Path]) -> None:
        """Note every media file under `folders` as `submit` finds it (no symlinked folders, no --out)."""
        try:
            found = discover(folders, exclude=[self.out])
        except InputError:  # a folder that went away again before we looked
            return
        for path, _ in found.files:
            self.settling.note(path)

    def changed(self, paths: Iterable[str]) -> None:
        for path in paths:
            if not self._watched(path):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                self.scan([path])  # moved in whole, or filled before its own watch was set up
            elif is_media(path):
                self.settling.note(path)
                if path in self.settling or not os.path.lexists(path):
                    self.batching.discard(path)  # changed again, or gone, before its batch left

    def tick(self, stop: threading.Event | None = None) -> None:
        """Move settled files on; submit every batch that is due (until `stop`: a backlog of many
        batches does not hold up a stop)."""
        self.batching.add(self.settling.settled())
        while not (stop is not None and stop.is_set()) and (batch := self.batching.take()):
            self.submit([(path, self.rel(path)) for path in batch])

    def rel(self, path: str) -> str:
        """The relative output path `submit` gives a file found under the watched folders."""
        for root, label in zip(self.roots, self.labels):
            if _within(path, str(root)):
                return os.path.join(label, os.path.relpath(path, root))
        raise ValueError(f"{path} is not under a watched folder")

    def _watched(self, path: str) -> bool:
        """Under a watched folder, not in the output folder, not reached through a symlinked folder."""
        parent = os.path.dirname(path)
        if os.path.realpath(parent) != parent:
            return False
        if self.skipped is not None and _within(path, self.skipped):
            return False
        return any(_within(path, str(root)) for root in self.roots)


def _within(path: str, folder: str) -> bool:
    """`path` is `folder` or lies under it (absolute, normalised paths)."""
    return os.path.commonpath([path, folder]) == folder


def watched_folders(folders: Sequence[str | Path]) -> list[Path]:
    """The folders as real paths (a folder given as a symlink is followed, as by `submit`)."""
    roots = [Path(f).expanduser() for f in folders]
    wrong = [str(f) for f in roots if not f.is_dir()]
    if wrong:
        raise InputError(f"not a folder (watch takes folders): {', '.join(wrong)}")
    return list(dict.fromkeys(f.resolve() for f in roots))


def file_events(folders: Sequence[Path], poll: bool, stop: threading.Event, tick: float = 0.25,
                poll_interval: float = 1.0) -> Iterator[set[str]]:
    """Changed paths under `folders` (recursive), a set at a time; an empty set at least every `tick`
    seconds, so settling moves on while nothing happens. Ends when `stop` is set.

    watchfiles (Rust `notify`): inotify, or with `poll` a re-listing every `poll_interval` seconds
    (NFS/SMB, where inotify never hears of other machines' writes). A rename into a folder is a
    change like any other.
    """
    import watchfiles

    try:
        for changes in watchfiles.watch(*folders, watch_filter=None, debounce=500, step=50, stop_event=stop,
                                        rust_timeout=max(1, int(tick * 1000)), yield_on_timeout=True,
                                        raise_interrupt=False, force_polling=poll,
                                        poll_delay_ms=max(1, int(poll_interval * 1000)),
                                        ignore_permission_denied=True):
            yield {path for _, path in changes}
    except OSError as exc:  # e.g. out of inotify watches on a huge tree
        hint = "" if poll else " (too many folders for inotify? raise fs.inotify.max_user_watches, or --poll)"
        where = ", ".join(map(str, folders))
        raise InputError(f"cannot watch {where}: {exc.strerror or exc}{hint}") from None


def network_mounts(folders: Sequence[Path], mounts: str) -> list[tuple[Path, str]]:
    """The folders that live on a network file system, with its type, from /proc/mounts text."""
    table = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            table.append((_unescape_mount(fields[1]), fields[2]))
    found = []
    for folder in folders:
        under = [(point, kind) for point, kind in table if _within(str(folder), point)]
        if under:
            # the innermost mount holds it; of two on one point, the later one (mounted over)
            _, kind = max(reversed(under), key=lambda entry: len(entry[0]))
            if kind in NETWORK_FS:
                found.append((folder, kind))
    return found


def _unescape_mount(field: str) -> str:
    r"""/proc/mounts writes a space in a mount point as \040 (tab \011, newline \012, backslash \134)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text(errors="surrogateescape")
    except OSError:  # not Linux: nothing known, inotify-style events (--poll to override)
        return ""
