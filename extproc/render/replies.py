"""Envoy's own error replies as JSON in the client's API shape (OpenAI's, or Anthropic's for `/v1/messages`)."""

from __future__ import annotations

from ..contract import METADATA_NAMESPACE, PATH_METADATA_KEY, SIDECAR_REPLY_DETAILS
from ..translator import MESSAGES
from .logs import cel


def local_replies() -> dict:
    """Envoy's own error replies as JSON: body too large, a request it could not read, sidecar or providers unreachable.

    The sidecar's own answers (local replies too, known by their details)
    keep their body. OpenAI's error shape, or Anthropic's for a client of its API (a
    `/v1/messages` path: the client's, from the router level's metadata, or
    `:path` when the router level never ran). "Could not read" is a 4xx Envoy
    answered before a request id was given, i.e. before any filter ran
    (header too large, an underscore in a header name, an escaped slash in
    the path): the sidecar's and the routes' own 4xx answers carry an id and
    are JSON already.
    """

    def mapper(status_filter: dict, type_: str, code: str, message: str, unread: bool = False, anthropic_type: str | None = None) -> dict:
        filters: list[dict] = [{"status_code_filter": {"comparison": status_filter}}, _NOT_THE_SIDECARS]
        if unread:
            filters.append({"header_filter": {"header": {"name": "x-request-id", "present_match": True, "invert_match": True}}})
        if anthropic_type is not None:
            filters.append(_ANTHROPIC_CLIENT)
            body = {"type": "error", "error": {"type": anthropic_type, "message": message}}
        else:
            body = {"error": {"message": message, "type": type_, "param": None, "code": code, "details": "%RESPONSE_CODE_DETAILS%"}}
        return {
            "filter": {"and_filter": {"filters": filters}},
            "body_format_override": {"json_format": body, "content_type": "application/json"},
        }

    too_large = {"op": "EQ", "value": {"default_value": 413, "runtime_key": "extproc.local_reply.too_large"}}
    client_error = {"op": "GE", "value": {"default_value": 400, "runtime_key": "extproc.local_reply.client_error"}}
    server_error = {"op": "GE", "value": {"default_value": 500, "runtime_key": "extproc.local_reply.server_error"}}
    replies = (
        (too_large, "invalid_request_error", "request_too_large", "The request body is over this gateway's size limit.", False, "request_too_large"),
        (server_error, "api_error", "gateway_error", "The gateway could not complete the request. %LOCAL_REPLY_BODY%", False, "api_error"),
        (client_error, "invalid_request_error", "invalid_request", "The gateway could not read this request (%LOCAL_REPLY_BODY%).", True, "invalid_request_error"),
    )
    return {
        "mappers": [
            *(mapper(status, type_, code, message, unread, anthropic) for status, type_, code, message, unread, anthropic in replies),
            *(mapper(status, type_, code, message, unread) for status, type_, code, message, unread, _ in replies),
        ]
    }


#: A local reply the sidecar did not make (its own, at either level, have these details: `server.messages.immediate`).
_NOT_THE_SIDECARS = cel(f"response.code_details != '{SIDECAR_REPLY_DETAILS}'")


def _anthropic_path(match_if_absent: bool) -> dict:
    matcher = {"filter": METADATA_NAMESPACE, "path": [{"key": PATH_METADATA_KEY}], "value": {"string_match": {"prefix": MESSAGES}}}
    return {"metadata_filter": {"matcher": matcher, "match_if_key_not_found": match_if_absent}}


#: A client of Anthropic's API: its path (as the router level recorded it) is `/v1/messages`, or, when the router level never ran, `:path` is.
_ANTHROPIC_CLIENT = {
    "or_filter": {
        "filters": [
            _anthropic_path(match_if_absent=False),
            {"and_filter": {"filters": [_anthropic_path(match_if_absent=True), {"header_filter": {"header": {"name": ":path", "string_match": {"prefix": MESSAGES}}}}]}},
        ]
    }
}
