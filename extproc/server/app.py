"""Start the sidecar's gRPC server (ext_proc + gRPC health) on TCP or a Unix socket."""

from __future__ import annotations

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..runtime import Runtime
from .accesslog import AccessLogReceiver
from .servicer import ExternalProcessor

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
#: gRPC's default 4 MiB message limit is below a buffered request body of the
#: default 10 MiB; messages carry the body once (plus headers and metadata).
MESSAGE_LIMIT_FLOOR = 64 * 1024 * 1024


def message_limit(max_body_bytes: int) -> int:
    return max(MESSAGE_LIMIT_FLOOR, 2 * max_body_bytes)


async def start_server(runtime: Runtime, listen: str) -> tuple[grpc.aio.Server, int]:
    """Bind `unix:/path` or `host:port` and start; returns the server and the bound TCP port (0 for a Unix socket)."""
    limit = message_limit(max(listener.max_body_bytes for listener in runtime.store.current.listeners))
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(ExternalProcessor(runtime), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(runtime.observer), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0 and not listen.startswith("unix:"):
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for service in ("", EXT_PROC_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    runtime.serving = True
    return server, port
