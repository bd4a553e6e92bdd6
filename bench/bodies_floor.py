"""The floor of large bodies through any Python ext_proc (`make bench-bodies-floor`): no gateway logic at all.

Envoy on a static route to `fixed_upstream.py`, in three set-ups, each measured
like `bench/bodies.py` (small chat requests at c=16 for 10 s, beside 4 clients
posting ~10 MiB bodies `--rate` a second):

- Envoy alone;
- Envoy whose large requests (content-length of 7+ digits, as the gateway's
  bulk lane) go, body BUFFERED, to a bare grpc.aio ext_proc in its own
  process that answers every message "continue" without reading it;
- the same, the bare server answering with the body replaced by itself (what
  a model rewrite costs on the wire: 10 MiB back).

Small requests never touch the ext_proc. What the second and third add over
Envoy alone is what receiving (and sending back) large bodies costs on this
machine in the cheapest Python server there is, so no gateway design with a
Python ext_proc that reads bodies can add less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bodies import large_body, large_posts
from bench.run import Processes, ensure_wrk, free_port, static_proxy, wait_port, wrk
from extproc.contract import BULK_CONTENT_LENGTH, Phase, message_limit
from extproc.render import RenderOptions
from extproc.render.composite import composite, execute, header_input
from extproc.render.sidecar import ext_proc, sidecar_cluster


async def serve(socket_path: str, echo: bool) -> None:
    """The bare ext_proc: "continue" to every message, or (`echo`) the body sent back as the gateway's wire code does it."""
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from extproc.server import wire
    from extproc.server.messages import with_body

    async def process(requests, context):
        async for message in requests:
            kind = wire.kind(message)
            if kind == "request_body":
                yield with_body(pb.ProcessingResponse(), kind, wire.request_body(message)) if echo else _continue(pb, kind)
                return
            yield _continue(pb, kind)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)])
    handler = grpc.stream_stream_rpc_method_handler(process, request_deserializer=wire.decode_request, response_serializer=wire.encode_response)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("envoy.service.ext_proc.v3.ExternalProcessor", {"Process": handler})])
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await server.wait_for_termination()


def _continue(pb, kind: str):
    response = pb.ProcessingResponse()
    getattr(response, kind).response.SetInParent()
    return response


def envoy_with_bare_ext_proc(port: int, upstream_port: int, socket_path: str) -> dict:
    bootstrap = static_proxy(port, upstream_port)
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    options = RenderOptions(sidecar=f"unix:{socket_path}")
    router = ext_proc(Phase.ROUTER, options, 16 * 2**20, "bench", "bare")
    router["typed_config"]["grpc_service"]["envoy_grpc"]["max_receive_message_length"] = message_limit(16 * 2**20)
    large = {"input": header_input("content-length"), "value_match": {"safe_regex": {"google_re2": {}, "regex": BULK_CONTENT_LENGTH}}}
    hcm["http_filters"].insert(0, composite("bare", {"matcher_list": {"matchers": [{"predicate": {"single_predicate": large}, "on_match": execute("bare", router)}]}}))
    listener = bootstrap["static_resources"]["listeners"][0]
    listener["per_connection_buffer_limit_bytes"] = 17 * 2**20
    bootstrap["static_resources"]["clusters"].append(sidecar_cluster(options, 16 * 2**20, "bare"))
    bootstrap["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 17 * 2**20
    return bootstrap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=4.0, help="large bodies per second, from 4 clients")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.echo))
        return
    binary = ensure_wrk()
    large = large_body("ok")
    with Processes("extproc-floor-") as processes:
        workdir = processes.workdir
        ok_port, _ = processes.fixed_upstreams()
        targets = [("Envoy alone", free_port())]
        processes.envoy("alone", static_proxy(targets[0][1], ok_port))
        for label, echo in (("Envoy + bare ext_proc, continue", False), ("Envoy + bare ext_proc, body sent back", True)):
            socket_path = os.path.join(workdir, f"bare-{int(echo)}.sock")
            processes.spawn([sys.executable, os.path.abspath(__file__), "--serve", socket_path, *(["--echo"] if echo else [])])
            port = free_port()
            while not os.path.exists(socket_path):
                threading.Event().wait(0.05)
            processes.envoy(f"bare{int(echo)}", envoy_with_bare_ext_proc(port, ok_port, socket_path))
            targets.append((label, port))
        for _, port in targets:
            wait_port(port)
        print(f"\nsmall requests at c=16 beside {args.rate:g} bodies of {len(large) / 2**20:.0f} MiB a second (4 clients)")
        print(f"{'':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}  large bodies")
        for label, port in targets:
            wrk(binary, port, 16, 2, "ok", workdir)  # warm-up
            stop, sent = threading.Event(), []
            posters = [threading.Thread(target=large_posts, args=(port, large, 4 / args.rate, stop, sent), daemon=True) for _ in range(4)]
            for poster in posters:
                poster.start()
            result = wrk(binary, port, 16, 10, "ok", workdir)
            stop.set()
            for poster in posters:
                poster.join(60)
            print(f"{label:44} {result['rps']:>8.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {result['non2xx']:>8}  {len(sent)} answered {sorted(set(sent))}")


if __name__ == "__main__":
    main()
