"""Providers' rate-limit headers, read as pure functions, and the cooldowns they start."""

import pytest

from extproc.config import Cooldown
from extproc.observability.metrics import GatewayMetrics
from extproc.observability.observer import LogEntry, Observer
from extproc.processor.cooldown import ProviderHealth
from extproc.processor.ratelimit import Budget, budget, parse_duration, parse_reset_time

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20s", 20.0), ("1m30s", 90.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m3.5s", 3723.5), ("0s", 0.0), ("17ms", 0.017)],
)
def test_openai_reset_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "20", "s", "1m30", "1d", "-5s", "1m 30s", "²s", "20s junk"])
def test_what_is_not_a_duration_is_none(text):
    assert parse_duration(text) is None


def test_anthropic_reset_times_are_seconds_from_now():
    assert parse_reset_time("2027-01-15T08:00:30Z", NOW) == 30.0
    assert parse_reset_time("2027-01-15T09:00:30+01:00", NOW) == 30.0
    assert parse_reset_time("2027-01-15T07:59:00Z", NOW) == 0.0, "a reset in the past is now"
    assert parse_reset_time("2027-01-15T08:00:30", NOW) is None, "no time zone: unreadable"
    assert parse_reset_time("soon", NOW) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        (
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s"},
            Budget(0, 1.0, 149984, 360.0),
        ),
        ({"x-ratelimit-remaining-requests": "59"}, Budget(59, None, None, None)),  # Azure sends remaining without reset
        (
            {
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:01Z",
                "anthropic-ratelimit-input-tokens-remaining": "0",
                "anthropic-ratelimit-input-tokens-reset": "2027-01-15T08:00:45Z",
                "anthropic-ratelimit-output-tokens-remaining": "7000",
                "anthropic-ratelimit-output-tokens-reset": "2027-01-15T08:00:05Z",
            },
            Budget(49, 1.0, 0, 45.0),  # the scarcest token budget
        ),
        (
            {"x-ratelimit-remaining-requests": "²", "x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "soon"},
            Budget(None, None, 10, None, ("x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens")),
        ),
    ],
    ids=["none", "openai", "azure", "anthropic", "malformed"],
)
def test_budget_from_each_header_family(headers, expected):
    assert budget(headers, NOW) == expected


@pytest.mark.parametrize(
    ("left", "min_tokens", "wait"),
    [
        (Budget(0, 2.0, 100, 60.0), 0, 2.0),
        (Budget(5, 2.0, 0, 60.0), 0, 60.0),
        (Budget(0, 2.0, 0, 60.0), 0, 60.0),  # both out: until both reset
        (Budget(5, 2.0, 100, 60.0), 0, None),
        (Budget(5, 2.0, 100, 60.0), 100, 60.0),  # at or below the configured floor
        (Budget(0, None, None, None), 0, 0.0),  # out, reset unknown: the default cooldown applies
    ],
)
def test_when_a_budget_is_exhausted(left, min_tokens, wait):
    assert left.exhausted_for(min_tokens) == wait


def test_an_exhausted_answer_cools_its_provider_and_is_shared():
    shared = []

    class Sink:
        def publish(self, provider, until, reason):
            shared.append((provider, until, reason))

    health = ProviderHealth(Cooldown(), clock=lambda: NOW)
    observer = Observer(health, GatewayMetrics(), shared=Sink())
    entry = LogEntry(upstream=False, request_id="r", provider="a", status=200, attempt=1, budget=Budget(0, 12.0, None, None))
    observer.observe(entry)
    assert health.remaining("a") == 12.0
    assert shared == [("a", NOW + 12.0, "rate_limit_headers")]
    health_off = ProviderHealth(Cooldown(rate_limit_headers=False), clock=lambda: NOW)
    Observer(health_off, GatewayMetrics()).observe(entry)
    assert health_off.remaining("a") == 0.0


def test_a_shared_cooldown_extends_never_shortens_and_is_capped():
    health = ProviderHealth(Cooldown(max_cooldown=60.0), clock=lambda: NOW)
    assert health.share("a", NOW + 30)
    assert not health.share("a", NOW + 10)
    assert health.share("a", NOW + 600) and health.remaining("a") == 60.0
    assert not ProviderHealth(Cooldown(enabled=False), clock=lambda: NOW).share("a", NOW + 30)
