"""What reading rate-limit headers, token accounting and tracing cost (`make bench-telemetry`), each added in turn, same run.

Four gateways (`extproc up`, Envoy --concurrency 1) on the same light
provider (`fixed_upstream.py`, answering with a `usage` and OpenAI's
rate-limit headers): all three off; rate-limit headers read; token accounting
too (the default); and every request traced too (OTLP/HTTP to an Envoy
`direct_response` sink). wrk at c=1 and c=64, the four interleaved and
repeated (`--rounds`); prints the median req/s and p50 of each, the
difference from the first, and the CPU each gateway's sidecar and Envoy
spent per request (which of the two a feature costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Processes, child_named, cpu_seconds, direct_listener, ensure_wrk, free_port, post, wait_port, wrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the four gateways")
    args = parser.parse_args()
    binary = ensure_wrk()
    with Processes("extproc-telemetry-") as processes:
        ok_port, _ = processes.fixed_upstreams()
        sink_port = free_port()
        processes.envoy("otlp-sink", {"static_resources": {"listeners": [direct_listener("otlp", sink_port, 200, "", [])]}})
        wait_port(sink_port)

        def config(**extra) -> dict:
            return {
                "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0}],
                "model_providers": [{"name": "ok", "model": "bench/ok", "base_url": f"http://127.0.0.1:{ok_port}", "access_key": "bench-key"}],
                **extra,
            }

        gateways = {
            "all off": config(metrics={"token_usage": False}, cooldown={"rate_limit_headers": False}),
            "+ rate-limit headers": config(metrics={"token_usage": False}),
            "+ token accounting (the default)": config(),
            "+ every request traced": config(tracing={"endpoint": f"http://127.0.0.1:{sink_port}", "random_sampling": 100}),
        }
        started = {label: processes.gateway(gateway) for label, gateway in gateways.items()}
        ports = {label: port for label, (_, port) in started.items()}
        pids = {label: (gateway.pid, child_named(gateway.pid, "envoy")) for label, (gateway, _) in started.items()}
        for port in ports.values():
            assert post(port, "bench/ok") == 200
        results: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.rounds):
            for connections in (1, 64):
                for label, port in ports.items():
                    before = [cpu_seconds(pid) for pid in pids[label]]
                    result = wrk(binary, port, connections, args.seconds, "bench/ok", processes.workdir)
                    result["sidecar_us"], result["envoy_us"] = ((cpu_seconds(pid) - spent) / max(result["requests"], 1) * 1e6 for pid, spent in zip(pids[label], before, strict=True))
                    results.setdefault((label, connections), []).append(result)
        print(f"\n{'':34} {'c':>3} {'req/s':>8} {'vs all off':>10} {'p50 ms':>7} {'vs all off':>10} {'non-2xx':>8} {'sidecar CPU/req':>16} {'Envoy CPU/req':>14}")
        for connections in (1, 64):
            base = None
            for label in ports:
                runs = results[(label, connections)]
                rps, p50 = statistics.median(r["rps"] for r in runs), statistics.median(r["p50"] for r in runs)
                sidecar, envoy = statistics.median(r["sidecar_us"] for r in runs), statistics.median(r["envoy_us"] for r in runs)
                base = base or (rps, p50)
                errors = sum(r["non2xx"] + r["socket_errors"] for r in runs)
                print(
                    f"{label:34} {connections:>3} {rps:>8.0f} {(rps / base[0] - 1) * 100:>+9.1f}% {p50:>7.2f} {p50 - base[1]:>+8.2f}ms {errors:>8}"
                    f" {sidecar:>13.0f} us {envoy:>11.0f} us"
                )


if __name__ == "__main__":
    main()
