"""The one typed Settings object: STREAMSCORE_* environment variables, then a settings file."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from streamscore.errors import ConfigError
from streamscore.events.types import TopicKind

ENV_PREFIX = "STREAMSCORE_"
CONFIG_FILE_ENV = "STREAMSCORE_CONFIG_FILE"
#: A shorter signing secret is guessable offline from one signed request (and a shorter console
#: token by trying the login form).
MIN_SIGNING_SECRET_CHARS = 16


class Settings(BaseSettings):
    """Every knob of streamscore; the README's configuration table documents each field."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    # Kafka connection
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    consumer_group: str = "streamscore"
    kafka_session_timeout_ms: int = Field(default=6000, ge=1000, le=300_000)
    kafka_fetch_max_wait_ms: int = Field(default=5, ge=1, le=10_000)

    # Topics
    topic_page_views: str = "ss.v1.page-views"
    topic_email_events: str = "ss.v1.email-events"
    topic_downloads: str = "ss.v1.downloads"
    topic_unsubscribes: str = "ss.v1.unsubscribes"
    topic_profiles: str = "ss.v1.profiles"
    topic_track: str = "ss.v1.track"
    topic_outcomes: str = "ss.v1.outcomes"
    topic_sla_breaches: str = "ss.v1.sla-breaches"
    topic_handoffs: str = "ss.v1.handoffs"
    topic_tier_changes: str = "ss.v1.tier-changes"
    topic_dead_letter: str = "ss.v1.dead-letter"
    topic_delivery_dead_letter: str = "ss.v1.delivery-dead-letter"
    # The edges (issue 14): forget requests in (`streamscore forget`, DELETE /leads/{id}), the
    # workers' own repartition topics (keyed by the target lead or account, read back by the
    # worker that owns the key), and what they emit.
    topic_forget_requests: str = "ss.v1.forget-requests"
    topic_identity: str = "ss.v1.internal.identity"
    topic_account_updates: str = "ss.v1.internal.accounts"
    topic_forgotten: str = "ss.v1.forgotten"
    topic_account_handoffs: str = "ss.v1.account-handoffs"
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1, le=16)

    # Redis
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    redis_key_prefix: str = Field(default="ss:v1", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    redis_key_groups: int = Field(default=1, ge=1, le=16384)
    #: Where the forgotten sets live when not under redis_key_prefix: a replay into its own
    #: prefix names the live one here, so that the leads forgotten there stay forgotten (same
    #: redis_key_groups needed). Empty: redis_key_prefix.
    redis_forgotten_prefix: str = Field(default="", pattern=r"^([A-Za-z0-9_.:-]{1,64})?$")
    redis_cluster: Literal["auto", "true", "false"] = "auto"
    """Redis Cluster client or not; auto asks the server once at start (INFO cluster)."""
    redis_ssl_ca_certs: Path | None = None
    redis_retry_max_s: float = Field(default=120.0, gt=0)
    redis_timeout_s: float = Field(default=5.0, gt=0)

    # Rules and models
    rules_file: Path = Path("examples/rules.yaml")
    shadow_rules_file: Path | None = None
    shadow_model: str = Field(default="shadow", pattern=r"^[a-z][a-z0-9_]{0,31}$")
    ab_experiment_file: Path | None = None
    rules_poll_s: float = Field(default=2.0, ge=0)

    # Hot path
    batch_max_events: int = Field(default=2000, ge=1, le=100_000)
    fetch_timeout_ms: int = Field(default=5, ge=0, le=10_000)
    align_max_wait_ms: int = Field(default=200, ge=0, le=60_000)
    align_max_buffered: int = Field(default=5000, ge=2, le=1_000_000)
    align_grace_ms: int = Field(default=0, ge=0, le=60_000)
    """Hold each record until this long after the earlier of its event time and its append, so
    that a record appended a little later on another topic but earlier in event time (two
    producers, or one whose batches for two topics left at different times) is applied first."""
    commit_interval_s: float = Field(default=1.0, gt=0)
    dedup_window_s: int = Field(default=7 * 86400, ge=0)
    lead_story_max: int = Field(default=12, ge=0, le=1000)
    tier_index_max: int = Field(default=10_000, ge=10, le=10_000_000)
    lead_cache_max: int = Field(default=200_000, ge=1000, le=100_000_000)

    # The edges (issue 14)
    #: A custom track event whose name no rule mentions: counted, then dropped or dead-lettered.
    track_unknown: Literal["ignore", "dead_letter"] = "ignore"
    #: Merging a lead that is itself known (it has been a userId) into another: refused, or
    #: merged like an anonymous one.
    identity_merge_known: Literal["refuse", "merge"] = "refuse"
    #: Ids one lead may absorb; later merges into it are refused.
    identity_max_links: int = Field(default=100, ge=1, le=10_000)
    #: Leads an account keeps contributions of (its best ones; the others come back with their
    #: next contribution, which carries their whole history).
    account_members_max: int = Field(default=200, ge=1, le=100_000)

    # Input limits (beyond them an event is dead-lettered)
    max_event_bytes: int = Field(default=64 * 1024, ge=256)
    max_properties: int = Field(default=200, ge=1)
    max_future_skew_s: int = Field(default=300, ge=0)
    max_event_age_s: int = Field(default=400 * 86400, ge=0)

    # Timers
    decay_tick_s: float = Field(default=1.0, gt=0)
    decay_tick_max_leads: int = Field(default=500, ge=1)
    outbox_redrive_s: float = Field(default=5.0, gt=0)
    kpi_refresh_s: float = Field(default=15.0, gt=0)
    watchdog_stall_s: float = Field(default=30.0, gt=0)

    # Collector: the Segment/RudderStack-compatible HTTP ingest (`streamscore collector`)
    collector_host: str = "127.0.0.1"
    collector_port: int = Field(default=8088, ge=0, le=65535)
    # Comma-separated write keys; a client authenticates with one as the Basic auth username.
    collector_write_keys: SecretStr = SecretStr("")
    collector_allowed_origins: str = "*"
    collector_max_message_bytes: int = Field(default=32 * 1024, ge=256)
    collector_max_request_bytes: int = Field(default=500 * 1024, ge=256)
    collector_ack_timeout_s: float = Field(default=10.0, gt=0)
    collector_max_pending_events: int = Field(default=50_000, ge=1)
    collector_retry_after_s: int = Field(default=2, ge=0, le=300)
    collector_idempotent_producer: bool = True
    collector_start_timeout_s: float = Field(default=60.0, gt=0)

    # Handoff delivery (`streamscore deliver`). Webhook URLs are secrets: a Slack incoming
    # webhook's path is its credential, and CRM URLs often carry a token in the query.
    delivery_webhook_urls: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    delivery_signing_secret: SecretStr | None = None
    delivery_format: Literal["json", "slack"] = "json"
    delivery_consumer_group: str = "streamscore-delivery"
    delivery_timeout_s: float = Field(default=10.0, gt=0, le=300)
    delivery_attempts: int = Field(default=6, ge=1, le=100)
    delivery_backoff_s: float = Field(default=0.5, gt=0, le=3600)
    delivery_backoff_max_s: float = Field(default=60.0, gt=0, le=3600)
    delivery_concurrency: int = Field(default=16, ge=1, le=1024)
    delivery_web_port: int = Field(default=6067, ge=0, le=65535)

    # Console (`streamscore console`, and `streamscore dev`): pages for sales and marketing ops.
    # It shows personal data, so outside `dev` it refuses to start without a token.
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=6068, ge=0, le=65535)
    console_token: SecretStr | None = None
    console_session_s: int = Field(default=12 * 3600, ge=60, le=30 * 86400)
    console_queue_size: int = Field(default=50, ge=1, le=1000)
    console_refresh_s: float = Field(default=30.0, ge=1, le=3600)
    console_lab_dir: Path | None = None

    # Web, logging
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_token: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {server!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        scheme, sep, _ = value.get_secret_value().partition("://")
        if not sep or scheme not in ("redis", "rediss", "unix"):
            # Never echo the URL: it may hold a password.
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_cluster", mode="before")
    @classmethod
    def _cluster_choice(cls, value: object) -> object:
        # YAML and TOML give booleans, the environment gives text in any case.
        if isinstance(value, bool):
            return "true" if value else "false"
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _collector_limits(self) -> Settings:
        if self.collector_max_message_bytes > self.collector_max_request_bytes:
            raise ValueError(
                "collector_max_message_bytes must not exceed collector_max_request_bytes"
            )
        return self

    @model_validator(mode="after")
    def _model_names_are_distinct(self) -> Settings:
        if self.shadow_model == "live":
            raise ValueError("shadow_model cannot be `live`: that is the live rules' name")
        return self

    @model_validator(mode="after")
    def _cache_holds_two_batches(self) -> Settings:
        # A batch's leads are touched last, so the cache never evicts them while they are
        # scored and committed, as long as it holds the two batches in flight.
        if self.lead_cache_max < 2 * self.batch_max_events:
            raise ValueError(
                f"lead_cache_max ({self.lead_cache_max}) must be at least twice "
                f"batch_max_events ({self.batch_max_events})"
            )
        return self

    @field_validator("delivery_webhook_urls", mode="before")
    @classmethod
    def _split_webhook_urls(cls, value: Any) -> Any:
        # An environment variable holds either a JSON array or a comma-separated list.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                # Never echo the text: it holds the URLs, which are secrets.
                raise ValueError("not a valid JSON array of URLs") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("delivery_webhook_urls")
    @classmethod
    def _webhook_urls_valid(cls, value: list[SecretStr]) -> list[SecretStr]:
        seen: dict[str, int] = {}
        for index, secret in enumerate(value):
            url = secret.get_secret_value()
            # Errors name the webhook by its index, never by its URL.
            if url in seen:
                raise ValueError(f"webhook {index} repeats webhook {seen[url]}")
            seen[url] = index
            try:
                parts = urlsplit(url)
                port_ok = parts.port is None or parts.port > 0
            except ValueError:
                port_ok = False
            if (
                parts.scheme not in ("http", "https")
                or not parts.hostname
                or not port_ok
                or any(c.isspace() or ord(c) < 0x20 for c in url)
            ):
                raise ValueError(
                    f"webhook {index}: must be an absolute http:// or https:// URL with a host "
                    "(and a valid port, no spaces)"
                )
        return value

    @field_validator("delivery_signing_secret")
    @classmethod
    def _signing_secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SIGNING_SECRET_CHARS} characters")
        return value

    @field_validator("console_token")
    @classmethod
    def _console_token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # The token is the console's only credential and a login form can be tried at will.
        if value is not None and len(value.get_secret_value()) < MIN_SIGNING_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SIGNING_SECRET_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _delivery_complete(self) -> Settings:
        if self.delivery_webhook_urls and self.delivery_signing_secret is None:
            raise ValueError(
                "delivery_webhook_urls needs delivery_signing_secret "
                f"({ENV_PREFIX}DELIVERY_SIGNING_SECRET): receivers verify every request with it"
            )
        if self.delivery_backoff_max_s < self.delivery_backoff_s:
            raise ValueError("delivery_backoff_max_s must be at least delivery_backoff_s")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "kafka_security_protocol SASL_* needs kafka_sasl_mechanism, "
                "kafka_sasl_username and kafka_sasl_password"
            )
        return self

    @property
    def topic_kinds(self) -> dict[str, TopicKind]:
        """Each input topic's kind, which decides the event types it may carry."""
        return {
            self.topic_page_views: TopicKind.PAGE_VIEWS,
            self.topic_email_events: TopicKind.EMAIL_EVENTS,
            self.topic_downloads: TopicKind.DOWNLOADS,
            self.topic_unsubscribes: TopicKind.UNSUBSCRIBES,
            self.topic_profiles: TopicKind.PROFILES,
            self.topic_track: TopicKind.TRACK,
        }

    @property
    def input_topics(self) -> tuple[str, ...]:
        """The topics the worker scores, in a fixed order (the index is stored per offset)."""
        return (
            self.topic_page_views,
            self.topic_email_events,
            self.topic_downloads,
            self.topic_unsubscribes,
            self.topic_profiles,
            self.topic_track,  # last, so the indexes of benchmarks/workload.py stay valid
            self.topic_outcomes,
        )

    @property
    def internal_topics(self) -> tuple[str, ...]:
        """Topics the worker consumes besides the inputs: forget requests and its own
        repartition topics, all keyed by the id whose owner applies them."""
        return (self.topic_forget_requests, self.topic_identity, self.topic_account_updates)

    @property
    def subscribed_topics(self) -> tuple[str, ...]:
        """The topics a worker subscribes to: the inputs and its own identity and account
        topics (forget requests are reserved, not consumed yet)."""
        return (*self.input_topics, self.topic_identity, self.topic_account_updates)

    @property
    def consumed_topics(self) -> tuple[str, ...]:
        """Everything the worker consumes; one partition count for all (co-partitioned)."""
        return (*self.input_topics, *self.internal_topics)

    @property
    def all_topics(self) -> tuple[str, ...]:
        """Every topic streamscore reads or writes."""
        return (
            *self.consumed_topics,
            self.topic_handoffs,
            self.topic_tier_changes,
            self.topic_dead_letter,
            self.topic_delivery_dead_letter,
            self.topic_forgotten,
            self.topic_account_handoffs,
            self.topic_sla_breaches,
        )

    @property
    def collector_keys(self) -> frozenset[str]:
        """The collector's write keys (secrets: never log them)."""
        keys = self.collector_write_keys.get_secret_value().split(",")
        return frozenset(key.strip() for key in keys if key.strip())

    @property
    def collector_origins(self) -> frozenset[str] | None:
        """Origins a browser may post from; None when any origin may."""
        origins = {o.strip().rstrip("/") for o in self.collector_allowed_origins.split(",")}
        origins.discard("")
        return None if "*" in origins else frozenset(origins)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The settings file is passed as init kwargs, so it overrides the environment.
        return (init_settings, env_settings)


