"""Many long streams open at once (`make bench-streams`): the load an LLM gateway really carries.

A streaming provider (in its own process, asyncio on uvloop) answers every
request with an event stream of `--chunks` chat.completion.chunk events spread
over `--stream-seconds`, then `[DONE]`. A client starts `stream: true`
requests at `--rate` a second for `--seconds` (100 a second for 10 s, each
streaming 20 chunks over 10 s: ~1,000 open at the peak), first through Envoy
alone on a static route, then through the gateway (`extproc up`), and prints
for each: time to first byte p50/p99, the largest delay between two chunks at
p99, errors (a status other than 200, a stream cut short), and the peak RSS of
Envoy and of the sidecar. `--rates 200,500` repeats at other rates to show
where it breaks. A third row runs a gateway whose chain has
`first_token_timeout` (every stream's start held at the sidecar until its
first token): its time to the first chunk and the sidecar's CPU per stream,
beside the plain gateway's, say what a held stream start costs.
Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import Processes, child_named, cpu_seconds, free_port, rss_mb, sample_rss, static_proxy, wait_port
from extproc.render.values import CIRCUIT_BREAKERS


async def provider(port: int, chunks: int, seconds: float) -> None:
    """Answer each request with `chunks` SSE events spread over `seconds` (chunked transfer encoding)."""
    interval = seconds / max(chunks - 1, 1)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                for index in range(chunks):
                    event = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f"token {index} "}}]}
                    data = f"data: {json.dumps(event)}\n\n".encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    if index < chunks - 1:
                        await asyncio.sleep(interval)
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


async def one_stream(port: int, model: str, results: list) -> None:
    """One `stream: true` request on its own connection: (ttfb, [gaps between chunks], error or None, time to the first chunk)."""
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "stream"}]}).encode()
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        status_line = await reader.readline()
        ttfb = time.perf_counter() - started
        if b" 200 " not in status_line:
            results.append((ttfb, [], f"status {status_line.strip().decode(errors='replace')}", ttfb))
            writer.close()
            return
        await reader.readuntil(b"\r\n\r\n")
        arrivals, finished = [], False
        while not finished:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            chunk = await reader.readexactly(size + 2)
            arrivals.append(time.perf_counter())
            finished = b"[DONE]" in chunk
        writer.close()
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        results.append((ttfb, gaps, None if finished else "stream cut short", (arrivals[0] if arrivals else time.perf_counter()) - started))
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        results.append((time.perf_counter() - started, [], type(exc).__name__, time.perf_counter() - started))


async def drive(port: int, model: str, rate: float, seconds: float) -> list:
    """Start `rate` streams a second for `seconds`, wait for all of them."""
    results: list = []
    tasks = []
    start = time.perf_counter()
    for index in range(int(rate * seconds)):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_stream(port, model, results)))
    await asyncio.gather(*tasks)
    return results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


def summary(results: list) -> dict:
    good = [result for result in results if result[2] is None]
    gaps = [max(result[1]) for result in good if result[1]]
    return {
        "ttfb_p50": percentile([result[0] for result in good], 0.50) * 1000,
        "ttfb_p99": percentile([result[0] for result in good], 0.99) * 1000,
        "first_chunk_p50": percentile([result[3] for result in good], 0.50) * 1000,
        "first_chunk_p99": percentile([result[3] for result in good], 0.99) * 1000,
        "gap_p99": percentile(gaps, 0.99) * 1000,
        "errors": len(results) - len(good),
        "kinds": sorted({result[2] for result in results if result[2]}),
        "streams": len(results),
    }


def more_files() -> None:
    """Thousands of open streams need more descriptors than the usual soft limit of 1,024."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    more_files()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100", help="new streams a second, comma-separated (each rate: Envoy alone, then the gateway)")
    parser.add_argument("--seconds", type=float, default=10, help="how long streams are started")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--stream-seconds", type=float, default=10, help="how long each stream lasts at the provider")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(provider(args.serve, args.chunks, args.stream_seconds))
        return
    with Processes("extproc-streams-") as processes:
        upstream = free_port()
        processes.spawn([sys.executable, os.path.abspath(__file__), "--serve", str(upstream), "--chunks", str(args.chunks), "--stream-seconds", str(args.stream_seconds)])
        baseline = free_port()
        proxy = static_proxy(baseline, upstream)
        proxy["static_resources"]["clusters"][0]["circuit_breakers"] = CIRCUIT_BREAKERS  # the gateway's: Envoy's default 1,024 would queue the baseline
        alone = processes.envoy("alone", proxy)
        wait_port(upstream)
        wait_port(baseline)
        config = {
            "listeners": [{"type": "model", "name": "bench", "address": "127.0.0.1", "port": 0, "timeout": "60s"}],
            "model_providers": [{"name": "streamer", "model": "bench/stream", "base_url": f"http://127.0.0.1:{upstream}", "access_key": "bench-key"}],
        }
        gateway, gateway_port = processes.gateway(config)
        held_config = json.loads(json.dumps(config))
        held_config["model_providers"][0]["retry_policy"] = {"first_token_timeout": "5s"}
        held, held_port = processes.gateway(held_config)
        paths = (
            ("Envoy alone", baseline, alone.pid, None),
            ("gateway (extproc up)", gateway_port, child_named(gateway.pid, "envoy"), gateway.pid),
            ("gateway, first_token_timeout", held_port, child_named(held.pid, "envoy"), held.pid),
        )
        print(f"streams of {args.chunks} chunks over {args.stream_seconds:g} s, started for {args.seconds:g} s; Envoy --concurrency 1")
        print(
            f"{'path':29} {'rate/s':>6} {'streams':>7} {'TTFB p50 ms':>11} {'TTFB p99 ms':>11} {'1st chunk p50':>13} {'1st chunk p99':>13} {'chunk gap p99 ms':>16}"
            f" {'errors':>6} {'Envoy RSS MB':>12} {'sidecar RSS MB':>14} {'sidecar CPU/stream':>18}"
        )
        for rate in [float(value) for value in args.rates.split(",")]:
            rows = {}
            for label, port, envoy_pid, sidecar_pid in paths:
                stop, envoy_rss, sidecar_rss = threading.Event(), [rss_mb(envoy_pid)], [rss_mb(sidecar_pid)] if sidecar_pid else []
                samplers = [threading.Thread(target=sample_rss, args=(pid, stop, samples), daemon=True) for pid, samples in ((envoy_pid, envoy_rss), (sidecar_pid, sidecar_rss)) if pid]
                for sampler in samplers:
                    sampler.start()
                cpu_before = cpu_seconds(sidecar_pid) if sidecar_pid else 0.0
                result = summary(asyncio.run(drive(port, "bench/stream", rate, args.seconds)))
                cpu = f"{(cpu_seconds(sidecar_pid) - cpu_before) / max(result['streams'], 1) * 1e6:.0f} µs" if sidecar_pid else ""
                stop.set()
                rows[label] = result
                sidecar = f"{max(sidecar_rss):.0f}" if sidecar_rss else ""
                print(
                    f"{label:29} {rate:>6.0f} {result['streams']:>7} {result['ttfb_p50']:>11.1f} {result['ttfb_p99']:>11.1f} {result['first_chunk_p50']:>13.1f}"
                    f" {result['first_chunk_p99']:>13.1f} {result['gap_p99']:>16.1f} {result['errors']:>6} {max(envoy_rss):>12.0f} {sidecar:>14} {cpu:>18}"
                    + (f"  {result['kinds']}" if result["kinds"] else "")
                )
            added = rows["gateway (extproc up)"]["ttfb_p99"] - rows["Envoy alone"]["ttfb_p99"]
            print(f"  at {rate:g}/s: gateway TTFB p99 {added:+.1f} ms over Envoy alone (target < 20 ms), errors {rows['gateway (extproc up)']['errors']} (target 0)")
            plain, hold = rows["gateway (extproc up)"], rows["gateway, first_token_timeout"]
            print(
                f"  held stream start: first chunk p50 {hold['first_chunk_p50'] - plain['first_chunk_p50']:+.1f} ms, p99 {hold['first_chunk_p99'] - plain['first_chunk_p99']:+.1f} ms"
                f" over the plain gateway, errors {hold['errors']}"
            )


if __name__ == "__main__":
    main()
