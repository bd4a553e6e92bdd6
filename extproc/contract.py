"""The wire contract between the rendered Envoy config and the sidecar: names both sides must agree on.

Rendering (`render/`) writes them into Envoy's config;
the servicers read them back from what Envoy sends. Kept here, free of gRPC
and protobuf, so rendering a config never loads the servers.
"""

from __future__ import annotations

from enum import StrEnum

#: Envoy dynamic metadata and endpoint metadata, namespace `extproc`.
METADATA_NAMESPACE = "extproc"
METADATA_KEY = "ctx"  # the request's context (`RequestContext`), set by the router level for later attempts
MODEL_METADATA_KEY = "model"  # the model a request resolved to, for access logs and traces
#: The response-code details of every answer the sidecar gives itself (an ext_proc immediate response).
SIDECAR_REPLY_DETAILS = "extproc_local_reply"
PATH_METADATA_KEY = "path"  # the path the client asked for (attempts rewrite `:path` for their provider), for access logs
#: The model rewrite, applied by Envoy (a Lua filter) instead of the body coming back over gRPC:
#: bytes [start, end) of the body become the value (an empty value: no rewrite).
PATCH_START_KEY, PATCH_END_KEY, PATCH_VALUE_KEY = "patch_start", "patch_end", "patch_value"
#: A retry's model patch (the same keys), set by the upstream level for the Lua filter after it: a namespace
#: of its own, since Envoy keeps the router level's `extproc` keys (its patch, already applied) for every attempt.
ATTEMPT_NAMESPACE = "extproc.attempt"
#: What Envoy finds in a JSON request body before the router-level ext_proc (namespace `extproc.body`,
#: forwarded to it): whether the whole body is valid JSON (`json_to_metadata`), and its top-level `model`
#: string with the bytes [start, end) of its token (a Lua scan). With both, the sidecar never receives the body.
BODY_NAMESPACE = "extproc.body"
BODY_JSON_KEY = "json"  # "valid" or "invalid"
BODY_MODEL_KEY, BODY_MODEL_START_KEY, BODY_MODEL_END_KEY = "model", "model_start", "model_end"
#: Endpoint metadata: the provider of an Envoy host, its cluster, its model, its `gen_ai.provider.name`, its group.
PROVIDER_METADATA_KEY = "provider"
CLUSTER_METADATA_KEY = "cluster"
PROVIDER_MODEL_METADATA_KEY = "provider_model"
SYSTEM_METADATA_KEY = "system"
GROUP_METADATA_KEY = "group"  # its priority group (`Provider.group`)
#: Token counts Envoy reads from answers (`json_to_metadata`, `sse_to_metadata`).
USAGE_NAMESPACE = "extproc.usage"
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
#: Set instead of the counts when an answer was too large for Envoy to read whole: its content-length.
USAGE_SKIPPED = "skipped_bytes"

#: The ext_proc service, and the gRPC initial metadata Envoy sends on each of its streams.
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
PHASE_METADATA = "x-extproc-phase"  # its value: a `Phase`
#: Envoy's response code details of a request it runs again after an internal redirect (a refusal sent to a fallback model).
INTERNAL_REDIRECT_DETAILS = "internal_redirect"
#: A hedged hold's gRPC metadata: the chain's `hedge_after` in seconds (how long a stream that opened with an error waits for the hedge).
HEDGE_AFTER_METADATA = "x-extproc-hedge-after"
LISTENER_METADATA = "x-extproc-listener"


class Phase(StrEnum):
    """Which ext_proc filter of the rendered config a stream comes from (`PHASE_METADATA`)."""

    ROUTER = "router"  # before routing: picks the chain, once per request
    UPSTREAM = "upstream"  # an attempt that must be rebuilt for its provider (a retry, a translated first attempt)
    HOLD = "hold"  # an event stream's start, held until its first token (an error event first: the attempt's failure)
    HEDGED_HOLD = "hedged_hold"  # the same on a chain that hedges: an error event waits for the hedge to win, then goes on as sent
    FAILED = "failed"  # an attempt's failed answer, before Envoy acts on it
    REFUSED = "refused"  # an attempt's 400, read whole: a refusal another model may answer (an internal redirect to it)


