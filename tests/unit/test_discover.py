"""Discovery: every input gets a relative path of its own, so no two inputs share an output."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscribe.common.conversion import ConversionOptions
from batchscribe.common.errors import InputError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.producer.discover import discover, root_labels
from batchscribe.producer.submit import unique_outputs


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"RIFF")


def rels(found: list[tuple[str, str]]) -> list[str]:
    return [rel for _, rel in found]


def test_roots_are_labelled_by_their_shortest_distinct_tail() -> None:
    roots = [Path("/x/a/in"), Path("/y/b/in"), Path("/m/calls"), Path("/t/c/x.wav"), Path("/t/d/x.wav")]
    assert root_labels(roots) == ["a/in", "b/in", "calls", "c/x.wav", "d/x.wav"]


def test_two_roots_with_one_name_and_files_given_directly(tmp_path: Path) -> None:
    touch(tmp_path, "a/in/ok.wav", "b/in/ok.wav", "b/in/sub/deep.mp3", "c/x.wav", "d/x.wav")
    found = discover([tmp_path / "a/in", tmp_path / "b/in", tmp_path / "c/x.wav", tmp_path / "d/x.wav"])
    assert rels(found.files) == ["a/in/ok.wav", "b/in/ok.wav", "b/in/sub/deep.mp3", "c/x.wav", "d/x.wav"]
    assert rels(discover([tmp_path / "a/in"]).files) == ["ok.wav"]  # one root: the tree under it
    assert rels(discover([tmp_path / "c/x.wav"]).files) == ["x.wav"]


def test_a_file_found_twice_is_one_input(tmp_path: Path) -> None:
    touch(tmp_path, "in/sub/x.wav")
    found = discover([tmp_path / "in", tmp_path / "in", tmp_path / "in/sub"])
    assert rels(found.files) == ["in/sub/x.wav"]


def test_symlinked_folders_are_listed_not_followed(tmp_path: Path) -> None:
    touch(tmp_path, "in/a.wav", "elsewhere/z.wav")
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "more").symlink_to(tmp_path / "elsewhere")
    found = discover([tmp_path / "in"])
    assert rels(found.files) == ["a.wav"]
    assert found.links == [str(tmp_path / "in" / "loop"), str(tmp_path / "in" / "more")]


def test_inputs_that_would_still_share_an_output_refuse_the_batch(tmp_path: Path) -> None:
    # /q is labelled "q" and /z/q/in "q/in": q/in/x.wav of the first and x.wav of the second meet
    touch(tmp_path, "q/in/x.wav", "z/q/in/x.wav", "w/in/y.wav")
    found = discover([tmp_path / "q", tmp_path / "z/q/in", tmp_path / "w/in"])
    with pytest.raises(InputError, match=r"q/in/x\.wav and .*z/q/in/x\.wav would both be written to "
                                         r".*/out/q/in/x_wav\.json"):
        unique_outputs(str(tmp_path / "out"), found.files, TranscriptionOptions())


def test_conversions_refuse_two_inputs_of_one_stem_and_an_output_over_its_input(tmp_path: Path) -> None:
    touch(tmp_path, "in/talk.mp4", "in/talk.mov", "in/other.mp4")
    found = discover([tmp_path / "in"])
    mp3 = ConversionOptions("mp3")
    with pytest.raises(InputError, match=r"talk\.mov and .*talk\.mp4 would both be written to .*/out/talk\.mp3"):
        unique_outputs(str(tmp_path / "out"), found.files, mp3)
    touch(tmp_path, "songs/a.mp3")
    same = discover([tmp_path / "songs"])
    with pytest.raises(InputError, match=r"songs/a\.mp3 is an input and would be overwritten"):
        unique_outputs(str(tmp_path / "songs"), same.files, mp3)
    assert unique_outputs(str(tmp_path / "out"), discover([tmp_path / "in/other.mp4"]).files, mp3) == [
        str(tmp_path / "out" / "other.mp3")]