def _read_settings_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"settings file {path}: cannot read: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: the offending line may hold a secret.
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"settings file {path}: {where}not valid YAML: {exc.problem}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {path}: not valid TOML: {exc}") from None
    except yaml.YAMLError:
        raise ConfigError(f"settings file {path}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path}: top level must be a mapping of field: value")
    return {str(k).lower(): v for k, v in data.items()}


def load_settings(settings_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment, then the settings file, then explicit overrides."""
    if settings_file is None and os.environ.get(CONFIG_FILE_ENV):
        settings_file = Path(os.environ[CONFIG_FILE_ENV])
    values = _read_settings_file(settings_file) if settings_file else {}
    values.update(overrides)
    source = str(settings_file) if settings_file else "environment"
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(settings)"
            where = source if field.lower() in values else f"{ENV_PREFIX}{field.upper()}"
            if not err["loc"]:
                where = source
            problems.append(f"{where}: field {field}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


def settings_env(settings: Settings) -> dict[str, str]:
    """STREAMSCORE_* variables that reproduce `settings` in a child process (secrets included)."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, list):
            # A JSON array: a URL may itself contain a comma.
            items = [v.get_secret_value() if isinstance(v, SecretStr) else v for v in value]
            env[f"{ENV_PREFIX}{name.upper()}"] = json.dumps(items)
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    return env
