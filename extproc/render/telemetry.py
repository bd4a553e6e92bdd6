"""The Envoy pieces of token accounting and tracing: Envoy does the reading, the sidecar only counts.

- Token usage: `json_to_metadata` (JSON answers) and `sse_to_metadata` (event
  streams, chunk by chunk, nothing buffered) copy each answer's `usage` into
  the request's dynamic metadata under `USAGE_NAMESPACE`; the access-log
  entries the sidecar already receives carry it (`extproc_tokens_total`), and
  so do the stdout access-log line and the trace's server span.
- Traces: Envoy's OpenTelemetry tracer, a server span per request and a child
  span per attempt (`spawn_upstream_span`), tagged with OpenTelemetry's GenAI
  names from the metadata that says which provider an attempt went to.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config import Provider, Tracing
from ..contract import (
    INPUT_TOKENS,
    METADATA_NAMESPACE,
    MODEL_METADATA_KEY,
    OUTPUT_TOKENS,
    PROVIDER_METADATA_KEY,
    PROVIDER_MODEL_METADATA_KEY,
    SYSTEM_METADATA_KEY,
    USAGE_NAMESPACE,
    USAGE_SKIPPED,
)
from ..providers import kind_of
from .composite import composite, execute, header_input

TRACE_CLUSTER = "extproc_otlp_collector"
#: Spans leave Envoy every second (Envoy's default is 5 s): a trace is in the collector by the time one looks.
#: Envoy also exports whenever `min_flush_spans` spans wait (5 by default): an export every two to four
#: requests under load, which cost 24-51% of c=64 throughput. 500 spans make an export of ~225 KB.
TRACE_RUNTIME = {"tracing.opentelemetry.flush_interval_ms": 1000, "tracing.opentelemetry.min_flush_spans": 500}

_JSON_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata"
_HEADER_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"

_SSE_TO_METADATA = "type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata"
_JSON_CONTENT_PARSER = "type.googleapis.com/envoy.extensions.content_parsers.json.v3.JsonContentParser"
_OPENTELEMETRY = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
_HTTP2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}

#: Where each API puts its counts: OpenAI chat/completions and embeddings (`prompt_tokens`,
#: `completion_tokens`), OpenAI responses and Anthropic messages (`input_tokens`, `output_tokens`).
_JSON_USAGE = (
    (("usage", "prompt_tokens"), INPUT_TOKENS),
    (("usage", "input_tokens"), INPUT_TOKENS),
    (("usage", "completion_tokens"), OUTPUT_TOKENS),
    (("usage", "output_tokens"), OUTPUT_TOKENS),
)
#: In streams: OpenAI's last chunk (with `stream_options.include_usage`), the responses API's
#: `response.completed`, Anthropic's `message_start` (input) and `message_delta` (output, cumulative).
_STREAM_USAGE = (
    *_JSON_USAGE,
    (("response", "usage", "input_tokens"), INPUT_TOKENS),
    (("response", "usage", "output_tokens"), OUTPUT_TOKENS),
    (("message", "usage", "input_tokens"), INPUT_TOKENS),
)

def gen_ai_system(provider: Provider) -> str:
    """OpenTelemetry's `gen_ai.provider.name` for the provider's kind."""
    return kind_of(provider).gen_ai_name


def _usage_rule(selectors: tuple[str, ...], key: str) -> dict:
    return {"selectors": [{"key": name} for name in selectors], "on_present": {"metadata_namespace": USAGE_NAMESPACE, "key": key, "type": "NUMBER"}}


def usage_filters(buffer_limit: int) -> list[dict]:
    """Read `usage` from successful JSON answers (buffered by Envoy) and from event streams (as they pass).

    Envoy can buffer an answer only up to `buffer_limit`: a JSON answer whose
    content-length says it may not fit (embeddings batches, b64 images) passes
    unread, and its size is noted instead (`USAGE_SKIPPED`), so the sidecar
    counts the skip. The choice is made on the response headers (a composite
    filter), before a byte is buffered. An error answer carries no usage: it
    passes unbuffered, so its status reaches the client while its body is on the way.
    """
    digits = len(str(buffer_limit)) - 1  # content-lengths below 10**digits fit
    large = {"input": header_input("content-length", response=True), "value_match": {"safe_regex": {"google_re2": {}, "regex": f"^[0-9]{{{digits + 1},}}$"}}}
    note_size = {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": _HEADER_TO_METADATA,
            "response_rules": [{"header": "content-length", "on_header_present": {"metadata_namespace": USAGE_NAMESPACE, "key": USAGE_SKIPPED, "type": "NUMBER"}}],
        },
    }
    read_usage = {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {"@type": _JSON_TO_METADATA, "response_rules": {"rules": [_usage_rule(selectors, key) for selectors, key in _JSON_USAGE]}},
    }
    succeeded = {"single_predicate": {"input": header_input(":status", response=True), "value_match": {"prefix": "2"}}}
    lanes = [
        {"predicate": {"and_matcher": {"predicate": [succeeded, {"single_predicate": large}]}}, "on_match": execute("note_size", note_size)},
        {"predicate": succeeded, "on_match": execute("read_usage", read_usage)},
    ]
    return [
        composite("extproc.usage_json", {"matcher_list": {"matchers": lanes}}),
        {
            "name": "envoy.filters.http.sse_to_metadata",
            "typed_config": {
                "@type": _SSE_TO_METADATA,
                "response_rules": {
                    "content_parser": {
                        "name": "envoy.content_parsers.json",
                        "typed_config": {"@type": _JSON_CONTENT_PARSER, "rules": [{"rule": _usage_rule(selectors, key)} for selectors, key in _STREAM_USAGE]},
                    },
                    "max_event_size": 65536,
                },
            },
        },
    ]


def usage_tags() -> list[dict]:
    """Access-log custom tags: the request's token counts (absent when the answer had none, or was too large to read) and the model that answered."""
    return [
        *(_metadata_tag(key, "request", USAGE_NAMESPACE, key) for key in (INPUT_TOKENS, OUTPUT_TOKENS, USAGE_SKIPPED)),
        _metadata_tag(PROVIDER_MODEL_METADATA_KEY, "host", METADATA_NAMESPACE, PROVIDER_MODEL_METADATA_KEY),
    ]


