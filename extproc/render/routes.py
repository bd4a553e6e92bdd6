"""The route table: a route per chain start (and an unhedged twin for a chain that hedges), its retry policy, and the catch-all 400."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import Chain, Config, Listener
from ..contract import METADATA_NAMESPACE, PROVIDER_METADATA_KEY, TIMING_METADATA_KEY, UNHEDGED_TIMING, unhedged_route
from ..processor.headermutator import CHAIN_HEADER, ROUTE_HEADER
from ..statuses import retried
from .values import duration, error_json, set_header

MISSING_ROUTE_MESSAGE = "x-arch-llm-provider header not set, llm gateway cannot perform routing"
_PREVIOUS_PRIORITIES = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"


def route_config_name(listener: Listener) -> str:
    return f"{listener.name}_routes"


def route_config(listener: Listener, configs: Iterable[Config]) -> dict:
    """A route per chain of every snapshot given, matching its start and cluster exactly, then the catch-all 400."""
    routes: dict[str, dict] = {}
    for config in configs:
        for start, chain in config.chains.items():
            name = config.chain_clusters[start]
            if name in routes:
                continue
            model = config.providers[start].model
            routes[name] = chain_route(start, name, chain, listener, model)
            if chain.hedges:
                routes.setdefault(unhedged_route(name), chain_route(start, name, chain.unhedged, listener, model, unhedged_route(name), UNHEDGED_TIMING))
    ordered = list(routes.values())
    ordered.append(
        {
            "name": "missing_provider_header",
            "match": {"prefix": "/"},
            "direct_response": {"status": 400, "body": {"inline_string": error_json(MISSING_ROUTE_MESSAGE, "invalid_request_error", "missing_provider_header")}},
            "response_headers_to_add": [set_header("content-type", "application/json")],
        }
    )
    return {
        "name": route_config_name(listener),
        "virtual_hosts": [
            {
                "name": listener.name,
                "domains": ["*"],
                "include_request_attempt_count": True,
                # Where a chain hedges, a retry says whether a per-try timeout started it (then it races the attempt before it).
                **({"include_is_timeout_retry_header": True} if any(chain.hedges for config in configs for chain in config.chains.values()) else {}),
                "request_body_buffer_limit": listener.max_body_bytes,
                # Routing is done: neither header goes to a provider (retries are rebuilt without them too).
                "request_headers_to_remove": [CHAIN_HEADER, ROUTE_HEADER],
                # Which provider answered (an answer no provider gave has none: an empty value is not added).
                "response_headers_to_add": [set_header(ROUTE_HEADER, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{PROVIDER_METADATA_KEY})%")],
                "routes": ordered,
            }
        ],
    }


def chain_route(start: str, cluster: str, chain: Chain, listener: Listener, model: str, name: str | None = None, timing: str | None = None) -> dict:
    """The route of the chain starting at `start`, matched by its routing headers (`name`: the cluster's unless given).

    `timing` (the chain's unless given) tells the failed-attempts log what its attempts came to.
    """
    name = name or cluster
    timing = chain.policy.timing if timing is None else timing
    action: dict = {
        "cluster": cluster,
        "timeout": duration(listener.timeout),
        "auto_host_rewrite": True,
    }
    retry = _retry_policy(chain)
    if retry is not None:
        action["retry_policy"] = retry
    if chain.hedges:
        # An attempt past `hedge_after` is not reset: the next one starts beside it and the first answer wins.
        action["hedge_policy"] = {"hedge_on_per_try_timeout": True}
    elif chain.reads_refusals:
        # A refusal the sidecar turns into a 307 runs the request again, once, from the router level (`processor.refusals`).
        action["internal_redirect_policy"] = {"max_internal_redirects": 1, "redirect_response_codes": [307]}
    route = {
        "name": name,
        "match": {
            "prefix": "/",
            "headers": [{"name": ROUTE_HEADER, "string_match": {"exact": start}}, {"name": CHAIN_HEADER, "string_match": {"exact": name}}],
        },
        "route": action,
        # The request's span is named for the model it asked for (Envoy's default name is "ingress").
        "decorator": {"operation": f"llm {model}"},
    }
    if timing:  # read by the failed-attempts log: what a timed-out or unanswered attempt came to, and whether it was watched
        route["metadata"] = {"filter_metadata": {METADATA_NAMESPACE: {TIMING_METADATA_KEY: timing}}}
    return route


def _retry_policy(chain: Chain) -> dict | None:
    """Failover to the next provider; a chain with nothing to fail over to keeps only its `per_try_timeout`.

    (A chain of one provider, or one started at its last provider because the
    others are cooling down, must still time out as configured.)
    """
    policy = chain.policy
    conditions = list(policy.conditions)
    statuses = retried(policy.status_codes, chain.owns_keys)
    if statuses:
        conditions.append("retriable-status-codes")
    if policy.first_token_timeout is not None and "reset" not in conditions:
        conditions.append("reset")  # Envoy retries a per-try timeout (an abandoned attempt) only on a reset condition
    timeout = policy.attempt_timeout
    if not conditions or chain.num_retries == 0:
        return {"num_retries": 0, "per_try_timeout": duration(timeout)} if timeout else None
    retry: dict = {
        "retry_on": ",".join(conditions),
        "num_retries": chain.num_retries,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": _PREVIOUS_PRIORITIES, "update_frequency": 1},
        },
        # Failing over goes to another provider: no reason to wait between attempts.
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.005s"},
    }
    if statuses:
        retry["retriable_status_codes"] = statuses
    if timeout:
        retry["per_try_timeout"] = duration(timeout)
    return retry
