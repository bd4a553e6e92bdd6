"""A listener's HTTP connection manager: its filters in order (usage, whole body, model finder, router ext_proc, patch, router) and its limits."""

from __future__ import annotations

import dataclasses

from ..config import Config, Listener
from ..contract import DOWNSTREAM_LOG, METADATA_NAMESPACE, Phase, bulk_address
from ..processor.headermutator import PATCH_HEADER
from ..processor.ratelimit import HEADER_NAMES as RATE_LIMIT_HEADERS
from ..processor.router import CLIENT_HEADER_LIMIT
from .body import find_model, large_request, model_patch, small_request
from .composite import composite, execute, header_input, header_is, only_when
from .logs import access_log, failed_attempts_log, requests_logged, stdout_access_log
from .options import RenderOptions
from .replies import local_replies
from .sidecar import BULK_CLUSTER, ext_proc
from .telemetry import hcm_tracing, usage_filters, usage_tags
from .upstream import shared_upstream_filters
from .values import duration, socket_address

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_BUFFER = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


#: The listener allows `CLIENT_HEADER_LIMIT` (what a client may send, Envoy's
#: default) plus this, so what the gateway adds (credentials, routing, provider
#: headers, Envoy's own) never pushes an accepted request over; the sidecar
#: answers a client that sends more than its limit with 431.
HEADER_HEADROOM = 32


#: No client is "internal" (an empty list would mean Envoy's defaults, loopback and private ranges
#: included): every request gets Envoy's own request id, whatever x-request-id it sent.
_NO_ADDRESS = {"address_prefix": "255.255.255.255", "prefix_len": 32}


def _whole_body(listener: Listener) -> dict:
    """Envoy takes in the whole request before the sidecar hears of it.

    A client that trickles its body then costs only its own request (Envoy's
    buffer), never a sidecar stream or a bulk-lane thread waiting on it;
    past `max_body_bytes` Envoy answers 413 itself (JSON, `local_replies`).
    A CONNECT has no body to wait for (its stream stays open): it goes on to
    the sidecar, which refuses it at once.
    """
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {"@type": _BUFFER, "max_request_bytes": listener.max_body_bytes}}
    connect = {"single_predicate": {"input": header_input(":method"), "value_match": {"exact": "CONNECT"}}}
    return only_when("extproc.whole_body", {"not_matcher": connect}, "buffer", buffer)


def _router_ext_proc(options: RenderOptions, listener: Listener) -> dict:
    """The router-level ext_proc, in three lanes picked by `content-length` (a composite filter).

    - small (`SMALL_CONTENT_LENGTH`): the sidecar receives the request headers
      and what Envoy found in the body (`render.body.find_model`), not the body; it asks
      for the body (a mode override) only when Envoy found no model;
    - large (7 digits or more, beside a Unix-socket sidecar): the bulk lane,
      so a large body never passes through the event loop that serves the
      other requests;
    - the rest: the body with the headers, as Envoy's JSON parser would cost
      its worker more than the sidecar's message (bench/find_model.py).
    """
    if listener.on_all_cooling == "wait":  # the sidecar may hold a request that long before it answers
        options = dataclasses.replace(options, message_timeout_s=max(options.message_timeout_s, listener.max_wait + 1))
    found = ext_proc(Phase.ROUTER, options, listener.max_body_bytes, listener.name, body_mode="NONE")
    main = ext_proc(Phase.ROUTER, options, listener.max_body_bytes, listener.name)
    lanes = [{"predicate": small_request(), "on_match": execute("found", found)}]
    if bulk_address(options.sidecar) is not None:
        bulk = ext_proc(Phase.ROUTER, options, listener.max_body_bytes, listener.name, BULK_CLUSTER)
        lanes.append({"predicate": large_request(), "on_match": execute("bulk", bulk)})
    return composite("extproc.router", {"matcher_list": {"matchers": lanes}, "on_no_match": execute("main", main)})


def http_listener(config: Config, listener: Listener, options: RenderOptions, routes: dict) -> dict:
    token_usage = config.metrics.token_usage
    tracing = config.tracing.endpoint is not None
    # Each answer's Retry-After and, when cooldowns read them, its rate-limit headers reach the sidecar in the log entries.
    logged = ("retry-after", "retry-after-ms", *(RATE_LIMIT_HEADERS if config.cooldown.rate_limit_headers else ()))
    requests = requests_logged(any(chain.reads_refusals for chain in config.chains.values()))
    router = {
        "@type": ROUTER,
        "suppress_envoy_headers": True,
        "upstream_log": [failed_attempts_log(listener, logged)],
        "upstream_http_filters": shared_upstream_filters(options, config.body_limit),
    }
    hcm = {
        "@type": HCM,
        "stat_prefix": listener.name,
        "codec_type": "AUTO",
        **routes,
        # Request ids are Envoy's own (failover tracking keys on them), echoed to the client.
        "use_remote_address": True,
        "internal_address_config": {"unix_sockets": False, "cidr_ranges": [_NO_ADDRESS]},
        "preserve_external_request_id": False,
        "always_set_request_id_in_response": True,
        # Paths: `//` merged; escaped slashes refused; dot-segments refused by the sidecar (400 invalid_path).
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "request_headers_timeout": "10s",
        # A stream stalled mid-answer ends here (counted against its provider as a timeout), not at the route's timeout.
        "stream_idle_timeout": duration(listener.stream_idle_timeout),
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST", "max_headers_count": CLIENT_HEADER_LIMIT + HEADER_HEADROOM},
        "http_filters": [
            *(usage_filters(listener.max_body_bytes) if token_usage else ()),
            _whole_body(listener),
            *find_model(),
            _router_ext_proc(options, listener),
            only_when("extproc.model_patch", header_is(PATCH_HEADER, "1"), "patch", model_patch(METADATA_NAMESPACE, strip=(PATCH_HEADER,))),
            {"name": "envoy.filters.http.router", "typed_config": router},
        ],
        "access_log": [access_log(DOWNSTREAM_LOG, listener, logged, extra_tags=usage_tags() if token_usage else (), log_filter=requests)]
        + ([stdout_access_log(token_usage, requests)] if listener.access_log else []),
        "local_reply_config": local_replies(),
    }
    if tracing:
        hcm["tracing"] = hcm_tracing(config.tracing)
    return {
        "name": listener.name,
        "address": socket_address(listener.address, listener.port),
        "per_connection_buffer_limit_bytes": listener.max_body_bytes + 65536,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }
