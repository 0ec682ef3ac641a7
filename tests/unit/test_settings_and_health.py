"""Settings from the environment, and the health hysteresis (the circuit breaker: tests/integration/
test_supervisor.py)."""

from __future__ import annotations

import pytest
from kombu import Connection

from batchscribe.common.celery_app import kombu_broker_url
from batchscribe.common.errors import ConfigError
from batchscribe.common.settings import Settings, redact
from batchscribe.worker.health import HealthState, ProbeResult


def test_settings_round_trip_through_the_environment() -> None:
    env = {"BATCHSCRIBE_REDIS_URL": "redis://:pw@h:6380/2", "BATCHSCRIBE_VISIBILITY_TIMEOUT": "90",
           "BATCHSCRIBE_TRANSIENT_ATTEMPTS": "7", "BATCHSCRIBE_BACKOFF_BASE": "0.5",
           "BATCHSCRIBE_MAX_CRASHES": "2"}
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://:pw@h:6380/2" and settings.visibility_timeout == 90
    assert settings.retry.transient_attempts == 7 and settings.retry.backoff_base == 0.5
    assert settings.retry.max_crashes == 2
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize("given, kept", [("/mnt/nfs/cache", "/mnt/nfs/cache"), ("az://cache/results", "az://cache/results"),
                                         ("", "")])
def test_the_result_store_reaches_the_consumers_as_given(given: str, kept: str) -> None:
    settings = Settings.from_env({"BATCHSCRIBE_RESULT_STORE": given})
    assert settings.result_store == kept and Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize("env, message", [
    ({"BATCHSCRIBE_REDIS_URL": "http://x"}, "broker URL must start with redis://"),
    ({"BATCHSCRIBE_REDIS_URL": "redis://127.0.0.1:abc/0"}, "the port must be a number"),
    ({"BATCHSCRIBE_REDIS_URL": "redis://:pw@h:70000/0"}, r"'redis://:\*\*\*@h:70000/0': the port must be"),
    ({"BATCHSCRIBE_REDIS_URL": "redis://h:6379/zero"}, "the database after the last / must be a number"),
    ({"BATCHSCRIBE_VISIBILITY_TIMEOUT": "soon"}, "BATCHSCRIBE_VISIBILITY_TIMEOUT must be"),
    ({"BATCHSCRIBE_VISIBILITY_TIMEOUT": "6"}, "at most half of BATCHSCRIBE_VISIBILITY_TIMEOUT"),
    ({"BATCHSCRIBE_RESULT_STORE": "cache/results"}, "BATCHSCRIBE_RESULT_STORE must be an absolute path"),
    ({"BATCHSCRIBE_RESULT_STORE": "az://"}, "BATCHSCRIBE_RESULT_STORE: az://: no container named"),
    ({"BATCHSCRIBE_RESULT_STORE": "https://a.blob.core.windows.net/c/r?sv=1&sig=secret"},
     r"BATCHSCRIBE_RESULT_STORE=https://a.blob.core.windows.net/c/r\?… holds a SAS token"),
])
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("url, shown", [
    ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://host:6379/0?password=secret&db=1", "redis://host:6379/0?password=***&db=1"),
    ("rediss://host/0?ssl_keyfile=/k/secret.pem&ssl_cert_reqs=none",
     "rediss://host/0?ssl_keyfile=***&ssl_cert_reqs=none"),
    ("unix:///run/r/redis.sock?db=0&password=secret", "unix:///run/r/redis.sock?db=0&password=***"),
    ("unix://:secret@/run/r/redis.sock", "unix://:***@/run/r/redis.sock"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://user@host/0", "redis://user@host/0"),
])
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact(url) == shown and "secret" not in redact(url)


@pytest.mark.parametrize("url, shown", [
    ("https://acct.blob.core.windows.net/in/a.wav?sv=2024-08-04&sp=r&sig=secret%3D",
     "https://acct.blob.core.windows.net/in/a.wav?…"),
    ("http://127.0.0.1:10000/devstoreaccount1/in?se=2030-01-01&sr=c&sig=secret", "http://127.0.0.1:10000/devstoreaccount1/in?…"),
    ("https://acct.blob.core.windows.net/in?comp=list&secret", "https://acct.blob.core.windows.net/in?…"),
    ("az://in/x?sig=secret", "az://in/x?…"),
    ("redis://host:6379/0?sv=2024-08-04&sig=secret", "redis://host:6379/0?…"),
    ("https://acct.blob.core.windows.net/in", "https://acct.blob.core.windows.net/in"),
])
def test_sas_tokens_are_redacted(url: str, shown: str) -> None:
    """A blob URL's query is its SAS token (or may be): it goes whole, whatever it spells."""
    assert redact(url) == shown and "secret" not in redact(url)


@pytest.mark.parametrize("url, kombu", [
    ("redis://:pw@h:6379/0", "redis://:pw@h:6379/0"),
    ("unix:///run/r/redis.sock", "redis+socket:///run/r/redis.sock"),
    ("unix:///run/r/redis.sock?db=2", "redis+socket:///run/r/redis.sock?virtual_host=2"),
    ("unix://:pw@/run/r/redis.sock", "redis+socket://:pw@/run/r/redis.sock"),
    ("redis://h:6379/0?password=p%40ss&db=3", "redis://:p%40ss@h:6379/3"),
    ("redis://h/0?username=u&password=p", "redis://u:p@h/0"),
])
def test_broker_url_is_spelled_for_kombu(url: str, kombu: str) -> None:
    """redis-py's URL forms (the settings') as kombu parses them: the socket of `run`'s private Redis,
    and query parameters kombu would choke on."""
    assert kombu_broker_url(url) == kombu
    connection = Connection(kombu)  # parses as kombu's Redis transport
    assert connection.transport_cls == "redis"


def test_health_goes_down_after_two_failures_and_up_after_one_success() -> None:
    state = HealthState()
    assert state.observe(ProbeResult(False, "503")) is False and state.up
    assert state.observe(ProbeResult(False, "503")) is True and not state.up and state.reason == "503"
    assert state.observe(ProbeResult(True)) is True and state.up