#: ext_proc request attributes: the upstream host's metadata, as text-format proto.
EXT_PROC_ATTRIBUTES = "envoy.filters.http.ext_proc"
HOST_METADATA_ATTRIBUTE = "xds.upstream_host_metadata"

#: Access-log names (`log_name`) and the custom tags on their entries.
UPSTREAM_LOG = "upstream"  # failed attempts, unbatched
DOWNSTREAM_LOG = "downstream"  # whole requests, batched
PROVIDER_TAG = "provider"
MODEL_TAG = "model"
LISTENER_TAG = "listener"
ATTEMPT_TAG = "attempt"  # failed-attempt entries: the attempt's number (its `x-envoy-attempt-count`)
GROUP_TAG = GROUP_METADATA_KEY  # failed-attempt entries: the provider's priority group
INPUT_TOKENS_TAG = INPUT_TOKENS  # request entries, with token accounting on
OUTPUT_TOKENS_TAG = OUTPUT_TOKENS
PROVIDER_MODEL_TAG = PROVIDER_MODEL_METADATA_KEY
USAGE_SKIPPED_TAG = USAGE_SKIPPED
#: Failed-attempt entries: how the chain's attempts are timed (route metadata `extproc.timing`), which says
#: what an attempt past its per-try timeout, or cancelled unanswered, came to. Absent: plain failover.
TIMING_TAG = TIMING_METADATA_KEY = "timing"
FIRST_TOKEN_TIMING = "first_token"  # `first_token_timeout`: a timed-out attempt was abandoned before its first token
HEDGE_TIMING = "hedge"  # `hedge_after`: a timed-out attempt raced the next one; an unanswered one lost the race
#: A request on a hedging chain that is not hedged (`Chain.unhedged`): plain failover.
UNHEDGED_TIMING = "unhedged"
#: Chains with these timings have no failed-answer watch (an upstream filter cannot tell which of two attempts in
#: flight an answer is from: docs/envoy-behaviour.md): their failed answers are recorded from their log entries.
UNWATCHED_TIMINGS = (HEDGE_TIMING, UNHEDGED_TIMING)


def unhedged_route(chain_cluster: str) -> str:
    """The routing-header value (and route name) of a hedging chain's route without hedging (`Chain.unhedged`)."""
    return f"{chain_cluster}.unhedged"


#: Envoy's mark on an attempt started because an earlier one ran past its per-try timeout (on chains that hedge).
TIMEOUT_RETRY_HEADER = "x-envoy-is-timeout-retry"

#: Requests whose content-length has 7 digits or more (>= 1,000,000 bytes) are processed by the
#: sidecar's bulk lane (its own socket and threads): a large body never holds the event loop that
#: serves every other request.
BULK_CONTENT_LENGTH = r"^[0-9]{7,}$"


#: Requests under 20,000 bytes have their model found by Envoy: one message per request. Envoy's JSON check
#: costs its worker about 20-30 ns a byte (+0.6 ms at 19 KB, +21 ms at 1 MB: bench/find_model.py), more than a
#: body message costs the sidecar past that size. (No content-length: a CONNECT, which has no body.)
SMALL_CONTENT_LENGTH = r"^([0-9]{1,4}|1[0-9]{4})$"


def bulk_address(sidecar: str) -> str | None:
    """The bulk lane's socket beside a Unix-socket sidecar (`unix:/run/x/sidecar.sock` -> `unix:/run/x/sidecar-bulk.sock`); None on TCP."""
    if not sidecar.startswith("unix:"):
        return None
    path = sidecar.removeprefix("unix:").removeprefix("//")
    stem, dot, suffix = path.rpartition(".")
    return f"unix:{stem}-bulk.{suffix}" if dot and "/" not in suffix else f"unix:{path}-bulk"


#: gRPC's default 4 MiB message limit is below a buffered request body of the
#: default 10 MiB; messages carry the body once (plus headers and metadata).
MESSAGE_LIMIT_FLOOR = 64 * 1024 * 1024


def message_limit(max_body_bytes: int) -> int:
    return max(MESSAGE_LIMIT_FLOOR, 2 * max_body_bytes)
