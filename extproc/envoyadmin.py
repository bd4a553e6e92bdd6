"""The few calls to Envoy's admin API the sidecar makes (readiness, drain, xDS confirmation).

The admin address is `http://host:port` or `unix:/path` (Envoy's admin on a
Unix socket, e.g. on a volume shared between containers). Each call answers
an empty result when the admin port does not answer, so callers poll until
Envoy is there instead of handling errors.
"""

from __future__ import annotations

import http.client
import json
import socket

_TIMEOUT_S = 2


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def normalize(address: str) -> str:
    """`host:port`, `http://host:port` or `unix:/path` as an admin URL."""
    if not address or address.startswith(("http://", "unix:")):
        return address
    return f"http://{address}"


def _call(admin_url: str, method: str, path: str) -> bytes | None:
    if admin_url.startswith("unix:"):
        connection: http.client.HTTPConnection = _UnixConnection(admin_url.removeprefix("unix:"), _TIMEOUT_S)
    else:
        connection = http.client.HTTPConnection(admin_url.removeprefix("http://").rstrip("/"), timeout=_TIMEOUT_S)
    try:
        connection.request(method, path)
        answer = connection.getresponse()
        body = answer.read()
        return body if answer.status < 400 else None
    except OSError:
        return None
    finally:
        connection.close()


def _get_json(admin_url: str, path: str) -> dict:
    body = _call(admin_url, "GET", path)
    if body is None:
        return {}
    try:
        return json.loads(body)
    except ValueError:
        return {}


def listener_ports(admin_url: str) -> dict[str, int]:
    """Bound port per listener name (listeners configured with port 0 included)."""
    statuses = _get_json(admin_url, "/listeners?format=json").get("listener_statuses", [])
    return {item["name"]: item["local_address"]["socket_address"]["port_value"] for item in statuses}


def cluster_names(admin_url: str) -> set[str]:
    """The clusters Envoy has now (static and from CDS)."""
    return {item["name"] for item in _get_json(admin_url, "/clusters?format=json").get("cluster_statuses", [])}


def stats(admin_url: str, pattern: str) -> dict[str, object]:
    """Stats whose names match the regex `pattern`, name -> value."""
    return {item["name"]: item.get("value") for item in _get_json(admin_url, f"/stats?format=json&filter={pattern}").get("stats", [])}


def drain_listeners(admin_url: str) -> bool:
    """Start a graceful drain; False when the admin port did not answer."""
    return _call(admin_url, "POST", "/drain_listeners?graceful") is not None
