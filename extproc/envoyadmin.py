"""The few calls to Envoy's admin API the sidecar makes (readiness, drain, xDS confirmation).

Each answers an empty result when the admin port does not answer, so callers
poll until Envoy is there instead of handling errors.
"""

from __future__ import annotations

import json
import urllib.request

_TIMEOUT_S = 2


def _get_json(admin_url: str, path: str) -> dict:
    try:
        with urllib.request.urlopen(f"{admin_url}{path}", timeout=_TIMEOUT_S) as answer:
            return json.load(answer)
    except OSError:
        return {}


def listener_ports(admin_url: str) -> dict[str, int]:
    """Bound port per listener name (listeners configured with port 0 included)."""
    statuses = _get_json(admin_url, "/listeners?format=json").get("listener_statuses", [])
    return {item["name"]: item["local_address"]["socket_address"]["port_value"] for item in statuses}


def stats(admin_url: str, pattern: str) -> dict[str, object]:
    """Stats whose names match the regex `pattern`, name -> value."""
    return {item["name"]: item.get("value") for item in _get_json(admin_url, f"/stats?format=json&filter={pattern}").get("stats", [])}


def drain_listeners(admin_url: str) -> bool:
    """Start a graceful drain; False when the admin port did not answer."""
    try:
        urllib.request.urlopen(urllib.request.Request(f"{admin_url}/drain_listeners?graceful", method="POST"), timeout=_TIMEOUT_S).close()
    except OSError:
        return False
    return True
