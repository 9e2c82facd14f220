"""Settings: STREAMSCORE_* variables, a YAML/TOML file over them, and errors that say where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamscore.config import CONFIG_FILE_ENV, ENV_PREFIX, Settings, load_settings
from streamscore.errors import ConfigError
from streamscore.events.types import TopicKind

PASSWORD = "Xq7hunter2Zr9s3cret"
REDIS_WITH_PASSWORD = f"redis://default:{PASSWORD}@cache.internal:6380/2"


def assert_no_password(text: str) -> None:
    """Not the password, nor any 5-character piece of it (error snippets cut lines short)."""
    pieces = {PASSWORD[i : i + 5] for i in range(len(PASSWORD) - 4)}
    leaked = sorted(p for p in pieces if p in text)
    assert not leaked, f"password pieces {leaked} in: {text}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STREAMSCORE_* variable from the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def write(path: Path, values: dict[str, object]) -> Path:
    """A settings file in the format its suffix names."""
    if path.suffix == ".toml":
        lines = [
            f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in values.items()
        ]
    else:
        lines = [
            f"{k}: {v!r}" if not isinstance(v, str) else f"{k}: '{v}'" for k, v in values.items()
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_error(**kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_TOPIC_PARTITIONS", "8")
    monkeypatch.setenv("STREAMSCORE_KAFKA_BOOTSTRAP", "k1:9092, k2:9093")
    monkeypatch.setenv("STREAMSCORE_REDIS_URL", REDIS_WITH_PASSWORD)
    monkeypatch.setenv("STREAMSCORE_LOG_JSON", "true")
    monkeypatch.setenv("STREAMSCORE_DECAY_TICK_S", "0.5")
    monkeypatch.setenv("STREAMSCORE_RULES_FILE", "/etc/streamscore/rules.toml")
    settings = load_settings()
    assert settings.topic_partitions == 8
    assert settings.kafka_bootstrap == "k1:9092, k2:9093"
    assert settings.redis_url.get_secret_value() == REDIS_WITH_PASSWORD
    assert settings.log_json is True
    assert settings.decay_tick_s == 0.5
    assert settings.rules_file == Path("/etc/streamscore/rules.toml")
    # untouched fields keep their defaults
    assert settings.batch_max_events == Settings.model_fields["batch_max_events"].default


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_a_settings_file_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setenv("STREAMSCORE_TOPIC_PARTITIONS", "8")
    monkeypatch.setenv("STREAMSCORE_CONSUMER_GROUP", "from-env")
    path = write(tmp_path / f"settings{suffix}", {"topic_partitions": 3, "log_level": "DEBUG"})
    settings = load_settings(path)
    assert settings.topic_partitions == 3  # the file wins
    assert settings.log_level == "DEBUG"
    assert settings.consumer_group == "from-env"  # the environment fills the rest
    # STREAMSCORE_CONFIG_FILE names the file when none is passed
    monkeypatch.setenv(CONFIG_FILE_ENV, str(path))
    assert load_settings().topic_partitions == 3


@pytest.mark.parametrize(
    ("variable", "value", "field", "what"),
    [
        ("STREAMSCORE_TOPIC_PARTITIONS", "0", "topic_partitions", "greater than or equal to 1"),
        ("STREAMSCORE_BATCH_MAX_EVENTS", "lots", "batch_max_events", "integer"),
        ("STREAMSCORE_KAFKA_BOOTSTRAP", "kafka", "kafka_bootstrap", "host:port"),
        ("STREAMSCORE_LOG_LEVEL", "LOUD", "log_level", "'DEBUG'"),
        ("STREAMSCORE_REDIS_URL", "http://cache:6379", "redis_url", "redis://"),
        ("STREAMSCORE_REDIS_KEY_PREFIX", "has space", "redis_key_prefix", "pattern"),
    ],
)
def test_an_invalid_variable_is_named_with_field_and_problem(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, what: str
) -> None:
    monkeypatch.setenv(variable, value)
    message = config_error()
    line = next(line for line in message.splitlines() if variable in line)
    assert field in line and what in line, message


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("topic_partitions", 0, "greater than or equal to 1"),
        ("commit_interval_s", -1.5, "greater than 0"),
        ("kafka_security_protocol", "SMOKE_SIGNALS", "'SASL_SSL'"),
    ],
)
def test_an_invalid_file_value_is_named_with_file_field_and_problem(
    tmp_path: Path, suffix: str, field: str, value: object, what: str
) -> None:
    path = write(tmp_path / f"settings{suffix}", {field: value})
    message = config_error(settings_file=path)
    line = next(line for line in message.splitlines() if str(path) in line)
    assert field in line and what in line, message
    assert f"{ENV_PREFIX}{field.upper()}" not in message


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_an_unknown_field_in_the_file_is_rejected(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"settings{suffix}", {"topic_partitions": 2, "topic_partitons": 3})
    message = config_error(settings_file=path)
    line = next(line for line in message.splitlines() if "topic_partitons" in line)
    assert str(path) in line and "not permitted" in line


def test_every_problem_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_WEB_PORT", "70000")
    path = write(tmp_path / "settings.yaml", {"topic_partitions": 0})
    message = config_error(settings_file=path)
    assert "STREAMSCORE_WEB_PORT" in message and "web_port" in message
    assert str(path) in message and "topic_partitions" in message


def test_incomplete_sasl_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_USERNAME", "svc")
    message = config_error()
    assert "kafka_sasl_mechanism" in message and "kafka_sasl_password" in message


def test_unreadable_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert str(missing) in config_error(settings_file=missing)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- a\n- b\n", encoding="utf-8")
    assert "mapping" in config_error(settings_file=not_a_mapping)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("topic_partitions = = 3\n", encoding="utf-8")
    assert str(bad_toml) in config_error(settings_file=bad_toml)


# ------------------------------------------------------------------ the Redis password


def test_the_redis_password_is_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMSCORE_REDIS_URL", REDIS_WITH_PASSWORD)
    monkeypatch.setenv("STREAMSCORE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAMSCORE_KAFKA_SASL_PASSWORD", PASSWORD)
    settings = load_settings()
    for text in (repr(settings), str(settings), repr(settings.model_dump())):
        assert_no_password(text)


@pytest.mark.parametrize(
    "redis_url",
    [
        f"http://default:{PASSWORD}@cache:6379",  # wrong scheme
        f"redis//default:{PASSWORD}@cache:6379",  # a typo: no "://"
        f"redis:/default:{PASSWORD}@cache:6379",  # a typo: one slash
    ],
)
def test_the_redis_password_is_not_in_an_invalid_url_error(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("STREAMSCORE_REDIS_URL", redis_url)
    message = config_error()
    assert "STREAMSCORE_REDIS_URL" in message and "redis_url" in message
    assert_no_password(message)


def test_the_redis_password_is_not_in_another_fields_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSCORE_REDIS_URL", REDIS_WITH_PASSWORD)
    monkeypatch.setenv("STREAMSCORE_TOPIC_PARTITIONS", "0")
    assert_no_password(config_error())
    path = write(tmp_path / "settings.yaml", {"redis_url": REDIS_WITH_PASSWORD, "web_port": -1})
    assert_no_password(config_error(settings_file=path))


@pytest.mark.parametrize(
    "text",
    [
        # the password's line is the one the parser complains about
        f"redis_url: '{REDIS_WITH_PASSWORD}\ntopic_partitions: 3\n",
        f"redis_url: {REDIS_WITH_PASSWORD} db: 3\ntopic_partitions: 3\n",
    ],
)
def test_the_redis_password_is_not_in_a_settings_file_syntax_error(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text(text, encoding="utf-8")
    message = config_error(settings_file=path)
    assert str(path) in message
    assert_no_password(message)


def test_every_input_topic_has_its_own_kind() -> None:
    settings = Settings(topic_page_views="pv", topic_profiles="prof")
    kinds = settings.topic_kinds
    # Every input topic but the outcomes topic carries scoring events of its own kind.
    assert list(kinds) == [t for t in settings.input_topics if t != settings.topic_outcomes]
    assert kinds["pv"] is TopicKind.PAGE_VIEWS
    assert kinds["prof"] is TopicKind.PROFILES
    assert len(set(kinds.values())) == len(kinds)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_redis_cluster_takes_a_boolean_from_a_file_and_any_case_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    assert Settings().redis_cluster == "auto"
    monkeypatch.setenv("STREAMSCORE_REDIS_CLUSTER", "TRUE")
    assert load_settings().redis_cluster == "true"
    path = tmp_path / f"settings{suffix}"
    path.write_text("redis_cluster = false\n" if suffix == ".toml" else "redis_cluster: false\n")
    assert load_settings(path).redis_cluster == "false"
    assert "field redis_cluster" in config_error(redis_cluster="yes")
