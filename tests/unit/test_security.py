"""Smaller hardening points of issue 24: secrets kept out of the log, files only their owner
can read, and a flaw in vLLM's own key middleware documented as it stands upstream."""

import pytest

from vllm_responses.logs import redact_url

SECRET = "s3cr@t:/x"  # a password holding the characters that end user info or a host


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://default:hunter2@host:6379/0", "redis://default:***@host:6379/0"),
        ("redis://:p@ss@host/0", "redis://:***@host/0"),  # logged as redis://***@ss@host before
        ("redis://user:p@ss:w:rd@host:6379", "redis://user:***@host:6379"),
        ("redis://onlytoken@host", "redis://***@host"),
        ("rediss://:hunter2@host:6380/0?ssl_cert_reqs=required", "rediss://:***@host:6380/0?ssl_cert_reqs=required"),
        ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=***"),
        ("redis://host/0?db=1&password=hun@ter2&socket_timeout=5", "redis://host/0?db=1&password=***&socket_timeout=5"),
        ("redis://host/0?PASSWORD=x&token=y&api_key=z&client_secret=w", "redis://host/0?PASSWORD=***&token=***&api_key=***&client_secret=***"),
        ("unix:///run/redis.sock?db=0&password=hunter2", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://:hunter2@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        ("unix:///run/user@1/redis.sock", "unix:///run/user@1/redis.sock"),
        ("sqlite:///var/lib/a:b@c/responses.db", "sqlite:///var/lib/a:b@c/responses.db"),
        ("sqlite://~/responses.db", "sqlite://~/responses.db"),
    ],
)
def test_store_urls_are_logged_without_their_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("template", ["redis://:{}@h/0", "redis://u:{}@h:1/0?db=2", "rediss://{}@h", "redis://h/0?password={}"])
def test_a_password_of_separators_never_leaks(template: str) -> None:
    shown = redact_url(template.format(SECRET))
    assert "s3cr" not in shown and "t:/x" not in shown, shown
