"""Start the sidecar's gRPC server (ext_proc, access logs, gRPC health) on a Unix socket or TCP.

The ext_proc service hands out provider keys and the access-log service moves
cooldowns, so only Envoy may reach them: a Unix socket is made mode 0600 (only
the pod's user, which Envoy runs as too), and TCP requires mutual TLS unless
the caller explicitly accepts plain TCP on a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from concurrent import futures
from dataclasses import dataclass

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..contract import EXT_PROC_SERVICE, bulk_address, message_limit
from ..runtime import Runtime
from . import wire
from .accesslog import AccessLogReceiver
from .servicer import BulkProcessor, ExternalProcessor

#: Threads of the bulk lane: large requests at once, each mostly waiting on gRPC or in C (msgspec).
BULK_THREADS = 4


class ListenError(ValueError):
    """The listen address is not one the sidecar may serve on; the message says what to do."""


@dataclass(frozen=True)
class ServerTls:
    """Mutual TLS for a TCP listener: the server's certificate and the CA its clients' (Envoy's) certificates must chain to."""

    cert_file: str
    key_file: str
    client_ca_file: str

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str) -> bytes:
            with open(path, "rb") as handle:
                return handle.read()

        return grpc.ssl_server_credentials([(read(self.key_file), read(self.cert_file))], root_certificates=read(self.client_ca_file), require_client_auth=True)


def check_listen(listen: str, tls: ServerTls | None, insecure_tcp: bool) -> None:
    """Refuse a TCP listener that anyone but Envoy could reach."""
    if listen.startswith("unix:") or tls is not None:
        return
    host = listen.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not insecure_tcp or not loopback:
        raise ListenError(
            f"refusing to serve ext_proc on plain TCP {listen!r}: it hands out provider keys to whoever connects. "
            "Use a Unix socket (--listen unix:/run/extproc/sidecar.sock), mutual TLS (--tls-cert, --tls-key, --client-ca), "
            "or, on a loopback address only, --insecure-tcp"
        )


def quiet_peer_gone(record: logging.LogRecord) -> bool:
    """grpc.aio's ERROR record for a closing status it could not send, kept at DEBUG.

    It happens when Envoy ends an ext_proc stream (its client left, an attempt
    was reset) just as the sidecar, every answer written, ends it too: nothing
    is lost (grpc/grpc#32551 turned the error into this log line). A failed
    batch that carried a message is another matter and stays an error.
    """
    error = record.exc_info[1] if record.exc_info else None
    if not isinstance(error, cygrpc.ExecuteBatchError) or "SendStatusFromServerOperation" not in str(error) or "SendMessageOperation" in str(error):
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


async def start_server(runtime: Runtime, listen: str, tls: ServerTls | None = None) -> tuple[grpc.aio.Server, int, grpc.Server | None]:
    """Bind `unix:/path` (mode 0600) or `host:port` (mutual TLS when given) and start.

    Returns the server, the bound TCP port (0 for a Unix socket), and, beside a
    Unix socket, the bulk lane's server (`contract.bulk_address`).
    """
    logging.getLogger("grpc._cython.cygrpc").addFilter(quiet_peer_gone)
    limit = message_limit(runtime.store.current.body_limit)
    options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    server = grpc.aio.server(options=options)
    processor = ExternalProcessor(runtime)
    # Body messages are read and replies written around protobuf (see `wire`): the servicer is registered with those codecs.
    handler = grpc.stream_stream_rpc_method_handler(processor.Process, request_deserializer=wire.decode_request, response_serializer=wire.encode_response)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, {"Process": handler})])
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogReceiver(runtime.observer), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bulk_server = None
    if listen.startswith("unix:"):
        _bind_unix(server, listen)
        port = 0
        bulk = bulk_address(listen)
        assert bulk is not None
        # The bulk lane: a thread pool's own gRPC server, so a large body never holds the event loop.
        bulk_server = grpc.server(futures.ThreadPoolExecutor(max_workers=BULK_THREADS, thread_name_prefix="bulk"), options=options)
        bulk_handler = grpc.stream_stream_rpc_method_handler(BulkProcessor(processor).Process, request_deserializer=wire.decode_request, response_serializer=wire.encode_response)
        bulk_server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(EXT_PROC_SERVICE, {"Process": bulk_handler})])
        _bind_unix(bulk_server, bulk)
        bulk_server.start()
    else:
        port = server.add_secure_port(listen, tls.credentials()) if tls is not None else server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
    await server.start()
    for service in ("", EXT_PROC_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    runtime.serving = True
    return server, port, bulk_server


def _bind_unix(server: grpc.Server | grpc.aio.Server, listen: str) -> None:
    """A Unix socket created mode 0600: no moment where others could connect."""
    path = listen.removeprefix("unix:").removeprefix("//")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket of a previous run
    previous = os.umask(0o177)
    try:
        server.add_insecure_port(listen)
    finally:
        os.umask(previous)
