"""Endpoint YAML: batch-processing-kit files load unchanged; every error names file, endpoint, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscribe.common.config import default_local_endpoints, load_endpoints, parse_endpoints
from batchscribe.common.errors import ConfigError

BPK_FILE = """
MyContainer1:
  host: 192.168.0.100
  port: 5000
  concurrency: 5
  rtf: 3
  language: en-US
  isSecure: false
MyCloud:
  host: westeurope.stt.speech.microsoft.com
  concurrency: 10
  subscriptionKey: $SPEECH_KEY
  region: westeurope
MinimalOne:
"""


def test_batch_processing_kit_file_loads_unchanged_with_its_defaults() -> None:
    endpoints = parse_endpoints(BPK_FILE, "endpoints.yaml", {"SPEECH_KEY": "secret"})
    container, cloud, minimal = endpoints.endpoints
    assert (container.host, container.port, container.concurrency, container.rtf) == ("192.168.0.100", 5000, 5, 3.0)
    assert container.engine == "azure" and container.url == "ws://192.168.0.100:5000"
    assert cloud.is_cloud_service and cloud.is_secure and cloud.port == 443
    assert cloud.subscription_key == "secret" and cloud.region == "westeurope"
    assert (minimal.host, minimal.port, minimal.concurrency, minimal.rtf, minimal.languages) == (
        "localhost", 5000, 8, 3.0, ("en-US",))
    assert "secret" not in repr(cloud)


@pytest.mark.parametrize("body, message", [
    ("gpu2:\n  concurrency: ten\n", "endpoints.yaml: endpoint 'gpu2': concurrency must be an integer"),
    ("gpu2:\n  concurrency: 0\n", "endpoint 'gpu2': concurrency must be an integer between 1 and 1000, got 0"),
    ("a:\n  port: 70000\n", "endpoint 'a': port must be an integer between 1 and 65535"),
    ("a:\n  rtf: fast\n", "endpoint 'a': rtf must be a number"),
    ("a:\n  isSecure: maybe\n", "endpoint 'a': isSecure must be true or false"),
    ("a:\n  concurency: 3\n", "endpoint 'a': unknown key(s) 'concurency'"),
    ("a:\n  engine: gpu\n", "endpoint 'a': engine must be one of azure, local"),
    ("a:\n  language: english\n", "endpoint 'a': language must look like 'en-US'"),
    ("a:\n  subscriptionKey: $NOPE_NOT_SET\n", "subscriptionKey refers to $NOPE_NOT_SET, which is not set"),
    ("a:\n  isCloudService: true\n", "a cloud endpoint (isCloudService) needs subscriptionKey and region"),
    ("a: [1, 2]\n", "endpoint 'a': must be a mapping"),
    ("- a\n- b\n", "must map endpoint names to their settings"),
    ("a: {\n", "not valid YAML"),
    ("", "no endpoints defined"),
])
def test_errors_name_the_file_the_endpoint_and_the_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_endpoints(body, "endpoints.yaml", {})
    assert message in str(err.value)
    assert str(err.value).startswith("endpoints.yaml")


def test_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: endpoint file not found"):
        load_endpoints(tmp_path / "nope.yaml")


def test_ours_keys_and_env_values(tmp_path: Path) -> None:
    path = tmp_path / "eps.yaml"
    path.write_text("loc:\n  engine: local\n  concurrency: $SLOTS\n  languages: [en-US, en-GB]\n")
    (endpoint,) = load_endpoints(path, {"SLOTS": "3"}).endpoints
    assert endpoint.engine == "local" and endpoint.concurrency == 3
    assert endpoint.languages == ("en-US", "en-GB")


def test_default_local_endpoint_is_sized_to_the_machine() -> None:
    small = default_local_endpoints(2).endpoints[0]
    assert small.concurrency == 2 and small.cpu_threads == 1  # one decode per core
    big = default_local_endpoints(16).endpoints[0]
    assert big.engine == "local" and big.concurrency == 16 and big.cpu_threads == 1
    assert default_local_endpoints(1).endpoints[0].concurrency == 1


SECRET = "0123abcdSECRETvalue"


@pytest.mark.parametrize("body", [
    f"cloud:\n  region: westeurope\n  subscriptionKey: {SECRET}: oops\n",  # yaml quotes the line
    f"cloud:\n  region: westeurope\n  subscriptionKey: \"{SECRET}\n",  # an unterminated quote
    f"cloud:\n  region: westeurope\n subscriptionKey: {SECRET}\n",  # bad indentation
    f"cloud:\n  subscriptionKey: *{SECRET}\n",  # read as an alias
    f"cloud:\n  subscriptionKey: !!int {SECRET}\n",  # a tag that does not fit (ValueError in yaml)
    f"cloud:\n  subscriptionKey: [{SECRET}]\n",  # the wrong type
    f"cloud:\n  subscriptionKey={SECRET}\n",  # not a mapping at all
])
def test_errors_never_show_a_key(body: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_endpoints(body, "endpoints.yaml", {})
    message = str(err.value)
    assert message.startswith("endpoints.yaml") and SECRET not in message
    # Nor in a traceback: yaml's own error (which quotes the line) is not chained to ours.
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)


def test_yaml_errors_say_where() -> None:
    with pytest.raises(ConfigError) as err:
        parse_endpoints(f"cloud:\n  region: westeurope\n  subscriptionKey: {SECRET}: oops\n", "e.yaml", {})
    assert str(err.value) == "e.yaml: not valid YAML at line 3, column 39: mapping values are not allowed here"


def test_literal_keys_are_told_apart_from_variables() -> None:
    text = (f"lit:\n  subscriptionKey: {SECRET}\n  region: westeurope\nold:\n  subscription: 12345\n"
            "  region: westeurope\nvar:\n  subscriptionKey: $SPEECH_KEY\n  region: westeurope\n"
            "braced:\n  subscriptionKey: ${SPEECH_KEY}\n  region: westeurope\nnone:\n  port: 5001\n")
    endpoints = parse_endpoints(text, "e.yaml", {"SPEECH_KEY": "from-env"})
    assert endpoints.literal_secrets == ("lit", "old")
