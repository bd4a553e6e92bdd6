"""Envoy's access-log messages, as the sidecar's receiver reads them: metrics, token counts and cooldowns."""

import asyncio

import pytest
from envoy.service.accesslog.v3 import als_pb2

from extproc.config import Cooldown
from extproc.contract import DOWNSTREAM_LOG, INPUT_TOKENS_TAG, LISTENER_TAG, MODEL_TAG, OUTPUT_TOKENS_TAG, PROVIDER_MODEL_TAG, PROVIDER_TAG
from extproc.observability.metrics import GatewayMetrics
from extproc.observability.observer import LogEntry, Observer
from extproc.processor.cooldown import ProviderHealth
from extproc.server.accesslog import AccessLogReceiver

NOW = 1_800_000_000.0


def request_entry(message, provider, status=200, tokens=(12, 7), remaining_tokens=None, reset_tokens="1s"):
    entry = message.http_logs.log_entry.add()
    common = entry.common_properties
    common.start_time.seconds = int(NOW) - 1
    common.time_to_first_upstream_tx_byte.nanos = 1_000_000
    common.time_to_last_upstream_rx_byte.nanos = 51_000_000
    common.upstream_request_attempt_count = 1
    tags = {PROVIDER_TAG: provider, MODEL_TAG: "gpt-4o", LISTENER_TAG: "llm", PROVIDER_MODEL_TAG: f"{provider}-model"}
    if tokens is not None:
        tags |= {INPUT_TOKENS_TAG: f"{tokens[0]}.0", OUTPUT_TOKENS_TAG: f"{tokens[1]}.0"}  # Envoy writes numbers as doubles
    common.custom_tags.update(tags)
    entry.request.request_id = f"request-{len(message.http_logs.log_entry)}"
    entry.response.response_code.value = status
    if remaining_tokens is not None:
        entry.response.response_headers.update({"x-ratelimit-remaining-tokens": str(remaining_tokens), "x-ratelimit-reset-tokens": reset_tokens})
    return entry


def receive(observer, *messages):
    async def stream():
        for message in messages:
            yield message

    asyncio.run(AccessLogReceiver(observer).StreamAccessLogs(stream(), None))


def sample(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_message_of_request_entries_counts_each_request_and_its_tokens():
    metrics = GatewayMetrics()
    health = ProviderHealth(Cooldown(), clock=lambda: NOW)
    first, second = als_pb2.StreamAccessLogsMessage(), als_pb2.StreamAccessLogsMessage()
    first.identifier.log_name = DOWNSTREAM_LOG
    for _ in range(20):
        request_entry(first, "a")
    for _ in range(9):
        request_entry(first, "b", tokens=None)
    request_entry(first, "b", status=503, tokens=None)
    for _ in range(5):
        request_entry(second, "a", tokens=(100, 1))
    receive(Observer(health, metrics), first, second)
    assert sample(metrics, "extproc_requests_total", listener="llm", model="gpt-4o", provider="a", status_class="2xx") == 25
    assert sample(metrics, "extproc_requests_total", listener="llm", model="gpt-4o", provider="b", status_class="2xx") == 9
    assert sample(metrics, "extproc_requests_total", listener="llm", model="gpt-4o", provider="b", status_class="5xx") == 1
    assert sample(metrics, "extproc_tokens_total", provider="a", model="a-model", type="input") == 20 * 12 + 5 * 100
    assert sample(metrics, "extproc_tokens_total", provider="a", model="a-model", type="output") == 20 * 7 + 5 * 1
    assert sample(metrics, "extproc_tokens_total", provider="b", model="b-model", type="input") == 0
    assert sample(metrics, "extproc_upstream_attempts_total", provider="a", code="200", outcome="ok") == 25
    assert sample(metrics, "extproc_upstream_attempt_duration_seconds_count", provider="a") == 25
    assert sample(metrics, "extproc_upstream_attempt_duration_seconds_sum", provider="a") == pytest.approx(25 * 0.05)


def test_the_last_answer_of_a_message_sets_the_remaining_gauge_and_an_exhausted_one_cools_at_once():
    metrics = GatewayMetrics()
    health = ProviderHealth(Cooldown(), clock=lambda: NOW)
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = DOWNSTREAM_LOG
    request_entry(message, "a", remaining_tokens=5000)
    request_entry(message, "a", remaining_tokens=0, reset_tokens="20s")  # in the middle of the message
    request_entry(message, "a", remaining_tokens=90000)  # answered later, after its budget was reset
    receive(Observer(health, metrics), message)
    assert health.remaining("a") == 20.0
    assert sample(metrics, "extproc_provider_remaining", provider="a", kind="tokens") == 90000
    assert sample(metrics, "extproc_provider_cooldowns_total", provider="a", reason="rate_limit_headers") == 1


def test_an_entry_that_cannot_be_read_loses_only_itself(monkeypatch, caplog):
    metrics = GatewayMetrics()
    observer = Observer(ProviderHealth(Cooldown(), clock=lambda: NOW), metrics)
    message = als_pb2.StreamAccessLogsMessage()
    message.identifier.log_name = DOWNSTREAM_LOG
    for _ in range(3):
        request_entry(message, "a")
    observe = observer.observe
    calls = []

    def failing_once(entry):
        calls.append(entry)
        if len(calls) == 2:
            raise ValueError("an odd entry")
        observe(entry)

    monkeypatch.setattr(observer, "observe", failing_once)
    receive(observer, message)
    assert sample(metrics, "extproc_requests_total", listener="llm", model="gpt-4o", provider="a", status_class="2xx") == 2
    assert "could not process an access-log entry" in caplog.text


def test_a_failed_answer_cools_its_provider_at_once_and_its_entry_later_counts_only_its_duration():
    metrics = GatewayMetrics()
    health = ProviderHealth(Cooldown(), clock=lambda: NOW)
    observer = Observer(health, metrics)
    observer.answered("a", 429, 7.0)
    assert health.remaining("a") == 7.0, "cooling before Envoy retries or answers"
    assert sample(metrics, "extproc_upstream_attempts_total", provider="a", code="429", outcome="rate_limited") == 1
    observer.answered("b", 200, None)
    assert not health.cooling("b"), "an answer that succeeded says nothing"

    # A hedged request's entry may name the other attempt's provider: a watched status is recorded from the answer alone.
    observer.observe(LogEntry(upstream=True, request_id="request-1", provider="b", status=429, attempt=1, retry_after_s=30.0, attempt_s=0.25))
    assert health.remaining("a") == 7.0 and not health.cooling("b"), "the entry is not recorded again, nor against another provider"
    assert sample(metrics, "extproc_upstream_attempts_total", provider="a", code="429", outcome="rate_limited") == 1
    assert sample(metrics, "extproc_upstream_attempt_duration_seconds_count", provider="b") == 1, "its duration is known only from the entry"
    observer.observe(LogEntry(upstream=True, request_id="request-2", provider="a", status=0, flags=frozenset({"upstream_connection_failure"}), attempt=1))
    assert sample(metrics, "extproc_upstream_attempts_total", provider="a", code="none", outcome="connect_failure") == 1, "what the watch never sees: from the entry"


def test_with_cooldowns_off_nothing_is_watched_and_entries_count_every_failed_attempt():
    metrics = GatewayMetrics()
    observer = Observer(ProviderHealth(Cooldown(enabled=False), clock=lambda: NOW), metrics)
    observer.observe(LogEntry(upstream=True, request_id="request-1", provider="a", status=429, attempt=1))
    assert sample(metrics, "extproc_upstream_attempts_total", provider="a", code="429", outcome="rate_limited") == 1