def _metadata_tag(tag: str, kind: str, namespace: str, key: str) -> dict:
    return {"tag": tag, "metadata": {"kind": {kind: {}}, "metadata_key": {"key": namespace, "path": [{"key": key}]}}}


def hcm_tracing(tracing: Tracing) -> dict:
    """The connection manager's `tracing`: OTLP export, sampling, and the GenAI tags of every span.

    Host-metadata tags name the provider of the span's own attempt on an
    attempt span, and the provider that answered on the server span.
    """
    exporter: dict = {"service_name": tracing.service_name}
    if tracing.protocol == "grpc":
        exporter["grpc_service"] = {"envoy_grpc": {"cluster_name": TRACE_CLUSTER}, "timeout": "1s"}
    else:
        parts = urlsplit(tracing.endpoint or "")
        path = parts.path if parts.path.rstrip("/").endswith("/v1/traces") else parts.path.rstrip("/") + "/v1/traces"
        exporter["http_service"] = {"http_uri": {"uri": f"{parts.scheme}://{parts.netloc}{path}", "cluster": TRACE_CLUSTER, "timeout": "1s"}}
    return {
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": _OPENTELEMETRY, **exporter}},
        "random_sampling": {"value": tracing.sampling_percent},
        "spawn_upstream_span": True,  # a span per attempt
        "custom_tags": [
            _metadata_tag("gen_ai.provider.name", "host", METADATA_NAMESPACE, SYSTEM_METADATA_KEY),
            _metadata_tag("gen_ai.request.model", "host", METADATA_NAMESPACE, PROVIDER_MODEL_METADATA_KEY),
            _metadata_tag("extproc.provider", "host", METADATA_NAMESPACE, PROVIDER_METADATA_KEY),
            _metadata_tag("extproc.requested_model", "request", METADATA_NAMESPACE, MODEL_METADATA_KEY),
            _metadata_tag("gen_ai.usage.input_tokens", "request", USAGE_NAMESPACE, INPUT_TOKENS),
            _metadata_tag("gen_ai.usage.output_tokens", "request", USAGE_NAMESPACE, OUTPUT_TOKENS),
            {"tag": "extproc.attempt", "request_header": {"name": "x-envoy-attempt-count"}},
        ],
    }


def trace_cluster(tracing: Tracing, ca_file: str) -> dict:
    """The collector, as Envoy reaches it (DNS resolved by Envoy; for https, verified against `ca_file`)."""
    parts = urlsplit(tracing.endpoint or "")
    port = parts.port or (443 if parts.scheme == "https" else 4318 if tracing.protocol == "http/protobuf" else 4317)
    cluster: dict = {
        "name": TRACE_CLUSTER,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {"cluster_name": TRACE_CLUSTER, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": parts.hostname, "port_value": port}}}}]}]},
    }
    if tracing.protocol == "grpc":
        cluster["typed_extension_protocol_options"] = _HTTP2_OPTIONS
    if parts.scheme == "https":
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": parts.hostname,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": ca_file},
                        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": parts.hostname}}],
                    }
                },
            },
        }
    return cluster
