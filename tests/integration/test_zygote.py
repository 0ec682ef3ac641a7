"""Consumers forked by the zygote (worker.zygote, worker.launch): real processes, real Celery CLI.

What a consumer started this way must be like, as if started as `python -m celery …`: its own
environment (not the supervisor's), its own session, the plain command line in `ps`, its output in
the log, an exit code for the pool (a signal's as -SIG), and no life beyond its zygote; and what
the zygote itself must withstand: a SIGTERM to the whole group, its own death (the next consumer
starts through a new one)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscribe.worker import launch
from batchscribe.worker.launch import GONE, Launcher, ZygoteConsumer
from batchscribe.worker.pool import PopenConsumer
from tests.support.cli import cli_env
from tests.support.poll import wait_for

PROBE = [sys.executable, "-m", "celery", "-A", "tests.support.zygote_probe"]
# A worker on the probe's in-memory broker: it runs until it is signalled.
WORKER = [*PROBE, "worker", "-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
          "-l", "WARNING"]


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    log = (tmp_path / "consumers.log").open("ab")
    launcher = Launcher(cli_env(), log)
    try:
        yield launcher
    finally:
        launcher.close()
        log.close()


def exited(consumer: ZygoteConsumer | object, timeout: float = 30) -> int:
    code: list[int] = []

    def ended() -> bool:
        value = consumer.poll()  # type: ignore[attr-defined]
        code[:] = [] if value is None else [value]
        return bool(code)

    wait_for(ended, timeout, "the consumer to exit")
    return code[0]


def test_a_forked_consumer_has_its_own_environment_session_title_and_log(launcher: Launcher,
                                                                          tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    env = {**cli_env(), "ZYGOTE_PROBE_OUT": str(report), "ONLY_IN_THIS_CONSUMER": "yes"}
    consumer = launcher.start([*PROBE, "report"], env)
    assert isinstance(consumer, ZygoteConsumer), "the consumer was not forked by the zygote"
    assert exited(consumer) == 0
    seen = json.loads(report.read_text())
    assert seen["pid"] == consumer.pid and seen["sid"] == consumer.pid  # its own session: killpg reaches it all
    assert seen["env"]["ONLY_IN_THIS_CONSUMER"] == "yes" and "SPT_NOENV" not in seen["env"]
    assert seen["argv"][1:] == ["-A", "tests.support.zygote_probe", "report"]
    assert seen["title"].split() == [sys.executable, "-m", "celery", "-A", "tests.support.zygote_probe", "report"]
    assert seen["stdin"] == os.devnull
    log = (tmp_path / "consumers.log").read_text()
    assert "probe loaded" in log and "software -> celery" in log  # stdout and Celery's report, in the log


def test_exit_codes_reach_the_pool_and_a_signal_reads_as_minus_sig(launcher: Launcher) -> None:
    failing = launcher.start([*PROBE, "no-such-command"], cli_env())
    assert exited(failing) == 2  # click's usage error
    killed, stopped = (launcher.start(WORKER, cli_env()) for _ in range(2))
    wait_for(lambda: "[celeryd" in Path(f"/proc/{stopped.pid}/cmdline").read_text(errors="replace"), 30,
             "the worker to start (Celery retitles it)")
    assert killed.poll() is None
    killed.signal(signal.SIGKILL)
    assert exited(killed) == -signal.SIGKILL
    stopped.signal(signal.SIGTERM)  # Celery's warm shutdown, as a planned stop of a consumer
    assert exited(stopped) == 0


def test_the_zygote_ignores_sigterm_and_its_death_takes_its_consumers_along(launcher: Launcher) -> None:
    first = launcher.start(WORKER, cli_env())
    assert isinstance(first, ZygoteConsumer)
    zygote = first.zygote
    os.kill(zygote.process.pid, signal.SIGTERM)  # as from a service manager stopping the whole group
    os.kill(zygote.process.pid, signal.SIGHUP)
    assert zygote.process.poll() is None and first.poll() is None
    os.kill(zygote.process.pid, signal.SIGKILL)
    assert exited(first) in (GONE, -signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{first.pid}").exists()
             or "Z" in Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[0], 10,
             "the orphaned consumer to die with its zygote")
    second = launcher.start([*PROBE, "report"], cli_env())
    assert isinstance(second, ZygoteConsumer) and second.zygote is not zygote  # a new zygote serves it
    assert exited(second) == 0


def test_a_zygote_that_does_not_answer_is_given_up_and_the_consumer_starts_plainly(
        launcher: Launcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    warm = launcher.start([*PROBE, "report"], cli_env())
    assert isinstance(warm, ZygoteConsumer) and exited(warm) == 0
    stuck = warm.zygote
    os.kill(stuck.process.pid, signal.SIGSTOP)
    monkeypatch.setattr(launch, "ANSWER_TIMEOUT", 1.0)
    report = tmp_path / "report.json"
    consumer = launcher.start([*PROBE, "report"], {**cli_env(), "ZYGOTE_PROBE_OUT": str(report)})
    assert isinstance(consumer, PopenConsumer)
    assert exited(consumer) == 0 and json.loads(report.read_text())["argv"][1:3] == ["-A", "tests.support.zygote_probe"]
    wait_for(lambda: stuck.process.poll() is not None, 10, "the stuck zygote to be killed")
    monkeypatch.undo()  # the new zygote may take more than a second to import on a loaded machine
    again = launcher.start([*PROBE, "report"], cli_env())  # the next start has a new zygote
    assert isinstance(again, ZygoteConsumer) and again.zygote is not stuck and exited(again) == 0
