"""The access logs Envoy sends the sidecar (each request, each failed attempt) and the JSON line it prints for people."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Listener
from ..contract import (
    ATTEMPT_TAG,
    GROUP_METADATA_KEY,
    GROUP_TAG,
    INPUT_TOKENS,
    INTERNAL_REDIRECT_DETAILS,
    LISTENER_TAG,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    MODEL_TAG,
    OUTPUT_TOKENS,
    PATH_METADATA_KEY,
    PROVIDER_METADATA_KEY,
    PROVIDER_MODEL_METADATA_KEY,
    PROVIDER_TAG,
    TIMING_METADATA_KEY,
    TIMING_TAG,
    UPSTREAM_LOG,
    USAGE_NAMESPACE,
)
from ..statuses import FAILED_MIN
from .sidecar import SIDECAR_CLUSTER

_STDOUT_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_GRPC_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"


def failed_attempts_log(listener: Listener, response_headers: Iterable[str]) -> dict:
    """Every attempt that did not succeed (`statuses.succeeded`: a status from 400 up, or no response), one entry each, unbatched.

    Envoy sends it as the attempt ends, before it retries: a 429 is known to
    the sidecar before the retry's own stream starts (see `Observer`).
    Succeeding attempts are left out (the request's entry covers them), so the
    plain path costs no entry here.
    """
    failed = {
        "or_filter": {
            "filters": [
                {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": FAILED_MIN, "runtime_key": "extproc.failed_attempt.min_status"}}}},
                {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 0, "runtime_key": "extproc.failed_attempt.no_response"}}}},
            ]
        }
    }
    attempt = {"tag": ATTEMPT_TAG, "request_header": {"name": "x-envoy-attempt-count"}}
    timing = {"tag": TIMING_TAG, "metadata": {"kind": {"route": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": TIMING_METADATA_KEY}]}}}
    group = {"tag": GROUP_TAG, "metadata": {"kind": {"host": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": GROUP_METADATA_KEY}]}}}
    return access_log(UPSTREAM_LOG, listener, response_headers, buffer_bytes=0, extra_tags=[attempt, timing, group], log_filter=failed)


def access_log(
    log_name: str, listener: Listener, response_headers: Iterable[str], buffer_bytes: int = 16384, extra_tags: Iterable[dict] = (), log_filter: dict | None = None
) -> dict:
    """Entries reported to the sidecar, off the request path.

    Request entries are batched for at most 20 ms (or 16 KiB): totals only
    need to arrive, at a fraction of the cost of one gRPC message per entry.
    """
    tags = [
        {"tag": PROVIDER_TAG, "metadata": {"kind": {"host": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": PROVIDER_METADATA_KEY}]}}},
        {"tag": MODEL_TAG, "metadata": {"kind": {"request": {}}, "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": MODEL_METADATA_KEY}]}}},
        {"tag": LISTENER_TAG, "literal": {"value": listener.name}},
        *extra_tags,
    ]
    logger = {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": _GRPC_ACCESS_LOG,
            "common_config": {
                "log_name": log_name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": SIDECAR_CLUSTER}},
                "buffer_size_bytes": buffer_bytes,
                "buffer_flush_interval": "0.020s",
                "custom_tags": tags,
            },
            "additional_response_headers_to_log": list(response_headers),
        },
    }
    if log_filter is not None:
        logger["filter"] = log_filter
    return logger


_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"


def cel(expression: str) -> dict:
    """An access-log filter on a CEL expression (the local-reply mappers' filters are access-log filters too)."""
    return {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {"@type": _CEL_FILTER, "expression": expression}}}


def requests_logged(redirects: bool) -> dict:
    """Which request entries are written: `REQUESTS_ONLY`, and, where a refusal may be redirected, not the pass Envoy
    ran again (its next pass's entry is the client's request). A config without redirects pays no CEL per request."""
    if not redirects:
        return REQUESTS_ONLY
    return {"and_filter": {"filters": [REQUESTS_ONLY, cel(f"response.code_details != '{INTERNAL_REDIRECT_DETAILS}'")]}}


#: Request entries only: not a connection that closed before a request (a port check, a half-sent head), which has neither.
REQUESTS_ONLY = {
    "or_filter": {
        "filters": [
            {"header_filter": {"header": {"name": ":method", "present_match": True}}},
            {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 1, "runtime_key": "extproc.access_log.min_status"}}}},
        ]
    }
}


def stdout_access_log(token_usage: bool, log_filter: dict) -> dict:
    """One JSON line per request for people: which model, which provider answered, after how many attempts.

    Written by Envoy itself; it never holds header values, so no key can leak into it.
    """
    fields = {
        "time": "%START_TIME%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "method": "%REQ(:METHOD)%",
        "path": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{PATH_METADATA_KEY})%",  # the client's: `:path` is the last attempt's by now
        "model": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{MODEL_METADATA_KEY})%",
        "provider": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_METADATA_KEY})%",
        "group": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{GROUP_METADATA_KEY})%",
        "provider_model": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_MODEL_METADATA_KEY})%",
        "status": "%RESPONSE_CODE%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "duration_ms": "%DURATION%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
    }
    if token_usage:
        fields[INPUT_TOKENS] = f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:{INPUT_TOKENS})%"
        fields[OUTPUT_TOKENS] = f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:{OUTPUT_TOKENS})%"
    return {
        "name": "envoy.access_loggers.stdout",
        "filter": log_filter,
        "typed_config": {"@type": _STDOUT_ACCESS_LOG, "log_format": {"json_format": fields}},
    }
