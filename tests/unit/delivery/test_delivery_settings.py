"""Delivery settings: URLs from a list or the environment, fail fast naming the setting, and
no URL or secret in any message; `streamscore deliver` refuses to start without a webhook."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamscore.config import ENV_PREFIX, Settings, load_settings, settings_env
from streamscore.errors import ConfigError
from tests.conftest import REPO_ROOT

SECRET = "s3cr3t-signing-key-Zq9"
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXhookSECRETXXXX"
CRM = "https://crm.example.com/api/leads?token=QQtokenQQ,more"
SECRETS = ("XXXXhookSECRETXXXX", "QQtokenQQ", SECRET)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STREAMSCORE_* variable from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def assert_secret_free(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


def load_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"{ENV_PREFIX}{name.upper()}", value)
    return load_settings()


def test_urls_from_a_comma_list_or_a_json_array(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = load_env(
        monkeypatch, delivery_webhook_urls=f" {SLACK} , http://127.0.0.1:9000/h ",
        delivery_signing_secret=SECRET,
    )  # fmt: skip
    assert [u.get_secret_value() for u in plain.delivery_webhook_urls] == [
        SLACK,
        "http://127.0.0.1:9000/h",
    ]
    # A URL with a comma needs the JSON form.
    as_json = load_env(monkeypatch, delivery_webhook_urls=f'["{CRM}"]')
    assert [u.get_secret_value() for u in as_json.delivery_webhook_urls] == [CRM]
    assert_secret_free(repr(as_json))


def test_settings_env_round_trips_the_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(delivery_webhook_urls=[SLACK, CRM], delivery_signing_secret=SECRET)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    again = load_settings()
    assert again.delivery_webhook_urls == settings.delivery_webhook_urls
    assert again.delivery_signing_secret == settings.delivery_signing_secret


@pytest.mark.parametrize(
    "urls",
    [
        f"{SLACK},ftp://files.example.com/XXXXhookSECRETXXXX",
        f"{SLACK},https:///XXXXhookSECRETXXXX",
        f"{SLACK},hooks.slack.com/XXXXhookSECRETXXXX",
        f"{SLACK},https://crm.example.com:99999/XXXXhookSECRETXXXX",
        f'["{SLACK}", "https://crm.example.com/a b?QQtokenQQ"]',
    ],
)
def test_an_invalid_url_is_named_by_setting_and_index_only(
    monkeypatch: pytest.MonkeyPatch, urls: str
) -> None:
    monkeypatch.setenv("STREAMSCORE_DELIVERY_WEBHOOK_URLS", urls)
    monkeypatch.setenv("STREAMSCORE_DELIVERY_SIGNING_SECRET", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "STREAMSCORE_DELIVERY_WEBHOOK_URLS" in message
    assert "webhook 1" in message
    assert_secret_free(message)


def test_a_broken_json_array_is_named_without_its_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_DELIVERY_WEBHOOK_URLS", f'["{SLACK}"')
    monkeypatch.setenv("STREAMSCORE_DELIVERY_SIGNING_SECRET", SECRET)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "STREAMSCORE_DELIVERY_WEBHOOK_URLS" in str(info.value)
    assert_secret_free(str(info.value))


def test_a_repeated_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="webhook 1 repeats webhook 0"):
        load_env(
            monkeypatch, delivery_webhook_urls=f"{SLACK},{SLACK}", delivery_signing_secret=SECRET
        )


def test_webhooks_without_a_secret_name_the_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_env(monkeypatch, delivery_webhook_urls=SLACK)
    assert "STREAMSCORE_DELIVERY_SIGNING_SECRET" in str(info.value)
    assert_secret_free(str(info.value))


def test_a_short_secret_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_env(monkeypatch, delivery_webhook_urls=SLACK, delivery_signing_secret="hunter2hunter")
    assert "STREAMSCORE_DELIVERY_SIGNING_SECRET" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_the_backoff_cap_is_at_least_the_first_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="delivery_backoff_max_s"):
        load_env(monkeypatch, delivery_backoff_s="5", delivery_backoff_max_s="1")


def test_the_delivery_dead_letter_topic_is_a_streamscore_topic() -> None:
    settings = load_settings()
    assert settings.topic_delivery_dead_letter == "ss.v1.delivery-dead-letter"
    assert settings.topic_delivery_dead_letter in settings.all_topics


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run(
        [sys.executable, "-m", "streamscore.cli", *args],
        cwd=REPO_ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def test_deliver_without_a_webhook_exits_2_naming_the_setting() -> None:
    result = run_cli("deliver")
    assert result.returncode == 2, result.stderr
    assert "STREAMSCORE_DELIVERY_WEBHOOK_URLS" in result.stderr
    assert "Traceback" not in result.stderr


def test_deliver_with_a_bad_url_exits_2_before_connecting() -> None:
    result = run_cli(
        "deliver", STREAMSCORE_DELIVERY_WEBHOOK_URLS="https:///XXXXhookSECRETXXXX",
        STREAMSCORE_DELIVERY_SIGNING_SECRET=SECRET,
        STREAMSCORE_KAFKA_BOOTSTRAP="127.0.0.1:1",  # nothing listens: a start would hang
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "STREAMSCORE_DELIVERY_WEBHOOK_URLS" in result.stderr
    assert_secret_free(result.stderr + result.stdout)
