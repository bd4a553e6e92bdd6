"""gRPC plumbing for Envoy's access log service: protobuf entries to `LogEntry`."""

from __future__ import annotations

import logging
import time

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

from ..contract import (
    ATTEMPT_TAG,
    GROUP_TAG,
    INPUT_TOKENS_TAG,
    LISTENER_TAG,
    MODEL_TAG,
    OUTPUT_TOKENS_TAG,
    PROVIDER_MODEL_TAG,
    PROVIDER_TAG,
    TIMING_TAG,
    UPSTREAM_LOG,
    USAGE_SKIPPED_TAG,
)
from ..observability.observer import LogEntry, Observer
from ..processor.cooldown import retry_after_seconds
from ..processor.ratelimit import budget

log = logging.getLogger(__name__)


def translate(entry: accesslog_pb2.HTTPAccessLogEntry, upstream: bool) -> LogEntry:
    common = entry.common_properties
    response = entry.response
    tags = dict(common.custom_tags)  # one copy: a dozen lookups on protobuf's map cost twice as much
    headers = response.response_headers
    flags: frozenset[str] = frozenset()
    if common.HasField("response_flags"):  # Envoy sets the flags message only when a flag is up (a request's: its stream was cut, say)
        flags = frozenset(field.name for field, value in common.response_flags.ListFields() if value is True)
    retry_after_s = None
    if upstream:  # what only a failed attempt is read for
        retry_after_s = retry_after_seconds(headers) if headers else None
        number = tags.get(ATTEMPT_TAG, "")
        attempt = int(number) if number.isdigit() else 0
    else:
        attempt = common.upstream_request_attempt_count
    started = common.start_time if common.HasField("start_time") else None
    return LogEntry(
        upstream=upstream,
        request_id=entry.request.request_id,
        provider=tags.get(PROVIDER_TAG, ""),
        status=response.response_code.value,
        flags=flags,
        retry_after_s=retry_after_s,
        model=tags.get(MODEL_TAG, ""),
        listener=tags.get(LISTENER_TAG, ""),
        attempt=attempt,
        started=started.seconds + started.nanos / 1e9 if started is not None else None,
        provider_model=tags.get(PROVIDER_MODEL_TAG, ""),
        input_tokens=_count(tags.get(INPUT_TOKENS_TAG)),
        output_tokens=_count(tags.get(OUTPUT_TOKENS_TAG)),
        usage_skipped=_count(tags.get(USAGE_SKIPPED_TAG)) is not None,
        budget=budget(headers, time.time()) if headers else None,
        attempt_s=_attempt_seconds(common),
        first_byte_s=_first_byte_seconds(common),
        timing=tags.get(TIMING_TAG, ""),
        group=tags.get(GROUP_TAG, ""),
    )


def _attempt_seconds(common) -> float | None:
    """From the first byte sent upstream to the last byte received (None when the attempt got no answer)."""
    return _between(common, "time_to_first_upstream_tx_byte", "time_to_last_upstream_rx_byte")


def _first_byte_seconds(common) -> float | None:
    """From the last byte sent upstream to the first byte received: the provider's time to answer (None without an answer)."""
    return _between(common, "time_to_last_upstream_tx_byte", "time_to_first_upstream_rx_byte")


def _between(common, start: str, end: str) -> float | None:
    """Seconds between two of an entry's times (durations since the request's start); None when either is missing."""
    if not (common.HasField(start) and common.HasField(end)):
        return None
    first, last = getattr(common, start), getattr(common, end)
    return max(last.seconds + last.nanos / 1e9 - first.seconds - first.nanos / 1e9, 0.0)


def _count(value: str | None) -> int | None:
    """A token count from a tag ("12", or "12.0": Envoy writes metadata numbers as doubles)."""
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    return int(number) if number is not None and 0 <= number < 2**53 else None


class AccessLogReceiver(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, observer: Observer):
        self.observer = observer

    async def StreamAccessLogs(self, request_iterator, context):
        upstream = False
        async for message in request_iterator:
            if message.HasField("identifier"):
                upstream = message.identifier.log_name == UPSTREAM_LOG
            with self.observer.batch():
                for entry in message.http_logs.log_entry:
                    try:
                        self.observer.observe(translate(entry, upstream))
                    except Exception:  # one odd entry must not end the stream
                        log.exception("could not process an access-log entry")
        return als_pb2.StreamAccessLogsResponse()
