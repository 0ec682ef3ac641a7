"""`producer.watch` without real time: a file is handed on once it has held still for the quiet period,
once per version; batches leave at most once per window or at once when full; the Watcher mirrors
the folders as `submit` does. Files are real (tmp_path); the clock is moved by hand."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.common.errors import InputError
from batchscribe.producer.discover import discover
from batchscribe.producer.watch import Batching, Settling, Watcher, WatchPolicy, network_mounts
from tests.support.clock import ManualClock

QUIET = 5.0


def write(path: Path, data: bytes = b"RIFF....", append: bool = False) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab" if append else "wb") as fh:
        fh.write(data)
    return str(path)


def noted(tmp_path: Path) -> tuple[ManualClock, Settling, str]:
    """A clock at 0 and a Settling that has just noted a new file, call.wav."""
    clock = ManualClock(0)
    settling = Settling(QUIET, clock)
    path = write(tmp_path / "call.wav")
    settling.note(path)
    return clock, settling, path


def test_a_file_still_growing_is_not_ready_until_it_holds_still_for_the_quiet_period(tmp_path: Path) -> None:
    clock, settling, path = noted(tmp_path)
    for _ in range(4):  # a slow copy: a chunk every 3 s, never quiet for 5 s
        clock.advance(3)
        write(tmp_path / "call.wav", b"more", append=True)
        assert settling.settled() == []
    clock.advance(QUIET - 0.1)
    assert settling.settled() == []
    clock.advance(0.1)
    assert settling.settled() == [path]
    assert settling.settled() == [] and len(settling) == 0


def test_a_change_found_only_at_the_final_check_restarts_the_quiet_period(tmp_path: Path) -> None:
    """No event arrived for the last write (missed, or still in flight): the re-stat catches it."""
    clock, settling, path = noted(tmp_path)
    clock.advance(QUIET)
    write(tmp_path / "call.wav", b"late chunk", append=True)
    assert settling.settled() == []
    clock.advance(QUIET)
    assert settling.settled() == [path]


def test_each_version_is_handed_on_once_and_a_file_that_lands_again_counts(tmp_path: Path) -> None:
    clock, settling, path = noted(tmp_path)
    clock.advance(QUIET)
    assert settling.settled() == [path]
    settling.note(path)  # an event for the version already handed on (e.g. close after write)
    assert len(settling) == 0
    write(tmp_path / "call.wav", b"a new recording")  # changed in place
    settling.note(path)
    clock.advance(QUIET)
    assert settling.settled() == [path]
    mtime = os.stat(path).st_mtime_ns
    os.unlink(path)
    settling.note(path)  # deleted
    write(tmp_path / "call.wav", b"a new recording")  # the same bytes and mtime land again
    os.utime(path, ns=(mtime, mtime))
    settling.note(path)
    clock.advance(QUIET)
    assert settling.settled() == [path]


def test_a_file_gone_before_it_settled_is_dropped(tmp_path: Path) -> None:
    clock, settling, path = noted(tmp_path)
    os.unlink(path)
    clock.advance(QUIET)
    assert settling.settled() == [] and len(settling) == 0


def test_a_poll_that_sees_a_file_late_counts_its_mtime_age_up_to_the_poll_interval(tmp_path: Path) -> None:
    clock, wall = ManualClock(0), ManualClock(10_000)
    settling = Settling(QUIET, clock, seen_late=1.0, wall=wall)
    landed_earlier = write(tmp_path / "a.wav")
    os.utime(landed_earlier, (wall.now - 0.6, wall.now - 0.6))  # unchanged for 0.6 s when first seen
    landed_long_ago = write(tmp_path / "b.wav")
    os.utime(landed_long_ago, (wall.now - 3600, wall.now - 3600))  # credited 1 s at most
    written_now = write(tmp_path / "c.wav")
    os.utime(written_now, (wall.now + 30, wall.now + 30))  # a file server's clock ahead: no credit
    for path in (landed_earlier, landed_long_ago, written_now):
        settling.note(path)
    clock.advance(QUIET - 1.0)
    assert settling.settled() == [landed_long_ago]
    clock.advance(0.5)
    assert settling.settled() == [landed_earlier]  # due at 4.4
    clock.advance(0.5)
    assert settling.settled() == [written_now]


def test_batches_leave_at_most_once_per_window_or_at_once_when_full() -> None:
    clock = ManualClock(0)
    batching = Batching(window=10, max_files=3, clock=clock)
    batching.add(["a"])
    assert batching.take() == ["a"]  # the first batch does not wait
    batching.add(["b", "c"])
    assert batching.take() == []
    clock.advance(9.9)
    batching.add(["d"])
    assert batching.take() == ["b", "c", "d"]  # full: at once
    batching.add(["e"])
    clock.advance(9.9)
    assert batching.take() == []
    clock.advance(0.1)
    assert batching.take() == ["e"]
    batching.add([f"f{i}" for i in range(7)])
    assert [len(batching.take()) for _ in range(4)] == [3, 3, 0, 0]  # a backlog leaves batch after batch
    clock.advance(10)
    assert batching.take() == ["f6"]


def _watcher(tmp_path: Path, folders: list[Path], out: Path, batches: list[list[tuple[str, str]]],
             clock: ManualClock, window: float = 0.0) -> Watcher:
    return Watcher(folders, out, batches.append, WatchPolicy(QUIET, window, 100), clock)


def test_the_watcher_hands_on_what_submit_would_find_with_the_same_relative_paths(tmp_path: Path) -> None:
    for rel in ("a/in/x.wav", "a/in/sub/y.mp3", "b/in/x.wav", "a/in/notes.txt"):
        write(tmp_path / rel)
    out = tmp_path / "a" / "in" / "out"  # inside a watched folder: never watched
    write(out / "old.wav")
    (tmp_path / "a/in/link").symlink_to(tmp_path / "b/in")  # symlinked folders are not followed
    folders = [tmp_path / "a/in", tmp_path / "b/in"]
    clock, batches = ManualClock(0), []
    watcher = _watcher(tmp_path, folders, out, batches, clock)
    watcher.run([set()], threading.Event())
    clock.advance(QUIET)
    watcher.tick()
    assert len(batches) == 1 and sorted(batches[0]) == sorted(discover(folders, exclude=[out]).files)
    assert sorted(rel for _, rel in batches[0]) == ["a/in/sub/y.mp3", "a/in/x.wav", "b/in/x.wav"]


def test_events_renames_and_new_folders_reach_the_batch_once(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    clock, batches = ManualClock(0), []
    watcher = _watcher(tmp_path, [root], out, batches, clock)
    watcher.run([set()], threading.Event())
    staged = write(tmp_path / "staging" / "r.wav")
    os.rename(staged, root / "r.wav")  # renamed in
    moved = tmp_path / "day1"
    write(moved / "deep" / "m.wav")
    os.rename(moved, root / "day1")  # a whole folder moved in: one event, for the folder
    write(out / "x_wav.json")
    write(root / "ignored.txt")
    watcher.changed({str(root / "r.wav"), str(root / "day1"), str(out / "x_wav.json"), str(root / "ignored.txt"),
                     str(root / "r.wav")})
    watcher.changed({str(root / "r.wav")})  # the same file again
    clock.advance(QUIET)
    watcher.tick()
    assert sorted(batches[0]) == [(str(root / "day1/deep/m.wav"), "day1/deep/m.wav"),
                                  (str(root / "r.wav"), "r.wav")]
    assert len(batches) == 1
    watcher.changed({str(root / "r.wav")})
    clock.advance(QUIET)
    watcher.tick()
    assert len(batches) == 1


def test_outputs_written_into_the_watched_folder_itself_do_not_stop_it_being_watched(tmp_path: Path) -> None:
    """batch-kit users may give one folder as input and output: `submit` walks it, so `watch` does."""
    root = tmp_path / "calls"
    clock, batches = ManualClock(0), []
    root.mkdir()
    watcher = _watcher(tmp_path, [root], root, batches, clock)
    path = write(root / "..odd name.wav")
    watcher.changed({path, str(root / "..odd name_wav.json")})
    clock.advance(QUIET)
    watcher.tick()
    assert batches == [[(path, "..odd name.wav")]]


def test_a_file_changed_again_while_waiting_for_its_batch_waits_for_its_new_version(tmp_path: Path) -> None:
    root = tmp_path / "in"
    clock, batches = ManualClock(0), []
    path = write(root / "a.wav")
    watcher = _watcher(tmp_path, [root], tmp_path / "out", batches, clock, window=10)
    watcher.changed({path})
    clock.advance(QUIET)
    watcher.tick()
    assert len(batches) == 1  # t=5: the first batch leaves at once
    other = write(root / "b.wav")
    watcher.changed({other})
    clock.advance(QUIET)
    watcher.tick()  # t=10: b is ready, its batch waits for the window (t=15)
    clock.advance(2)
    write(root / "b.wav", b"rewritten", append=True)
    watcher.changed({other})  # t=12: b changes again
    clock.advance(3)
    watcher.tick()
    assert len(batches) == 1  # t=15: the window is over, but b's old version is not handed on
    clock.advance(2)
    watcher.tick()
    assert batches[1] == [(other, "b.wav")]  # t=17: its new version has held still


def test_a_stop_ends_the_loop_and_holds_back_a_backlog(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for i in range(5):
        write(root / f"{i}.wav")
    clock = ManualClock(0)
    stop = threading.Event()
    batches: list[list[tuple[str, str]]] = []

    def submit(files: list[tuple[str, str]]) -> None:
        batches.append(files)
        stop.set()  # SIGTERM while the first batch is being submitted

    watcher = Watcher([root], tmp_path / "out", submit, WatchPolicy(0, 0, 2), clock)
    watcher.run([set(), set(), set()], stop)
    assert len(batches) == 1


def test_a_watched_folder_that_goes_away_ends_the_watch_with_a_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    watcher = _watcher(tmp_path, [root], tmp_path / "out", [], ManualClock(0))

    def events() -> Iterator[set[str]]:
        yield set()
        root.rmdir()  # unmounted, or removed
        yield {str(root)}

    with pytest.raises(InputError, match=f"the watched folder {root} went away"):
        watcher.run(events(), threading.Event())


def test_watch_takes_folders_only(tmp_path: Path) -> None:
    write(tmp_path / "x.wav")
    with pytest.raises(InputError, match="not a folder"):
        Watcher([tmp_path / "x.wav"], tmp_path / "out", print, WatchPolicy(), ManualClock(0))
    with pytest.raises(InputError, match="not a folder"):
        Watcher([tmp_path / "missing"], tmp_path / "out", print, WatchPolicy(), ManualClock(0))


MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/nfs nfs4 rw,vers=4.2 0 0
//host/share /mnt/my\\040share cifs rw 0 0
/dev/sdb1 /mnt/nfs/local ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


def test_network_file_systems_are_found_from_the_innermost_mount() -> None:
    folders = [Path("/mnt/nfs/calls"), Path("/mnt/my share/in"), Path("/mnt/nfs/local/x"), Path("/tmp/a"),
               Path("/home/u")]
    assert network_mounts(folders, MOUNTS) == [(Path("/mnt/nfs/calls"), "nfs4"), (Path("/mnt/my share/in"), "cifs")]
    assert network_mounts([Path("/mnt/nfsx")], MOUNTS) == []  # a sibling whose name only starts the same
