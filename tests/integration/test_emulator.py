"""The emulator as a container: HTTP probes, control API, faults, capacity, CLI — real SDK where it counts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from batchscribe.common.errors import TransientError
from batchscribe.common.models import TranscriptionOptions
from batchscribe.emulator import FaultMode, duration_text
from batchscribe.worker.engines.azure import AzureEngine
from tests.support.emulator import (
    EmulatorProcess,
    endpoint_for,
    http_get,
    running_emulator,
    tone_wav,
)
from tests.support.threads import run_concurrently

pytestmark = pytest.mark.timeout(60)


def test_ready_and_status_answer_like_a_container() -> None:
    with running_emulator() as emu:
        port = emu.ports[0]
        assert http_get(port, "/ready") == (200, {"message": "ready"})
        status, body = http_get(port, "/status")
        assert status == 200 and body["apiStatus"] == "Valid"
        emu.set_fault(port, "unready")
        assert http_get(port, "/ready")[0] == 503
        emu.reset(port)
        assert http_get(port, "/ready")[0] == 200


def test_control_api_sets_faults_over_http_and_rejects_bad_modes() -> None:
    with running_emulator(ports=2) as emu:
        a, b = emu.ports
        status, body = http_get(a, "/control/fault?mode=http429&rate=0.5&count=3")
        assert status == 200 and body["fault"] == {"mode": "http429", "rate": 0.5, "count": 3}
        assert http_get(a, "/control/fault?mode=explode")[0] == 400
        # A refused port no longer listens: a sibling port lifts the fault.
        assert http_get(a, "/control/fault?mode=refuse")[0] == 200
        with pytest.raises(OSError):
            http_get(a, "/ready")
        assert http_get(b, f"/control/reset?port={a}")[0] == 200
        assert http_get(a, "/ready")[0] == 200


@pytest.mark.parametrize("query", ["mode=refuse&for=nan", "mode=refuse&for=inf", "mode=refuse&for=-1",
                                   "mode=refuse&for=soon", "mode=http429&rate=nan", "mode=http429&rate=-0.5",
                                   "mode=http429&rate=inf", "mode=http429&count=-1"])
def test_control_api_rejects_nan_infinite_and_negative_numbers(query: str) -> None:
    """`for=nan` would leave a port refused for ever, `for=-1` lift it before it was set: 400, and
    the port keeps its current fault (none: it still listens)."""
    with running_emulator() as emu:
        port = emu.ports[0]
        status, body = http_get(port, f"/control/fault?{query}")
        assert status == 400 and "must be" in body["error"], body
        assert http_get(port, "/ready")[0] == 200
        assert http_get(port, "/control/stats")[0] == 200


def test_refuse_for_a_while_lifts_by_itself() -> None:
    with running_emulator() as emu:
        port = emu.ports[0]
        emu.set_fault(port, FaultMode.REFUSE, lift_after=0.3)
        with pytest.raises(OSError):
            http_get(port, "/ready")
        threading.Event().wait(0.6)
        assert http_get(port, "/ready")[0] == 200


def test_capacity_refuses_the_extra_session_with_429(tmp_path: Path) -> None:
    """Capacity 1, two files at once: one is served, the other sees 429 (TooManyRequests)."""
    audio = tone_wav(tmp_path / "a.wav", 3.0)
    with running_emulator(capacity=1, rtf=1.0) as emu:  # each file holds its session ~3 s
        port = emu.ports[0]
        engine = AzureEngine(endpoint_for(port, rtf=1000.0))
        outcomes: list[object] = []

        def one() -> None:
            try:
                outcomes.append(engine.transcribe(audio, TranscriptionOptions()))
            except TransientError as exc:
                outcomes.append(exc)

        run_concurrently(one, [(), ()], timeout=30)
        stats = emu.stats(port)
        engine.close()
    errors = [o for o in outcomes if isinstance(o, TransientError)]
    assert len(outcomes) == 2 and len(errors) == 1, outcomes
    assert "TooManyRequests" in errors[0].reason
    assert stats["max_active"] == 1 and stats["refused"]["capacity"] >= 1


def test_count_limits_a_fault_to_the_next_sessions(tmp_path: Path) -> None:
    """`count=1`: the first session is refused with 429, the SDK's own reconnect then succeeds."""
    audio = tone_wav(tmp_path / "a.wav", 1.0)
    with running_emulator() as emu:
        port = emu.ports[0]
        emu.set_fault(port, "http429", count=1)
        engine = AzureEngine(endpoint_for(port))
        result = engine.transcribe(audio, TranscriptionOptions())
        engine.close()
        assert result.phrases[0]["DisplayText"] == duration_text(1.0)
        assert emu.stats(port)["refused"] == {"http429": 1}


def test_cli_serves_several_independent_ports(tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 2.0)
    with EmulatorProcess("--rtf", "0", "--transcribe", "fixed", "--text", "hello there", ports=2) as emu:
        ports = emu.ports
        for port in ports:
            assert http_get(port, "/ready")[0] == 200
        engine = AzureEngine(endpoint_for(ports[0]))
        result = engine.transcribe(audio, TranscriptionOptions())
        engine.close()
        assert result.phrases[0]["DisplayText"] == "hello there"
        assert http_get(ports[0], "/control/stats")[1]["sessions_total"] == 1
        assert http_get(ports[1], "/control/stats")[1]["sessions_total"] == 0


def test_audio_is_acknowledged_while_it_arrives(tmp_path: Path) -> None:
    """A 30 s file at emulator rtf 10 (upload unthrottled): progress arrives in steps paced by the
    rtf, long before the final phrase, and the file takes about audio / rtf."""
    audio = tone_wav(tmp_path / "a.wav", 30.0)
    with running_emulator(rtf=10.0) as emu:
        engine = AzureEngine(endpoint_for(emu.ports[0]))
        seen: list[tuple[float, float]] = []
        started = time.monotonic()
        result = engine.transcribe(audio, TranscriptionOptions(),
                                   progress=lambda s: seen.append((time.monotonic() - started, s)))
        elapsed = time.monotonic() - started
        engine.close()
        session = emu.stats(emu.ports[0])["sessions"][-1]
    assert [p["DisplayText"] for p in result.phrases] == [duration_text(30.0)]
    assert 2.9 <= elapsed < 4.5
    early = [heard for at, heard in seen if at < 2.0]
    assert early and 0 < max(early) < 25.0  # partial progress, never ahead of rtf 10
    assert seen[-1][1] == pytest.approx(30.0, abs=0.01)
    assert session["turns"] == 1 and session["phrases"] >= 6  # ≥ 5 word-less + the final one


def test_fixed_text_comes_once_for_a_long_file(tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 45.0)
    with running_emulator(transcribe="fixed", text="hello there") as emu:
        engine = AzureEngine(endpoint_for(emu.ports[0]))
        result = engine.transcribe(audio, TranscriptionOptions())
        engine.close()
        session = emu.stats(emu.ports[0])["sessions"][-1]
    assert [p["DisplayText"] for p in result.phrases] == ["hello there"]
    assert session["turns"] == 1 and session["phrases"] >= 45.0 / 10  # a phrase per ≤ 10 s of audio
