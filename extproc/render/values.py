"""Small pieces of Envoy config written the same way everywhere: durations, addresses, headers, error bodies, shared type URLs."""

from __future__ import annotations

import json


def socket_address(address: str, port: int) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def set_header(name: str, value: str) -> dict:
    return {"header": {"key": name, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def error_json(message: str, type_: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


#: Generous limits: Envoy's defaults (3 concurrent retries per cluster) would
#: silently turn failovers into errors under load.
CIRCUIT_BREAKERS = {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000, "max_retries": 100000}]}
