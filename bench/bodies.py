"""Large bodies never hurt other requests (`make bench-bodies`): small-request latency with and without 10 MiB bodies alongside.

The gateway (`extproc up`, one provider: `fixed_upstream.py`), wrk at 16
connections with small chat requests for 10 s; then the same while 4 clients
keep posting ~10 MiB chat bodies (`--model ok`: bodies that name the
provider's own model, so none is rewritten). Prints wrk's p50/p99 for both runs, how many
large bodies went through, and the sidecar's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import urllib.request


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Processes, ensure_wrk, post, rss_mb, wrk  # noqa: E402

def large_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * 200} for _ in range(45000)]}).encode()


def large_posts(port: int, body: bytes, stop: threading.Event, sent: list[int]) -> None:
    while not stop.is_set():
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            sent.append(answer.status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bench/ok", help="the large bodies' model: `bench/ok` is rewritten to the provider's `ok`; `ok` is not")
    args = parser.parse_args()
    large = large_body(args.model)
    binary = ensure_wrk()
    with Processes("extproc-bodies-") as processes:
        workdir = processes.workdir
        ok_port, _ = processes.fixed_upstreams()
        config = {
            "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0, "max_body_bytes": "16MiB"}],
            "model_providers": [{"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "bench-key"}],
        }
        gateway, port = processes.gateway(config)
        assert post(port, "bench/ok") == 200
        alone = wrk(binary, port, 16, 10, "bench/ok", workdir)
        stop, sent = threading.Event(), []
        posters = [threading.Thread(target=large_posts, args=(port, large, stop, sent), daemon=True) for _ in range(4)]
        for poster in posters:
            poster.start()
        peak = [0.0]
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(0.2):
                peak[0] = max(peak[0], rss_mb(gateway.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        beside = wrk(binary, port, 16, 10, "bench/ok", workdir)
        stop.set()
        sampler_stop.set()
        for poster in posters:
            poster.join(60)
        print(f"\n{'small requests, c=16':40} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
        for label, result in (("alone", alone), (f"beside 4 clients posting {len(large) / 2**20:.1f} MiB ({args.model})", beside)):
            print(f"{label:40} {result['rps']:>8.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {result['non2xx']:>8}")
        print(f"large bodies answered: {len(sent)} ({sorted(set(sent))}); sidecar peak RSS {peak[0]:.0f} MB")


if __name__ == "__main__":
    main()
