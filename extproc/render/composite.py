"""Envoy's composite filter: run one filter or another (or none) per request, picked by a matcher on its headers."""

from __future__ import annotations

_EXTENSION_WITH_MATCHER = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
_COMPOSITE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"
_EXECUTE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"
_REQUEST_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_RESPONSE_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput"


def composite(name: str, matcher: dict) -> dict:
    """A filter that runs what its `matcher` picks: decided on request headers, or on response headers for the answer's phases only."""
    return {
        "name": name,
        "typed_config": {
            "@type": _EXTENSION_WITH_MATCHER,
            "extension_config": {"name": "envoy.filters.http.composite", "typed_config": {"@type": _COMPOSITE}},
            "xds_matcher": matcher,
        },
    }


def only_when(name: str, predicate: dict, action: str, http_filter: dict) -> dict:
    """A composite named `name` that runs `http_filter` (as action `action`) when `predicate` holds, and nothing otherwise."""
    return composite(name, {"matcher_list": {"matchers": [{"predicate": predicate, "on_match": execute(action, http_filter)}]}})


def execute(name: str, http_filter: dict) -> dict:
    """The matcher action that runs `http_filter` (`{"name", "typed_config"}`, as in a filter chain)."""
    return {"action": {"name": name, "typed_config": {"@type": _EXECUTE_FILTER, "typed_config": http_filter}}}


def header_input(header: str, response: bool = False) -> dict:
    """The value of a request (or response) header, as a matcher input."""
    return {"name": header, "typed_config": {"@type": _RESPONSE_HEADER_INPUT if response else _REQUEST_HEADER_INPUT, "header_name": header}}


def header_is(header: str, value: str) -> dict:
    """A matcher predicate: the request header `header` is exactly `value`."""
    return {"single_predicate": {"input": header_input(header), "value_match": {"exact": value}}}
