"""Large bodies never hurt other requests (`make bench-bodies`): small-request latency with and without 10 MiB bodies alongside.

Envoy alone (a static route to `fixed_upstream.py`) and the gateway (`extproc up`,
the same provider), each: wrk at 16 connections with small chat requests for 10 s;
then the same while 4 clients post ~10 MiB chat bodies, `--rate` a second (`--model ok`:
bodies that name the provider's own model, so none is rewritten). Prints wrk's
p50/p99 for the four runs, how many large bodies went through, the sidecar's
CPU per large body and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Processes, cpu_seconds, ensure_wrk, free_port, post, sample_rss, static_proxy, wait_port, wrk


def large_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 200} for _ in range(45000)]}).encode()


def large_posts(port: int, body: bytes, interval: float, stop: threading.Event, sent: list[int]) -> None:
    """Post `body` every `interval` seconds (at once again when an answer took longer)."""
    due = time.monotonic()
    while not stop.is_set():
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            sent.append(answer.status)
        due += interval
        stop.wait(max(0.0, due - time.monotonic()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bench/ok", help="the large bodies' model: `bench/ok` is rewritten to the provider's `ok`; `ok` is not")
    parser.add_argument("--rate", type=float, default=4.0, help="large bodies per second, from 4 clients (0: each client posts again as soon as answered)")
    args = parser.parse_args()
    interval = 4 / args.rate if args.rate > 0 else 0.0
    large = large_body(args.model)
    binary = ensure_wrk()
    with Processes("extproc-bodies-") as processes:
        workdir = processes.workdir
        ok_port, _ = processes.fixed_upstreams()
        baseline_port = free_port()
        processes.envoy("baseline", static_proxy(baseline_port, ok_port))
        wait_port(baseline_port)
        config = {
            "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0, "max_body_bytes": "16MiB"}],
            "model_providers": [{"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "bench-key"}],
        }
        gateway, port = processes.gateway(config)
        assert post(port, "bench/ok") == 200
        rows = []
        for label, target, model in (("Envoy alone", baseline_port, "ok"), ("gateway", port, "bench/ok")):
            cpu_before = cpu_seconds(gateway.pid)
            alone = wrk(binary, target, 16, 10, model, workdir)
            cpu_per_small = (cpu_seconds(gateway.pid) - cpu_before) / max(alone["requests"], 1)
            rows.append((f"{label}, small requests only", alone, None))
            stop, sent = threading.Event(), []
            posters = [threading.Thread(target=large_posts, args=(target, large, interval, stop, sent), daemon=True) for _ in range(4)]
            for poster in posters:
                poster.start()
            sampler_stop, samples = threading.Event(), []
            sampler = threading.Thread(target=sample_rss, args=(gateway.pid, sampler_stop, samples), daemon=True)
            sampler.start()
            cpu_before = cpu_seconds(gateway.pid)
            beside = wrk(binary, target, 16, 10, model, workdir)
            cpu = cpu_seconds(gateway.pid) - cpu_before - cpu_per_small * beside["requests"]  # the large bodies' share
            stop.set()
            sampler_stop.set()
            for poster in posters:
                poster.join(60)
            rows.append((f"{label}, beside {len(large) / 2**20:.0f} MiB bodies", beside, (sent, cpu, max(samples, default=0.0)) if target == port else (sent, None, None)))
        pace = f"{args.rate:g} large bodies/s from 4 clients" if args.rate > 0 else "4 clients posting large bodies back to back"
        print(f"\nsmall requests at c=16, alone and beside {pace}")
        print(f"\n{'':48} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  large bodies")
        for label, result, large_run in rows:
            extra = ""
            if large_run is not None:
                sent, cpu, peak = large_run
                extra = f"  {len(sent)} answered {sorted(set(sent))}"
                if cpu is not None:
                    extra += f"; sidecar {cpu * 1000 / max(len(sent), 1):.1f} ms CPU per large body, peak RSS {peak:.0f} MB"
            print(f"{label:48} {result['rps']:>8.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {result['non2xx']:>8}{extra}")


if __name__ == "__main__":
    main()
