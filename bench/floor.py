"""The floor of one ext_proc message per request on this machine: a bare grpc.aio servicer, no gateway logic.

Envoy on a static route to the bench's upstream, with a router-level ext_proc
that sends the request headers only (body NONE, everything else SKIP) to a
servicer in its own process which reads that one message, answers it with a
header and `clear_route_cache` (what routing needs), and closes the stream:
the cheapest Python server the gateway's design could have (`context.read`
and `write`, uvloop when installed, a Unix socket; docs/envoy-behaviour.md).
`bench/run.py` measures it beside the gateway in the same run, so the
gateway's CPU per request and req/s read against what any Python ext_proc
costs here.
"""

from __future__ import annotations

import asyncio
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from extproc.render import RenderOptions
from extproc.render.sidecar import processing_mode, sidecar_cluster


async def serve(socket_path: str) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    answer = pb.ProcessingResponse()
    answer.request_headers.response.clear_route_cache = True
    answer.request_headers.response.header_mutation.set_headers.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-floor", raw_value=b"1")))
    reply = answer.SerializeToString()

    async def process(_requests, context):
        if await context.read() is not grpc.aio.EOF:
            await context.write(reply)

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(process, request_deserializer=pb.ProcessingRequest.FromString, response_serializer=lambda raw: raw)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("envoy.service.ext_proc.v3.ExternalProcessor", {"Process": handler})])
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await server.wait_for_termination()


def envoy_with_bare_ext_proc(bootstrap: dict, socket_path: str) -> dict:
    """`bootstrap` (a static proxy) with the bare ext_proc before its router."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_proc = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "floor"}},
        "processing_mode": processing_mode(),  # the request headers only
    }
    hcm["http_filters"].insert(0, {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc})
    bootstrap["static_resources"]["clusters"].append(sidecar_cluster(RenderOptions(sidecar=f"unix:{socket_path}"), 0, "floor"))
    return bootstrap


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(sys.argv[1]))
    else:
        uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
