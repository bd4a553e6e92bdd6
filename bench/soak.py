"""Soak: the sidecar's memory stays flat while every request fails over (`make soak`).

A fixed-response upstream (`fixed_upstream.py`: 429 on one port, closing the
connection after each one as Python's `http.server` and some real providers
do, and 200 on another), the gateway (`extproc up`, cooldown off so every
request tries the 429 provider first, then fails over), wrk at 32 connections
for 5 minutes (`--keep-alive`: a 429 provider that keeps its connections). The `extproc up`
process's RSS (the sidecar lives in it; Envoy is its child) is sampled every
15 s; the growth after the first minute (warm-up) must stay within 5 MB.
Prints every sample and the verdict; exit 1 when the growth is over the bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Processes, ensure_wrk, post, rss_mb, wrk

GROWTH_BOUND_MB = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep-alive", action="store_true", help="the failing provider keeps its connections (by default it closes each after its 429)")
    args = parser.parse_args()
    binary = ensure_wrk()
    with Processes("extproc-soak-") as processes:
        workdir = processes.workdir
        ok_port, limited_port = processes.fixed_upstreams()
        if not args.keep_alive:
            limited_port = processes.fixed_upstream(429, close=True)
        config = {
            "listeners": [{"type": "model", "name": "soak", "address": "127.0.0.1", "port": 0}],
            "cooldown": {"enabled": False},
            "model_providers": [
                {"name": "limited", "model": "bench/failover", "base_url": f"http://127.0.0.1:{limited_port}", "access_key": "soak-key-1"},
                {"name": "fallback", "model": "bench/failover", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "soak-key-2"},
            ],
        }
        gateway, port = processes.gateway(config)
        if post(port, "bench/failover") != 200:
            raise SystemExit("the failover scenario does not answer 200")

        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.monotonic()

        def sample() -> None:
            while True:
                samples.append((time.monotonic() - started, rss_mb(gateway.pid)))
                print(f"{samples[-1][0]:6.0f} s  RSS {samples[-1][1]:7.1f} MB", flush=True)
                if stop.wait(args.interval):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = wrk(binary, port, args.connections, args.seconds, "bench/failover", workdir)
        stop.set()
        sampler.join()
        samples.append((time.monotonic() - started, rss_mb(gateway.pid)))
        after_warmup = [rss for at, rss in samples if at >= args.warmup]
        growth = after_warmup[-1] - after_warmup[0] if len(after_warmup) >= 2 else 0.0
        per_request = growth * 1024 * 1024 / max(result["requests"], 1)
        verdict = "PASS" if growth <= GROWTH_BOUND_MB else "FAIL"
        print(
            f"\n{result['requests']} requests in {args.seconds} s ({result['rps']:.0f} req/s, every one failing over), non-2xx {result['non2xx']}\n"
            f"RSS {samples[0][1]:.1f} MB at start, {after_warmup[0] if after_warmup else 0:.1f} MB after {args.warmup:.0f} s, {samples[-1][1]:.1f} MB at the end\n"
            f"growth after warm-up: {growth:+.1f} MB ({per_request:+.1f} bytes per request); bound {GROWTH_BOUND_MB:.0f} MB: {verdict}"
        )
        if verdict == "FAIL" or result["non2xx"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
