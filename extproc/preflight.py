"""`extproc preflight`: is each provider reachable? For deploy gates and e2e set-ups.

A provider that answers any HTTP status below 500 is UP: it is there and at
most wants credentials (401, 403, 404 count). A 5xx or a transport failure
(refused, DNS, TLS, timeout) is DOWN. No key is sent unless asked for.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import Config, Provider
from .processor.backendauth import credential_headers
from .providers import upstream_path

PROBE_PATH = "/v1/models"
EXIT_DOWN = 70  # EX_SOFTWARE-adjacent: what deploy gates check for


@dataclass(frozen=True)
class ProbeResult:
    provider: str
    up: bool
    detail: str

    def line(self) -> str:
        return f"UP {self.provider} ({self.detail})" if self.up else f"DEP-DOWN:{self.provider} {self.detail}"


def probe(provider: Provider, timeout_s: float, with_keys: bool = False) -> ProbeResult:
    path = upstream_path(provider, PROBE_PATH)
    headers = {"user-agent": "extproc-preflight", "host": provider.authority}
    if with_keys:
        headers.update((name, value) for name, value in credential_headers(provider, {}).items() if value is not None)
        headers.update(provider.headers)
    connection: http.client.HTTPConnection
    if provider.tls:
        connection = http.client.HTTPSConnection(provider.host, provider.port, timeout=timeout_s, context=ssl.create_default_context(cafile=provider.ca_file))
    else:
        connection = http.client.HTTPConnection(provider.host, provider.port, timeout=timeout_s)
    try:
        connection.request("GET", path, headers=headers)
        status = connection.getresponse().status
    except TimeoutError:
        return ProbeResult(provider.name, False, f"timed out after {timeout_s:g}s")
    except ssl.SSLError as exc:
        return ProbeResult(provider.name, False, f"TLS failure: {exc.reason or exc}")
    except socket.gaierror as exc:
        return ProbeResult(provider.name, False, f"DNS lookup of {provider.host} failed: {exc.strerror}")
    except ConnectionRefusedError:
        return ProbeResult(provider.name, False, f"connection refused by {provider.host}:{provider.port}")
    except (OSError, http.client.HTTPException) as exc:
        return ProbeResult(provider.name, False, f"transport failure: {exc}")
    finally:
        connection.close()
    if status >= 500:
        return ProbeResult(provider.name, False, f"HTTP {status} from {provider.scheme}://{provider.authority}{path}")
    return ProbeResult(provider.name, True, f"HTTP {status} from {provider.scheme}://{provider.authority}{path}")


def preflight(config: Config, timeout_s: float = 5.0, with_keys: bool = False) -> list[ProbeResult]:
    providers = list(config.providers.values())
    if not providers:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(providers))) as pool:
        return list(pool.map(lambda provider: probe(provider, timeout_s, with_keys), providers))
