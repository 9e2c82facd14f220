"""Delivery metrics: the names listed, closed label sets with zero samples, promtool-clean."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from streamscore.delivery.metrics import (
    DELIVERY_METRIC_NAMES,
    PrometheusDeliverySensor,
    create_delivery_metrics,
)
from streamscore.delivery.policy import DEAD_LETTER_REASONS, Outcome

SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def exposition() -> str:
    metrics = create_delivery_metrics(process=False)
    sensor = PrometheusDeliverySensor(metrics, webhooks=2)
    sensor.request_done(1, Outcome.SERVER_ERROR, 0.2)
    sensor.retrying(1)
    sensor.dead_lettered("attempts_exhausted")
    sensor.in_flight(3)
    sensor.readiness(True)
    return generate_latest(metrics.registry).decode()


def metric_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in DELIVERY_METRIC_NAMES:
            return series.removesuffix(suffix)
        if (
            series.endswith(suffix)
            and f"{series.removesuffix(suffix)}_total" in DELIVERY_METRIC_NAMES
        ):
            return f"{series.removesuffix(suffix)}_total"
    return series


def test_every_series_belongs_to_a_listed_metric_and_each_has_samples() -> None:
    text = exposition()
    series = {m.group(1) for m in re.finditer(r"^(streamscore_\w+)[{ ]", text, re.MULTILINE)}
    assert {metric_of(s) for s in series} == set(DELIVERY_METRIC_NAMES)


def test_closed_label_sets_start_at_zero_and_count_by_webhook_index() -> None:
    text = exposition()
    requests = "streamscore_delivery_requests_total"
    for webhook in ("0", "1"):
        for outcome in Outcome:
            assert f'{requests}{{outcome="{outcome.value}",webhook="{webhook}"}}' in text
    for reason in DEAD_LETTER_REASONS:
        assert f'streamscore_delivery_dead_letters_total{{reason="{reason}"}}' in text
    assert 'streamscore_delivery_requests_total{outcome="server_error",webhook="1"} 1.0' in text
    assert 'streamscore_delivery_requests_total{outcome="server_error",webhook="0"} 0.0' in text
    assert 'streamscore_delivery_retries_total{webhook="1"} 1.0' in text
    assert "streamscore_delivery_in_flight 3.0" in text
    # No other label than the closed ones: never a URL or a lead id.
    labels = set(re.findall(r'[{,](\w+)="', text))
    assert labels <= {"webhook", "outcome", "reason", "le"}


def test_the_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (make system-deps installs it)", pytrace=False)
    lint = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
