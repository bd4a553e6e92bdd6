"""What a config's size costs: the gateway at 10, 100, 1,000 and 5,000 providers, beside Envoy alone with as many plain clusters.

Models of five providers each (one group, the way users list keys and deployments), every provider on one
mock. For each size: the self-contained render's lines, the time from `extproc up` to /readyz 200, Envoy's
and the sidecar's RSS once ready, the time from a config write that renames one provider to the first
request routed to it, and a request right after ready (200, or what Envoy answered). Beside it: Envoy alone
(a bootstrap with as many STATIC clusters, one route each) — its RSS once listening. `--sizes 10,100` for a
quicker run. Stops everything it started.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.e2e.harness import EnvoyProcess, GatewayProcess, MockServers, chat, gateway_config, provider

PER_MODEL = 5
HEAP_MB = 16384  # measure the config, not the overload manager: nothing is shed


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def envoy_child(pid: int) -> int:
    """The Envoy that `extproc up` (pid) runs: its child whose command is envoy."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    command = cmdline.read().split(b"\0")[0]
            except OSError:
                continue
            if int(fields[1]) == pid and command.endswith(b"envoy"):
                return int(entry)
    raise RuntimeError(f"no envoy under {pid}")


def config_of(size: int, port: int, renamed: str | None = None) -> dict:
    entries = [
        {**provider(f"m{model}-p{number}", f"openai/model-{model}", port=port, access_key="sk-bench"), **({"name": renamed} if renamed and (model, number) == (0, 0) else {})}
        for model in range(size // PER_MODEL)
        for number in range(PER_MODEL)
    ]
    return gateway_config(*entries)


def rendered_lines(config: dict, directory: str) -> int:
    path = os.path.join(directory, "render.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle)
    out = subprocess.run([sys.executable, "-m", "extproc", "render", path], capture_output=True, text=True, check=True).stdout
    return out.count("\n")


def gateway_row(size: int, port: int) -> dict:
    config = config_of(size, port)
    with tempfile.TemporaryDirectory() as directory:
        lines = rendered_lines(config, directory)
        started = time.monotonic()
        gateway = GatewayProcess(config, directory, ("--max-heap-mb", str(HEAP_MB)), listen_timeout=300)
        try:
            while gateway.get("/readyz").status != 200:
                time.sleep(0.05)
            ready = time.monotonic() - started
            first = chat(gateway.port, {"model": "openai/model-0", "messages": [{"role": "user", "content": "hi"}]})
            envoy = envoy_child(gateway.process.pid)
            row = {"lines": lines, "ready_s": ready, "envoy_mb": rss_mb(envoy), "sidecar_mb": rss_mb(gateway.process.pid), "first": first.status}
            started = time.monotonic()
            gateway.write_config(config_of(size, port, renamed="renamed"))
            while chat(gateway.port, {"model": "openai/model-0", "messages": [{"role": "user", "content": "hi"}]}).headers.get("x-arch-llm-provider") != "renamed":
                time.sleep(0.01)
            row["reload_s"] = time.monotonic() - started
            return row
        finally:
            gateway.stop()


def baseline_mb(size: int, port: int) -> float:
    """Envoy alone: `size` STATIC clusters to the mock, a route to each (by a header), no filter but the router."""
    clusters = [
        {"name": f"c{index}", "type": "STATIC", "connect_timeout": "5s",
         "load_assignment": {"cluster_name": f"c{index}", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
        for index in range(size)
    ]  # fmt: skip
    routes = [{"match": {"prefix": "/", "headers": [{"name": "x-cluster", "string_match": {"exact": f"c{index}"}}]}, "route": {"cluster": f"c{index}"}} for index in range(size)]
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    listener = {
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
    }
    with tempfile.TemporaryDirectory() as directory:
        envoy = EnvoyProcess({"static_resources": {"listeners": [listener], "clusters": clusters}}, directory)
        try:
            return rss_mb(envoy.process.pid)
        finally:
            envoy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000", help="provider counts, comma-separated")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    mocks = MockServers()
    mock = mocks.start("bench", history=0)
    try:
        print(f"{'providers':>9} | {'rendered lines':>14} | {'ready':>7} | {'Envoy RSS':>9} | {'per provider':>12} | {'Envoy alone':>11} | {'sidecar RSS':>11} | {'rename one':>10} | first request")
        print("|".join(["-" * 10, "-" * 16, "-" * 9, "-" * 11, "-" * 14, "-" * 13, "-" * 13, "-" * 12, "-" * 14]))
        floor = baseline_mb(1, mock.port)
        for size in sizes:
            row = gateway_row(size, mock.port)
            alone = baseline_mb(size, mock.port)
            per_provider = (row["envoy_mb"] - floor) * 1024 / size
            print(
                f"{size:>9} | {row['lines']:>14,} | {row['ready_s']:>6.1f}s | {row['envoy_mb']:>6.0f} MB | {per_provider:>9.0f} KB | {alone:>8.0f} MB |"
                f" {row['sidecar_mb']:>8.0f} MB | {row['reload_s']:>9.2f}s | {row['first']}"
            )
        print(f"(per provider: Envoy's RSS over Envoy alone with one cluster, {floor:.0f} MB, divided by the providers)")
    finally:
        mocks.close()


if __name__ == "__main__":
    main()
