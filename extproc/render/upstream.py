"""What each attempt runs between the router and the provider: the failed-answer watch, the first-token hold, the retry's rebuild and model patch."""

from __future__ import annotations

from ..config import Chain, Config
from ..contract import ATTEMPT_NAMESPACE, BODY_NAMESPACE, HEDGE_AFTER_METADATA, HOST_METADATA_ATTRIBUTE, METADATA_NAMESPACE, TIMEOUT_RETRY_HEADER, Phase
from ..processor.headermutator import TRANSLATE_HEADER
from ..statuses import WATCHED_REGEX
from .body import model_patch
from .composite import header_input, header_is, only_when
from .options import RenderOptions
from .sidecar import answer_phase, ext_proc

_CODEC = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
#: The upstream filter chain's last filter: it sends the attempt to the provider.
UPSTREAM_CODEC = {"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": _CODEC}}


#: `x-envoy-attempt-count` of a retry (2 and above): the attempts the upstream ext_proc rebuilds.
RETRY_ATTEMPT = r"[2-9]|[1-9][0-9]+"


def shared_upstream_filters(options: RenderOptions, body_limit: int) -> list[dict]:
    """The upstream filters of a chain that neither hedges nor times its first token, with cooldowns on: the bulk of
    a large config. Declared once, on the router; a chain that needs others declares its own on its cluster (Envoy
    runs a cluster's own instead of the router's)."""
    return _upstream_filters(options, body_limit, watch=True, hold=None, hedges=False)


def chain_upstream_filters(config: Config, chain: Chain, options: RenderOptions) -> list[dict]:
    """What each attempt of `chain` passes through (the shared filters, for a chain like most)."""
    hold = _first_token_hold(options, config, chain.policy.hedge_after if chain.hedges else None) if chain.policy.timing else None
    filters = _upstream_filters(options, config.body_limit, watch=config.cooldown.enabled and not chain.hedges, hold=hold, hedges=chain.hedges)
    return [_refusals(options), *filters] if chain.reads_refusals else filters


def _refusals(options: RenderOptions) -> dict:
    """Shows the sidecar an attempt's 400 whole, on a chain whose model has refusal fallbacks (`processor.refusals`).

    Chosen on the answer's `:status` (a composite), so nothing else costs a message. The sidecar answers a
    context-length or content-policy refusal with a 307 to a location Envoy follows internally (the route's
    `internal_redirect_policy`): the request runs again from the router level, which sends it to the fallback.
    """
    phase = answer_phase(Phase.REFUSED, options.message_timeout_s, response_body="BUFFERED", response_attributes=[HOST_METADATA_ATTRIBUTE])
    phase["typed_config"]["metadata_options"] = {"forwarding_namespaces": {"untyped": [METADATA_NAMESPACE, BODY_NAMESPACE]}}
    refused = {"input": header_input(":status", response=True), "value_match": {"exact": "400"}}
    return only_when("extproc.refused", {"single_predicate": refused}, "read", phase)


def _upstream_filters(options: RenderOptions, body_limit: int, watch: bool, hold: dict | None, hedges: bool) -> list[dict]:
    """The failed-answer watch, the first-token hold, the retry's rebuild, the model patch, in that order."""
    # Envoy marks every attempt of a hedging chain, the first too: its patch's Lua runs on each and strips the mark.
    patch = model_patch(ATTEMPT_NAMESPACE, strip=(TIMEOUT_RETRY_HEADER,)) if hedges else _retries_only("extproc.model_patch", model_patch(ATTEMPT_NAMESPACE))
    return [
        *([_failed_answers(options)] if watch else []),
        *([hold] if hold is not None else []),
        _retries_only("extproc.retries", ext_proc(Phase.UPSTREAM, options, body_limit, body_mode="NONE")),
        patch,
        UPSTREAM_CODEC,
    ]


def _failed_answers(options: RenderOptions) -> dict:
    """Shows the sidecar each attempt's answer that moves its provider's state (429, 529, 5xx) before Envoy acts on it.

    The sidecar records the outcome before it answers, and Envoy neither
    retries nor passes the answer on before that: when a client holds the
    answer, or the next attempt starts, the cooldown is known, whichever
    attempt of whichever chain it was. Chosen on the answer's `:status` (a
    composite), so an answer that succeeds costs no message. Listed first: its
    answer's headers come to it last, as the router will see them. With
    cooldowns off nothing needs knowing sooner: not rendered (the access log counts).

    Nor on a chain that hedges (docs/envoy-behaviour.md): Envoy 1.40 crashes
    when an upstream filter releases a held failed answer while another
    attempt is in flight, and an upstream filter sees the latest attempt's
    host whichever attempt answered. Each attempt's log entry names its own
    provider: those chains' failed answers are recorded from them.
    """
    watch = answer_phase(Phase.FAILED, options.message_timeout_s, response_attributes=[HOST_METADATA_ATTRIBUTE])
    failed = {"input": header_input(":status", response=True), "value_match": {"safe_regex": {"google_re2": {}, "regex": WATCHED_REGEX}}}
    return only_when("extproc.failed", {"single_predicate": failed}, "watch", watch)


def _first_token_hold(options: RenderOptions, config: Config, hedge_after_s: float | None) -> dict:
    """Holds an event stream's response headers at the sidecar until its first token (the "hold" phase).

    Until Envoy's router has the headers it has sent the client nothing, so
    the per-try timeout can still abandon (or hedge) the attempt. Chosen on
    the answer's headers (a composite on content-type), so a JSON answer or
    an error passes untouched; the sidecar gets the headers and, without
    waiting for its reply, the first chunks; it answers all of them once one
    holds a token and ends the stream, so the rest flows past it. A stream
    that opens with an error fails over; on a chain that hedges (`Phase.HEDGED_HOLD`,
    told `hedge_after`) it waits for the hedge to win instead, then goes on as sent.
    """
    hold = answer_phase(
        Phase.HEDGED_HOLD if hedge_after_s is not None else Phase.HOLD,
        # The sidecar answers the headers only when the first token came: Envoy's per-try and route timeouts bound the wait.
        max((listener.timeout for listener in config.listeners), default=options.message_timeout_s),
        response_body="STREAMED",
        send_body_without_waiting_for_header_response=True,
    )
    if hedge_after_s is not None:
        hold["typed_config"]["grpc_service"]["initial_metadata"].append({"key": HEDGE_AFTER_METADATA, "value": f"{hedge_after_s:g}"})
    stream = {"input": header_input("content-type", response=True), "value_match": {"prefix": "text/event-stream"}}
    return only_when("extproc.first_token", {"single_predicate": stream}, "hold", hold)


def _retries_only(name: str, http_filter: dict) -> dict:
    """Run `http_filter` on retries only (`x-envoy-attempt-count` 2, 3, …), and on an attempt 1 the router marked for translation.

    The router level already made the request right for the chain's first
    provider, so attempt 1 needs no second gRPC stream (nor a patch), unless
    that provider speaks another API than the client (any chain may: an OpenAI
    client and an Anthropic provider, or the reverse); a retry must be rebuilt
    for its own provider. One predicate for every retry, however long the chain.
    """
    marked = header_is(TRANSLATE_HEADER, "1")
    retry = {"single_predicate": {"input": header_input("x-envoy-attempt-count"), "value_match": {"safe_regex": {"google_re2": {}, "regex": RETRY_ATTEMPT}}}}
    return only_when(name, {"or_matcher": {"predicate": [marked, retry]}}, "rebuild", http_filter)
